"""model.py: the VideoMAE layout and numerics, pinned to tests/data/videomae_tiny_reference.pt."""
from pathlib import Path

import pytest
import torch

from model import (MODEL_SIZES, PretrainModel, VideoClassifier, classifier_state_dict,
                   gather_tokens, load_encoder, mask_indices, sinusoid_table)

REF = Path(__file__).parent / "data" / "videomae_tiny_reference.pt"


@pytest.fixture(scope="module")
def ref():
    return torch.load(REF, weights_only=True)


def ref_kwargs(c):
    return dict(img_size=c["img_size"], patch_size=c["patch_size"], num_frames=c["num_frames"],
                tubelet_size=c["tubelet_size"], embed_dim=c["encoder_embed_dim"],
                depth=c["encoder_depth"], num_heads=c["encoder_num_heads"],
                mlp_ratio=c["mlp_ratio"])


def test_sinusoid_tables_match_reference(ref):
    enc, dec = ref["sinusoid_table_encoder"], ref["sinusoid_table_decoder"]
    torch.testing.assert_close(sinusoid_table(enc.shape[1], enc.shape[2]), enc.float(), atol=1e-6,
                               rtol=0)
    torch.testing.assert_close(sinusoid_table(dec.shape[1], dec.shape[2]), dec.float(), atol=1e-6,
                               rtol=0)


def test_pretrain_model_matches_reference(ref):
    c = ref["config"]
    model = PretrainModel(**ref_kwargs(c), decoder_embed_dim=c["decoder_embed_dim"],
                          decoder_depth=c["decoder_depth"],
                          decoder_num_heads=c["decoder_num_heads"],
                          out_dim=c["decoder_num_classes"]).eval()
    # exact key layout, nothing extra
    model.load_state_dict(ref["pretrain_state_dict"], strict=True)
    with torch.no_grad():
        enc = model.encoder(ref["video"], ref["mask"])
        dec = model(ref["video"], ref["mask"])
    assert enc.shape == ref["encoder_out"].shape == (2, 12, 64)
    torch.testing.assert_close(enc, ref["encoder_out"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dec, ref["decoder_out"], atol=1e-5, rtol=1e-5)


def test_classifier_matches_reference(ref):
    c = ref["config"]
    clf = VideoClassifier(**ref_kwargs(c), num_classes=5).eval()
    clf.load_state_dict(ref["finetune_state_dict"], strict=True)
    with torch.no_grad():
        torch.testing.assert_close(clf.forward_features(ref["video"]), ref["finetune_features"],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(clf(ref["video"]), ref["finetune_logits"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("wrap", ["model", "module", "bare", "backbone"])
def test_pretrained_encoder_loads_into_classifier(ref, wrap):
    c = ref["config"]
    sd = ref["pretrain_state_dict"]
    if wrap == "backbone":   # some released checkpoints name the encoder backbone.*
        sd = {k.replace("encoder.", "backbone.", 1): v for k, v in sd.items()}
    ckpt = sd if wrap in ("bare", "backbone") else {wrap: sd}
    clf = VideoClassifier(**ref_kwargs(c), num_classes=5)
    missing, unexpected = load_encoder(clf, ckpt, verbose=False)
    assert sorted(missing) == sorted(ref["finetune_missing"])
    assert sorted(unexpected) == sorted(ref["finetune_unexpected"])
    torch.testing.assert_close(clf.blocks[1].attn.qkv.weight,
                               ref["pretrain_state_dict"]["encoder.blocks.1.attn.qkv.weight"])


def test_load_encoder_from_file_other_grid(ref, tmp_path):
    """A checkpoint made at 16 frames / 32 px evaluates at 8 frames / 64 px: the table
    is rebuilt."""
    c = ref["config"]
    path = tmp_path / "ckpt.pth"
    torch.save({"model": ref["pretrain_state_dict"], "epoch": 3}, path)
    clf = VideoClassifier(**{**ref_kwargs(c), "num_frames": 8, "img_size": 64}, num_classes=7)
    load_encoder(clf, str(path), verbose=False)
    out = clf(torch.randn(2, 3, 8, 64, 64))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_state_dict_mapping_drops_decoder():
    sd = {"encoder.blocks.0.norm1.weight": 1, "decoder.head.weight": 2,
          "encoder_to_decoder.weight": 3, "mask_token": 4, "module.encoder.norm.weight": 5,
          "encoder.pos_embed": 6}
    assert classifier_state_dict({"model": sd}) == {"blocks.0.norm1.weight": 1, "norm.weight": 5}


@pytest.mark.parametrize("T,H,W", [(16, 32, 32), (4, 48, 64), (2, 16, 32)])
def test_any_grid_works(T, H, W):
    m = PretrainModel(img_size=32, patch_size=16, num_frames=16, embed_dim=32, depth=1, num_heads=2,
                      decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, out_dim=10)
    n = (T // 2) * (H // 16) * (W // 16)
    mask = torch.zeros(3, n, dtype=torch.bool)
    mask[:, : n // 2] = True
    out = m(torch.randn(3, 3, T, H, W), mask)
    assert out.shape == (3, n // 2, 10)
    assert m.encoder(torch.randn(3, 3, T, H, W), mask).shape == (3, n - n // 2, 32)


def test_decoder_predicts_masked_tokens_in_order():
    """Changing the visible input changes predictions; the i-th output belongs to the i-th masked
    token: permuting which tokens are masked permutes the position part the decoder sees."""
    torch.manual_seed(0)
    m = PretrainModel(img_size=32, num_frames=4, embed_dim=32, depth=1, num_heads=2,
                      decoder_embed_dim=16, decoder_depth=0, decoder_num_heads=2, out_dim=16).eval()
    # with no decoder blocks, output i = head(norm(mask_token + pos[masked_i])): check against that
    mask = torch.tensor([[False, True, False, True, True, False, False, True]])
    out = m(torch.randn(1, 3, 4, 32, 32), mask)
    pos = sinusoid_table(8, 16)[0, mask[0]]
    expect = m.decoder.head(m.decoder.norm(m.mask_token[0] + pos))
    torch.testing.assert_close(out[0], expect)


def test_encoder_sees_only_visible_tokens():
    torch.manual_seed(0)
    m = PretrainModel(img_size=32, num_frames=4, embed_dim=32, depth=2, num_heads=2,
                      decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, out_dim=8).eval()
    video = torch.randn(1, 3, 4, 32, 32)
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, 4:] = True                                  # tokens of time slice 1 are masked
    video2 = video.clone()
    video2[:, :, 2:] += 1.0                             # frames 2-3 = time slice 1
    torch.testing.assert_close(m.encoder(video, mask), m.encoder(video2, mask))
    assert not torch.allclose(m.encoder(video, None), m.encoder(video2, None))


def test_presets_have_paper_shapes():
    s, b = MODEL_SIZES["small"], MODEL_SIZES["base"]
    assert (s["embed_dim"], s["depth"], s["num_heads"], s["decoder_embed_dim"],
            s["decoder_num_heads"]) == (384, 12, 6, 192, 3)
    assert (b["embed_dim"], b["depth"], b["num_heads"], b["decoder_embed_dim"],
            b["decoder_num_heads"]) == (768, 12, 12, 384, 6)
    assert s["decoder_depth"] == b["decoder_depth"] == 4
    clf = VideoClassifier(**s, num_classes=400)
    assert 21e6 < sum(p.numel() for p in clf.parameters()) < 23e6    # ViT-S/16 ~22M


def test_head_init_scale_and_drop_path():
    clf = VideoClassifier(img_size=32, num_frames=4, embed_dim=32, depth=3, num_heads=2,
                          num_classes=5, drop_path=0.2, head_init_scale=0.001)
    assert 0 < clf.head.weight.abs().max() < 0.001 * 0.02 * 5   # 5 sigma of std 0.02, scaled
    assert [b.drop_path for b in clf.blocks] == pytest.approx([0.0, 0.1, 0.2])
    clf.train()
    x = torch.randn(4, 3, 4, 32, 32)
    # stochastic in train
    assert not torch.allclose(clf.forward_features(x), clf.forward_features(x))
    clf.eval()
    torch.testing.assert_close(clf.forward_features(x), clf.forward_features(x))


def test_initialisation_matches_the_reference():
    """The reference's inits (SPEC 1), by their statistics: the finetuning classifier (every "no
    pretraining" baseline) draws every Linear from a normal of std 0.02 (fc1 weight std 0.0457
    under Xavier at width 192); pretraining keeps Xavier except encoder_to_decoder, PyTorch's
    default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (std 0.0417 at 192, Xavier's 0.0833 to 96), and a
    mask token cut at +-1 std (std 0.02 x 0.5396 = 0.0108)."""
    torch.manual_seed(0)
    clf = VideoClassifier(**{k: v for k, v in MODEL_SIZES["tiny"].items()
                             if not k.startswith("decoder")}, img_size=32, num_frames=4,
                          patch_size=8, num_classes=400, head_init_scale=1.0)
    for name in ("blocks.0.mlp.fc1", "blocks.3.attn.qkv", "blocks.1.attn.proj", "head"):
        w = clf.get_submodule(name).weight
        assert abs(w.std().item() - 0.02) < 0.0015, name
        assert abs(w.mean().item()) < 0.002 and 3 < w.abs().max().item() / 0.02 < 6, name
    assert not clf.blocks[0].mlp.fc1.bias.any() and not clf.head.bias.any()
    assert torch.equal(clf.fc_norm.weight, torch.ones(192))

    m = PretrainModel(**MODEL_SIZES["tiny"], img_size=32, num_frames=4, patch_size=8, out_dim=8)
    e2d = m.encoder_to_decoder.weight                                     # (96, 192)
    bound = 1 / 192 ** 0.5
    assert e2d.abs().max().item() <= bound and e2d.abs().max().item() > 0.95 * bound
    assert abs(e2d.std().item() - bound / 3 ** 0.5) < 0.002              # 0.0417
    xavier = (6 / (192 + 768)) ** 0.5                                     # fc1 stays Xavier
    fc1 = m.encoder.blocks[0].mlp.fc1.weight
    assert fc1.abs().max().item() <= xavier and abs(fc1.std().item() - xavier / 3 ** 0.5) < 0.002
    big = PretrainModel(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=20000,
                        decoder_depth=0, decoder_num_heads=2, img_size=32, num_frames=2,
                        patch_size=16, out_dim=2).mask_token
    assert big.abs().max().item() <= 0.02 and big.abs().max().item() > 0.0199
    assert abs(big.std().item() - 0.02 * 0.5396) < 0.0003


def test_grad_checkpointing_same_gradients():
    torch.manual_seed(0)
    m = PretrainModel(img_size=32, num_frames=4, embed_dim=32, depth=2, num_heads=2,
                      decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, out_dim=8)
    video, mask = torch.randn(2, 3, 4, 32, 32), torch.tensor([[True, False] * 4] * 2)
    m(video, mask).square().mean().backward()
    g1 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m(video, mask).square().mean().backward()
    for a, p in zip(g1, m.parameters()):
        torch.testing.assert_close(a, p.grad)


def tiny_model(**kw):
    torch.manual_seed(0)
    return PretrainModel(img_size=32, num_frames=8, out_dim=16, **MODEL_SIZES["tiny"], **kw).eval()


def random_mask(B, N, nm, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, N, generator=g).argsort(1) < nm          # (B, N), nm True per row


@pytest.mark.parametrize("B,N,nm",
                         [(3, 16, 12), (2, 32, 20), (4, 7, 0), (2, 5, 5), (1, 1568, 1248)])
def test_mask_indices_order_equals_boolean_indexing(B, N, nm):
    mask = random_mask(B, N, nm, seed=N)
    visible_idx, masked_idx = mask_indices(mask)
    assert visible_idx.shape == (B, N - nm) and masked_idx.shape == (B, nm)
    assert visible_idx.dtype == masked_idx.dtype == torch.int64
    tokens = torch.arange(N).expand(B, N)
    assert torch.equal(visible_idx, tokens[~mask].view(B, -1))
    assert torch.equal(masked_idx, tokens[mask].view(B, -1))
    x = torch.randn(B, N, 6)
    # train.py's targets
    assert torch.equal(gather_tokens(x, masked_idx), x[mask].view(B, nm, 6))
    assert torch.equal(gather_tokens(x, visible_idx), x[~mask].view(B, N - nm, 6))
    assert torch.equal(gather_tokens(x[:1], masked_idx),
                       x[:1].expand(B, -1, -1)[mask].view(B, nm, 6))


def test_mask_indices_rejects_unequal_counts():
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, :3], mask[1, :4] = True, True
    with pytest.raises(ValueError, match="same number"):
        mask_indices(mask)


def test_index_pair_gives_the_same_outputs_as_the_mask():
    m = tiny_model()
    video, mask = torch.randn(2, 3, 8, 32, 32), random_mask(2, 16, 12)
    with torch.no_grad():
        assert torch.equal(m(video, mask), m(video, mask_indices(mask)))
        assert torch.equal(m.encoder(video, mask), m.encoder(video, mask_indices(mask)))


def test_forward_is_one_graph():
    """No boolean indexing (nonzero: a host sync and a graph break each) in the forward: given the
    index pair the whole pretraining forward, and the classifier's, trace to one graph (explain does
    not compile)."""
    m, video = tiny_model(), torch.randn(2, 3, 8, 32, 32)
    clf = VideoClassifier(img_size=32, num_frames=8, num_classes=5, **MODEL_SIZES["tiny"]).eval()
    torch._dynamo.reset()
    try:
        e = torch._dynamo.explain(m)(video, mask_indices(random_mask(2, 16, 12)))
        assert (e.graph_count, e.graph_break_count) == (1, 0), e.break_reasons
        e = torch._dynamo.explain(clf)(video)
        assert (e.graph_count, e.graph_break_count) == (1, 0), e.break_reasons
    finally:
        torch._dynamo.reset()


def test_residual_stream_fp32_under_bf16_autocast():
    """Under bf16 autocast the Linears give bf16, but the residual stream (the output of every
    block, encoder and decoder) stays fp32 as in timm; the result stays close to the
    fp32 forward."""
    m = tiny_model()
    video, mask = torch.randn(2, 3, 8, 32, 32), random_mask(2, 16, 12)
    dtypes = []
    for blk in [*m.encoder.blocks, *m.decoder.blocks]:
        blk.register_forward_hook(lambda mod, inp, out: dtypes.append((inp[0].dtype, out.dtype)))
    with torch.no_grad():
        ref = m(video, mask)
        dtypes.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(video, mask)
            # autocast on
            assert m.encoder.blocks[0].mlp.fc1(torch.randn(2, 192)).dtype == torch.bfloat16
    # block inputs (block 0's: x after the position add) and outputs, 4 encoder + 2 decoder blocks
    assert dtypes == [(torch.float32, torch.float32)] * 6
    err = (out.float() - ref).norm() / ref.norm()
    assert err < 0.05, err


def test_classifier_rejects_misspelt_keyword():
    with pytest.raises(TypeError):
        VideoClassifier(img_size=32, num_frames=4, embed_dim=32, depth=1, num_heads=2, num_clases=5)
    # presets still fit
    VideoClassifier(img_size=32, num_frames=4, num_classes=5, **MODEL_SIZES["tiny"])
