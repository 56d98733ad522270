"""teacher.py: CLIP targets pinned to open_clip's own output, frame choice, token order, freezing,
weight loading (the user's path: a config JSON + a weights file), and VideoMAE pixel targets.

A tiny random-weight open_clip model (32x32 images, patch 16 -> 2x2 grid, width 64) stands in for
ViT-B/16; nothing is downloaded.
"""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network

import open_clip
import pytest
import torch
import torch.nn as nn

import teacher as teacher_lib
from teacher import (CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, Teacher, pixel_targets,
                     target_dim)

CFG = {"embed_dim": 32,
       "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 64, "head_width": 32,
                      "layers": 2},
       "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
WIDTH, G = 64, 2  # token width and grid side (32 / 16)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A model config JSON and a random-weight checkpoint, as a user would pass them."""
    d = tmp_path_factory.mktemp("tinyclip")
    cfg_path = d / "tinyclip_teacher_test.json"
    cfg_path.write_text(json.dumps(CFG))
    open_clip.add_model_config(str(cfg_path))
    torch.manual_seed(0)
    model = open_clip.create_model("tinyclip_teacher_test").eval()
    ckpt = d / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    return str(cfg_path), str(ckpt), model


@pytest.fixture(scope="module")
def teacher(files):
    cfg_path, ckpt, _ = files
    return Teacher(model_name=cfg_path, pretrained=ckpt)


def clip_tokens(model, frames, proj=False, ln_post=True):
    """Independent path: open_clip's own forward_intermediates on (n, 3, H, W)
    CLIP-normalised frames."""
    v = model.visual
    with torch.no_grad():
        out = v.forward_intermediates(frames, indices=1, normalize_intermediates=ln_post,
                                      output_fmt="NLC")
        tok = out["image_intermediates"][-1]  # (n, h*w, D), CLS dropped, row-major (h, w)
        return tok @ v.proj if proj else tok


def to_clip_norm(video):
    im_m, im_s = (torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1),
                  torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1))
    cl_m, cl_s = (torch.tensor(CLIP_MEAN).view(1, 3, 1, 1, 1),
                  torch.tensor(CLIP_STD).view(1, 3, 1, 1, 1))
    return (video * im_s + im_m - cl_m) / cl_s


def rand_video(B=2, T=4, seed=0):
    return torch.randn(B, 3, T, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_attributes(teacher):
    assert (teacher.out_dim, teacher.patch_size, teacher.image_size) == (WIDTH, 16, 32)
    for T in (4, 16):
        out = teacher(rand_video(T=T))
        assert out.shape == (2, T // 2 * G * G, WIDTH) and out.dtype == torch.float32
    assert target_dim("clip", teacher) == WIDTH and target_dim("clip") == 768
    assert target_dim("pixel") == 1536 and target_dim("pixel", tubelet=1, patch=8) == 192
    with pytest.raises(ValueError):
        target_dim("dino")


def test_weights_loaded_from_file(files, teacher):
    _, _, model = files
    for k, v in model.visual.state_dict().items():
        torch.testing.assert_close(teacher.visual.state_dict()[k], v, atol=0, rtol=0)
    # no text tower
    assert not hasattr(teacher, "transformer") and not hasattr(teacher, "token_embedding")


def test_pinned_to_open_clip_and_token_order(files, teacher):
    _, _, model = files
    B, T = 2, 6
    video = rand_video(B, T)
    raw = teacher.features(video, normalize=False)  # (B, t*h*w, D)
    frames = to_clip_norm(video)[:, :, ::2]  # frames 0, 2, 4
    for i in range(T // 2):  # time slice i is CLIP on frame 2i alone
        ref = clip_tokens(model, frames[:, :, i])  # (B, h*w, D)
        torch.testing.assert_close(raw[:, i * G * G:(i + 1) * G * G], ref, atol=1e-5, rtol=1e-5)
        # patches row-major: token (i, r, c) is open_clip's spatial map at row r, column c
        with torch.no_grad():
            fmap = model.visual.forward_intermediates(frames[:, :, i], indices=1,
                                                      normalize_intermediates=True,
                                                      output_fmt="NCHW")["image_intermediates"][-1]
        assert fmap.shape == (B, WIDTH, G, G)
        for r in range(G):
            for c in range(G):
                torch.testing.assert_close(raw[:, i * G * G + r * G + c], fmap[:, :, r, c],
                                           atol=1e-5, rtol=1e-5)


def test_wrong_layer_would_be_detected(files, teacher):
    _, _, model = files
    video = rand_video(1, 2)
    raw = teacher.features(video)  # (1, 4, D)
    frame = to_clip_norm(video)[:, :, 0]
    proj = clip_tokens(model, frame, proj=True)  # after proj: other width
    assert proj.shape[-1] == CFG["embed_dim"] != raw.shape[-1]
    pre_ln = clip_tokens(model, frame, ln_post=False)  # before ln_post: same shape, other values
    assert pre_ln.shape == raw.shape and not torch.allclose(pre_ln, raw, atol=1e-3)
    # the LayerNorm output has zero mean over channels (no learned bias at init); pre-LN does not
    assert raw.mean(-1).abs().max() < 1e-4 < pre_ln.mean(-1).abs().max()


def test_reads_first_frame_of_each_tubelet(teacher):
    video = rand_video(2, 8)
    base = teacher.features(video)
    odd = video.clone()
    odd[:, :, 1::2] = torch.randn_like(odd[:, :, 1::2])  # frames 1, 3, 5, 7 are never read
    torch.testing.assert_close(teacher.features(odd), base, atol=0, rtol=0)
    torch.testing.assert_close(teacher(odd), teacher(video), atol=0, rtol=0)
    f2 = video.clone()
    f2[:, :, 2] += 1.0  # frame 2 = first frame of tubelet 1 -> only time slice 1 changes
    out = teacher.features(f2)
    changed = (out - base).abs().amax(dim=(0, 2)).view(4, G * G).amax(dim=1) > 1e-4
    assert changed.tolist() == [False, True, False, False]


def test_target_normalisation(teacher):
    out = teacher(rand_video(3, 8) * 2 + 0.5)
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(3, WIDTH), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=1, unbiased=True), torch.ones(3, WIDTH), atol=1e-4,
                               rtol=0)
    raw = teacher.features(rand_video(3, 8) * 2 + 0.5)
    assert (raw.std(dim=1) - 1).abs().max() > 1e-2  # raw features are not normalised already


def test_input_normalisation(files, teacher):
    cfg_path, ckpt, _ = files
    im = Teacher(model_name=cfg_path, pretrained=ckpt, input_norm="imagenet")
    video = rand_video(2, 4)
    assert not torch.allclose(teacher.features(video), im.features(video), atol=1e-3)
    # "clip" == feeding the re-normalised frames to the ImageNet-as-is teacher
    torch.testing.assert_close(teacher.features(video), im.features(to_clip_norm(video)), atol=1e-5,
                               rtol=1e-5)
    with pytest.raises(ValueError):
        Teacher(model_name=cfg_path, pretrained=ckpt, input_norm="none")


def test_frozen(teacher):
    assert all(not p.requires_grad for p in teacher.parameters())
    parent = nn.ModuleDict({"teacher": teacher, "student": nn.Linear(2, 2)})
    parent.train()
    assert not teacher.training and not teacher.visual.training
    assert all(not m.training for m in teacher.modules())
    assert parent["student"].training
    video = rand_video(1, 2).requires_grad_(True)
    out = teacher(video)
    assert not out.requires_grad and out.grad_fn is None
    # targets are ordinary tensors: the loss may save them for backward
    pred = torch.randn(out.shape, requires_grad=True)
    nn.functional.mse_loss(pred, out).backward()
    assert pred.grad is not None


def test_errors(files, teacher, tmp_path):
    cfg_path, _, _ = files
    missing = str(tmp_path / "no_such_ViT-B-16.pt")
    with pytest.raises(FileNotFoundError, match="no_such_ViT-B-16.pt"):
        Teacher(model_name=cfg_path, pretrained=missing)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Teacher(model_name=str(tmp_path / "nope.json"), pretrained=None)
    with pytest.raises(ValueError, match="cannot match student grid"):
        teacher(torch.randn(1, 3, 4, 48, 48))  # 3x3 grid vs the teacher's 2x2
    with pytest.raises(ValueError, match="cannot match student grid"):
        teacher(torch.randn(1, 3, 4, 32, 40))
    with pytest.raises(ValueError, match="tubelet"):
        teacher(torch.randn(1, 3, 5, 32, 32))
    teacher.check_grid(32, 16)
    with pytest.raises(ValueError, match="teacher grid 2x2 .* cannot match student grid"):
        teacher.check_grid(224, 16)
    with pytest.raises(ValueError, match="cannot match student grid"):
        teacher.check_grid(32, 8)


def _openai_style_archive(model, path):
    """A TorchScript archive holding only the model's tensors (fp16) plus OpenAI's three extra
    entries, like OpenAI's released ViT-B-16.pt."""
    root = nn.Module()
    for key, value in model.state_dict().items():
        *parents, leaf = key.split(".")
        m = root
        for p in parents:
            if not hasattr(m, p):
                setattr(m, p, nn.Module())
            m = getattr(m, p)
        m.register_buffer(leaf, value.half() if value.is_floating_point() else value)
    for k in ("input_resolution", "context_length", "vocab_size"):
        root.register_buffer(k, torch.tensor(1))
    torch.jit.script(root).save(str(path))


# torch.jit deprecation notes
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_openai_torchscript_archive(files, tmp_path):
    cfg_path, _, model = files
    path = tmp_path / "ViT-B-16.pt"
    _openai_style_archive(model, path)
    t = Teacher(model_name=cfg_path, pretrained=str(path))
    # OpenAI's weights were trained with QuickGELU: an archive switches it on
    assert isinstance(t.visual.transformer.resblocks[0].mlp.gelu, open_clip.model.QuickGELU)
    torch.testing.assert_close(t.visual.conv1.weight, model.visual.conv1.weight.half().float(),
                               atol=0, rtol=0)
    assert t(rand_video(1, 2)).shape == (1, G * G, WIDTH)


def test_pretrained_tag(files, monkeypatch):
    """A tag goes through open_clip's download (faked here) and takes QuickGELU from the tag's
    config; a failed download names the way out."""
    cfg_path, ckpt, model = files
    monkeypatch.setattr(open_clip, "get_pretrained_cfg",
                        lambda name, tag: {"hf_hub": "x/", "quick_gelu": True})
    monkeypatch.setattr(open_clip, "download_pretrained", lambda cfg, **kw: ckpt)
    t = Teacher(model_name=cfg_path, pretrained="openai")
    assert isinstance(t.visual.transformer.resblocks[0].mlp.gelu, open_clip.model.QuickGELU)
    torch.testing.assert_close(t.visual.proj, model.visual.proj, atol=0, rtol=0)

    def offline(cfg, **kw):
        raise FileNotFoundError("cannot reach the hub")
    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    with pytest.raises(RuntimeError, match="could not download the 'openai' weights.*local file"):
        Teacher(model_name=cfg_path, pretrained="openai")


def test_pixel_targets():
    torch.manual_seed(0)
    video = torch.randn(2, 3, 4, 32, 48)  # t=2, h=2, w=3 -> N=12
    assert pixel_targets(video).shape == (2, 12, 1536)
    # a hand-made clip: pixel value encodes (channel, frame, row, col); read back token (1, 1, 2)
    C, T, H, W = 3, 4, 32, 48
    c, f, y, x = torch.meshgrid(torch.arange(C), torch.arange(T), torch.arange(H), torch.arange(W),
                                indexing="ij")
    pix = (c * 1e6 + f * 1e4 + y * 1e2 + x).double()[None]
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    out = pixel_targets(pix, mean=mean, std=std, normalize=False)
    n = 1 * 6 + 1 * 3 + 2  # (t=1, h=1, w=2) in (t, h, w) order
    want = [cc * 1e6 + (2 + dt) * 1e4 + (16 + dy) * 1e2 + (32 + dx)
            for dt in range(2) for dy in range(16) for dx in range(16) for cc in range(3)]
    torch.testing.assert_close(out[0, n].double(), torch.tensor(want, dtype=torch.float64),
                               atol=0.5, rtol=0)
    # un-normalisation: ImageNet-normalised zeros are the ImageNet mean in [0, 1]
    zero = pixel_targets(torch.zeros(1, 3, 2, 16, 16), normalize=False).view(-1, 3)
    torch.testing.assert_close(zero, torch.tensor(IMAGENET_MEAN).expand(512, 3))
    # normalize=True: per token and channel, mean 0 / unbiased std 1 over its 2*16*16 pixels
    norm = pixel_targets(video).view(2, 12, 512, 3)
    torch.testing.assert_close(norm.mean(2), torch.zeros(2, 12, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(norm.std(2, unbiased=True), torch.ones(2, 12, 3), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------- timm teachers (Table 4b)
# Small random-weight timm ViTs (depth 1, width 32) stand in for the ViT-B teachers; the names keep
# each model's patch, prefix tokens and pretrained_cfg (mean/std). Nothing is downloaded.
SMALL = dict(depth=1, embed_dim=32, num_heads=2)
DINOV2 = "timm:vit_base_patch14_dinov2.lvd142m"
REG4 = "timm:vit_small_patch14_reg4_dinov2.lvd142m"  # class + 4 register tokens
DINOV3 = "timm:vit_base_patch16_dinov3.lvd1689m"  # timm's Eva: RoPE, class + 4 register tokens


def small_timm(name=DINOV2, pretrained=None, **kw):
    torch.manual_seed(0)
    return Teacher(name, pretrained, model_kwargs=SMALL, **kw)


def rand_frames(n, size, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name,patch,prefix", [(DINOV2, 14, 1), (REG4, 14, 5), (DINOV3, 16, 5)])
def test_timm_tokens_pinned_and_order(name, patch, prefix):
    """Native resolution (a 2x2 grid of the teacher's patch): time slice i is timm's
    forward_features on frame 2i with the class (and register) tokens dropped, patches row-major."""
    S = G * patch
    t = small_timm(name, img_size=S, patch_size=patch)
    assert (t.backend, t.image_size, t.patch_size, t.grid, t.out_dim) == ("timm", S, patch, G, 32)
    assert t.visual.num_prefix_tokens == prefix
    video = torch.randn(2, 3, 6, S, S, generator=torch.Generator().manual_seed(0))
    raw = t.features(video)
    assert raw.shape == (2, 3 * G * G, 32) and raw.dtype == torch.float32
    frames = video[:, :, ::2]  # ImageNet statistics: these teachers' own, so no re-normalisation
    for i in range(3):
        with torch.no_grad():
            full = t.visual.forward_features(frames[:, :, i])  # (B, prefix + 4, D), after the norm
            fmap = t.visual.forward_intermediates(frames[:, :, i], indices=1, norm=True,
                                                  intermediates_only=True)[-1]  # (B, D, 2, 2)
        assert full.shape[1] == prefix + G * G
        torch.testing.assert_close(raw[:, i * G * G:(i + 1) * G * G], full[:, -G * G:], atol=1e-5,
                                   rtol=1e-5)
        for r in range(G):
            for c in range(G):
                torch.testing.assert_close(raw[:, i * G * G + r * G + c], fmap[:, :, r, c],
                                           atol=1e-5, rtol=1e-5)
    # the normalised targets: per clip and channel over the N patch tokens only
    out = t(video)
    torch.testing.assert_close(out.mean(1), torch.zeros(2, 32), atol=1e-5, rtol=0)


def test_patch14_teacher_runs_at_student_grid():
    """A 224 px, patch-16 student (14x14 tokens) gets a 196 px DINOv2; a 32/16 student a 28 px one.
    The frames are resized to the teacher's resolution (antialiased bilinear)."""
    t224 = small_timm(img_size=224, patch_size=16)
    assert (t224.image_size, t224.patch_size, t224.grid) == (196, 14, 14)
    assert t224.visual.pos_embed.shape[1] == 1 + 14 * 14  # built at 196, not timm's 518 default
    assert t224(torch.randn(1, 3, 2, 224, 224)).shape == (1, 196, 32)

    t32 = small_timm(img_size=32, patch_size=16)
    native = small_timm(img_size=28, patch_size=14)  # same seed -> same weights
    assert t32.image_size == 28
    video = rand_video(2, 4)
    frames = video[:, :, ::2].transpose(1, 2).reshape(4, 3, 32, 32)
    small = nn.functional.interpolate(frames, size=(28, 28), mode="bilinear", antialias=True)
    small = small.view(2, 2, 3, 28, 28).transpose(1, 2).repeat_interleave(2, dim=2)  # T=4 again
    torch.testing.assert_close(t32.features(video), native.features(small), atol=1e-5, rtol=1e-5)


def test_grid_rule(files):
    cfg_path, ckpt, _ = files
    t = small_timm(img_size=224, patch_size=16)
    t.check_grid(224, 16)
    with pytest.raises(ValueError,
                       match=r"teacher grid 14x14 \(image 196, patch 14\) cannot match student "
                       r"grid 16x16 \(image 224x224, patch 14\)"):
        t.check_grid(224, 14)
    with pytest.raises(ValueError, match="cannot match student grid 12.25x12.25"):
        t(torch.randn(1, 3, 2, 196, 196))  # frames of another size than the student's
    with pytest.raises(ValueError, match="cannot match student grid 12.5x12.5"):
        small_timm(img_size=200, patch_size=16)  # no whole grid
    # open_clip: the size is fixed by the config, so only a student with the same grid passes
    with pytest.raises(ValueError, match="teacher grid 2x2 .* cannot match student grid 4x4"):
        Teacher(cfg_path, ckpt, img_size=64, patch_size=16)
    t64 = Teacher(cfg_path, ckpt, img_size=64, patch_size=32)  # 2x2 grid: frames resized to 32
    assert t64(torch.randn(1, 3, 2, 64, 64)).shape == (1, G * G, WIDTH)


def test_input_mean_std_per_teacher(files, teacher):
    cfg_path, ckpt, _ = files
    assert (teacher.mean, teacher.std) == (CLIP_MEAN, CLIP_STD)  # open_clip, OpenAI statistics
    for name in (DINOV2, "timm:vit_base_patch16_224.mae", "timm:vit_base_patch16_224.dino"):
        assert (small_timm(name).mean, small_timm(name).std) == (IMAGENET_MEAN, IMAGENET_STD)
    half = "timm:vit_tiny_patch16_224.augreg_in21k"  # pretrained_cfg: mean = std = 0.5
    own, im = small_timm(half, img_size=32), small_timm(half, img_size=32, input_norm="imagenet")
    assert (own.mean, own.std) == ((0.5,) * 3, (0.5,) * 3)
    assert (im.mean, im.std) == (IMAGENET_MEAN, IMAGENET_STD)
    video = rand_video(2, 4)
    im_m, im_s = (torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1),
                  torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1))
    pixels = video * im_s + im_m
    torch.testing.assert_close(own.features(video), im.features((pixels - 0.5) / 0.5), atol=1e-5,
                               rtol=1e-5)
    assert not torch.allclose(own.features(video), im.features(video), atol=1e-3)


def test_open_clip_timm_tower(tmp_path):
    """open_clip names whose tower is a timm ViT (SigLIP, EVA-CLIP) take their tokens from
    the trunk."""
    vision = {"image_size": 160, "timm_model_name": "test_vit",  # timm's own tiny test ViT
              "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"}
    cfg = {"embed_dim": 32, "vision_cfg": vision, "text_cfg": CFG["text_cfg"]}
    path = tmp_path / "tiny_timm_tower_test.json"
    path.write_text(json.dumps(cfg))
    t = Teacher(str(path), None)
    assert (t.backend, t.image_size, t.patch_size, t.out_dim) == ("timm", 160, 16, 64)
    # open_clip's record (OpenAI's for random weights)
    assert (t.mean, t.std) == (CLIP_MEAN, CLIP_STD)
    video = torch.randn(1, 3, 2, 160, 160)
    with torch.no_grad():
        ref = t.visual.forward_features(to_clip_norm(video)[:, :, 0])[:, 1:]
    torch.testing.assert_close(t.features(video), ref, atol=1e-4, rtol=1e-4)


def test_timm_weights(tmp_path, monkeypatch):
    """A local file round-trips exactly (also one saved at timm's default 518 px: the position
    embeddings are resampled to the run's grid); 'timm' asks timm for its own weights."""
    a = small_timm(img_size=32, patch_size=16)
    torch.manual_seed(1)
    b = Teacher(DINOV2, None, img_size=32, patch_size=16, model_kwargs=SMALL)
    video = rand_video(1, 2)
    assert not torch.allclose(a(video), b(video), atol=1e-3)
    path = tmp_path / "dinov2_small.pth"
    torch.save(a.visual.state_dict(), path)
    loaded = Teacher(DINOV2, str(path), img_size=32, patch_size=16, model_kwargs=SMALL)
    torch.testing.assert_close(loaded(video), a(video), atol=0, rtol=0)
    big = small_timm()  # timm's default resolution: 518 px, a 37x37 grid
    assert big.grid == 37
    torch.save({"state_dict": big.visual.state_dict()}, tmp_path / "dinov2_518.pth")
    resampled = Teacher(DINOV2, str(tmp_path / "dinov2_518.pth"), img_size=32, patch_size=16,
                        model_kwargs=SMALL)
    assert resampled.visual.pos_embed.shape == (1, 1 + G * G, 32)
    qkv = resampled.visual.blocks[0].attn.qkv.weight
    torch.testing.assert_close(qkv, big.visual.blocks[0].attn.qkv.weight, atol=0, rtol=0)

    with pytest.raises(FileNotFoundError, match="'timm' = timm's pretrained weights"):
        small_timm(pretrained="openai")  # the open_clip tag is no timm weight
    import timm

    import teacher as teacher_lib
    calls, create = [], timm.create_model

    def offline(name, pretrained=False, **kw):
        calls.append((name, pretrained))
        if pretrained:
            raise OSError("cannot reach the hub")
        return create(name, pretrained=False, **kw)
    with monkeypatch.context() as m:
        m.setattr(timm, "create_model", offline)
        with pytest.raises(RuntimeError,
                           match="could not load timm's pretrained weights.*local file"):
            teacher_lib._load_timm("vit_base_patch14_dinov2.lvd142m", "timm", 224, 16, {})
    assert calls[-1] == ("vit_base_patch14_dinov2.lvd142m", True)
    with pytest.raises(ValueError, match="unknown timm model"):
        Teacher("timm:no_such_vit", None)


@pytest.mark.parametrize("backend", ["open_clip", "timm"])
def test_teacher_dtype(files, backend):
    """Teacher(dtype=bf16) casts its weights once; inputs follow them, outputs are float32 and close
    to the fp32 teacher's."""
    cfg_path, ckpt, _ = files
    make = ((lambda **kw: Teacher(cfg_path, ckpt, **kw)) if backend == "open_clip"
            else (lambda **kw: small_timm(img_size=32, patch_size=16, **kw)))
    fp32, bf16 = make(), make(dtype=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in fp32.parameters())
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    video = rand_video(2, 4)
    ref, out = fp32(video), bf16(video)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=0.1, rtol=0.05)
    assert (out - ref).abs().mean() < 0.02
    torch.testing.assert_close(bf16(video.bfloat16()), out, atol=0.1, rtol=0.05)  # any input dtype


def test_build_target(files):
    """teacher.build_target (train.py's targets): one source for the target width; dtype reaches
    the teacher."""
    cfg_path, ckpt, _ = files
    kw = dict(input_norm="clip", tubelet=2, img_size=32, patch_size=16, device="cpu")
    fn, dim = teacher_lib.build_target("clip", cfg_path, ckpt, dtype=torch.bfloat16, **kw)
    assert dim == fn.out_dim == WIDTH and next(fn.parameters()).dtype == torch.bfloat16
    assert fn(rand_video(1, 2)).shape == (1, G * G, WIDTH)
    fn, dim = teacher_lib.build_target("clip", cfg_path, ckpt, **kw)  # dtype None: fp32
    assert next(fn.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="cannot match student grid"):
        teacher_lib.build_target("clip", cfg_path, ckpt, **{**kw, "img_size": 64})
    assert teacher_lib.build_target("pixel", cfg_path, ckpt, **kw)[1] == 1536


def test_train_with_dinov2_teacher(tmp_path):
    """End to end: one step of train.py with a random-weight ViT-B/14 DINOv2 at 196 px
    (Table 4b)."""
    import math
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--preset", "tiny", "--img-size", "224", "--num-frames", "4",
           "--target", "clip", "--teacher", "timm:vit_base_patch14_dinov2.lvd142m",
           "--teacher-weights", "none", "--steps", "1", "--batch-size", "4", "--out-dir", str(out)]
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 1 and math.isfinite(log[-1]["loss"])
