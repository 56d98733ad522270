"""finetune.py (Table 17): checkpoint loading, layer-wise lr decay, clip RandAugment and
mixup/cutmix, multi-view averaging and metrics on hand-made examples, end-to-end runs on `motion`
and an mp4 list, bit-identical resume."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import augment
import data
import evaluation
import finetune
from conftest import ROOT, run
from model import MODEL_SIZES, PretrainModel, VideoClassifier, sinusoid_table
from runtime import set_lr
from tools import benchkit

REF = Path(__file__).parent / "data" / "videomae_tiny_reference.pt"
# 32 px, 8 frames: 16 tokens per clip; 64 training clips, batch 16 -> 4 steps per epoch.
SMALL = ["--preset", "tiny", "--img-size", "32", "--num-frames", "8", "--motion-train", "64",
         "--motion-val", "32", "--batch-size", "16", "--epochs", "2", "--warmup-epochs", "1",
         "--workers", "0", "--log-every", "1"]


def data_args(**kw):
    a = dict(img_size=32, num_frames=16, patch_size=None, tubelet=None, model=None, checkpoint=None,
             num_classes=5, dataset="list", task="single", train_list="x", val_list="x",
             data_root="", splits=["train.csv", "val.csv"])
    a.update(kw)
    return argparse.Namespace(**a)


def grid(args):
    """build_classifier's keywords from data_args' flags."""
    return {k: getattr(args, k)
            for k in ("model", "patch_size", "tubelet", "img_size", "num_frames")}


# ----------------------------------------------------------------------------- checkpoints


def test_train_py_checkpoint_gives_encoder_features(tmp_path, capsys):
    """A train.py checkpoint names its model: --model/--patch/--tubelet come from it; the
    classifier's pooled tokens equal the pretraining encoder's, also on another grid (position table
    rebuilt)."""
    torch.manual_seed(0)
    pre = PretrainModel(img_size=64, num_frames=16, **MODEL_SIZES["tiny"], out_dim=1536).eval()
    path = tmp_path / "checkpoint-latest.pth"
    torch.save({"model": pre.state_dict(), "step": 3,
                "args": {"model": "tiny", "patch_size": 16, "tubelet": 2,
                         "img_size": 64, "num_frames": 16}}, path)
    # another grid than pretraining
    args = data_args(checkpoint=str(path), img_size=32, num_frames=8)
    evaluation.check_data_args(args)
    state = evaluation.read_checkpoint(args)
    assert (args.model, args.patch_size, args.tubelet) == ("tiny", 16, 2)
    clf = evaluation.build_classifier(state, 5, **grid(args)).eval()
    video = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        enc = pre.encoder
        x = enc.patch_embed(video) + sinusoid_table(16, 192)          # 4 x 2 x 2 tokens
        for blk in enc.blocks:
            x = blk(x)
        clf.fc_norm = torch.nn.Identity()
        torch.testing.assert_close(clf.forward_features(video), x.mean(1), atol=1e-5, rtol=1e-5)
    args = data_args(checkpoint=str(path), model="small")   # a flag that contradicts it: the fix
    evaluation.check_data_args(args)
    with pytest.raises(SystemExit) as e:
        evaluation.read_checkpoint(args)
    assert e.value.code == 2 and "pass --model tiny" in capsys.readouterr().err


def test_checkpoint_shape_beats_a_preset_never_a_typed_flag(tmp_path, capsys):
    """evaluation.read_checkpoint: the checkpoint's shape wins over a preset's value (not in
    args.flags_given), a typed flag that contradicts it is an error, the fallbacks (base, 16, 2)
    fill what neither says."""
    pre = PretrainModel(img_size=32, num_frames=8, patch_size=8, **MODEL_SIZES["tiny"], out_dim=8)
    path = tmp_path / "checkpoint-latest.pth"
    torch.save({"model": pre.state_dict(), "args": {"model": "tiny", "patch_size": 8}}, path)
    args = data_args(checkpoint=str(path), model="small", img_size=32, num_frames=8)
    args.flags_given = []                                  # --model small came from a preset
    evaluation.read_checkpoint(args)
    assert (args.model, args.patch_size, args.tubelet) == ("tiny", 8, 2)
    args = data_args()
    evaluation.read_checkpoint(args)
    assert (args.model, args.patch_size, args.tubelet) == ("base", 16, 2)
    args = data_args(checkpoint=str(path), model="small", img_size=32, num_frames=8)
    args.flags_given = ["model"]
    with pytest.raises(SystemExit):
        evaluation.read_checkpoint(args)
    assert "pass --model tiny" in capsys.readouterr().err


def test_reference_checkpoint_loads_and_matches(monkeypatch, capsys):
    """tests/data/videomae_tiny_reference.pt: the pretraining state dict loads as an encoder
    (fc_norm/head missing, norm unexpected) and a finetuned classifier gives the reference features
    and logits."""
    ref = torch.load(REF, weights_only=True)
    c = ref["config"]
    monkeypatch.setitem(MODEL_SIZES, "tiny",
                        dict(embed_dim=c["encoder_embed_dim"], depth=c["encoder_depth"],
                             num_heads=c["encoder_num_heads"], mlp_ratio=c["mlp_ratio"]))
    args = data_args(model="tiny", img_size=c["img_size"], num_frames=c["num_frames"],
                     patch_size=c["patch_size"], tubelet=c["tubelet_size"])
    evaluation.build_classifier({"model": ref["pretrain_state_dict"]}, 5, **grid(args))
    printed = capsys.readouterr().out
    for k in ref["finetune_missing"] + ref["finetune_unexpected"]:
        assert k in printed
    clf = evaluation.build_classifier({"module": ref["finetune_state_dict"]}, 5, **grid(args))
    clf.eval()
    with torch.no_grad():
        torch.testing.assert_close(clf.forward_features(ref["video"]), ref["finetune_features"],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(clf(ref["video"]), ref["finetune_logits"], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- optimisation pieces


def test_layer_decay_groups():
    # depth L = 4
    model = VideoClassifier(img_size=32, num_frames=4, num_classes=3, **MODEL_SIZES["tiny"])
    groups = finetune.layer_decay_groups(model, 0.05, 0.75)
    seen = [id(p) for g in groups for p in g["params"]]
    # each parameter exactly once
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
    where = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    L = 4
    for name, expect in [("patch_embed.proj.weight", 0.75 ** (L + 1)),
                         ("blocks.0.attn.qkv.weight", 0.75 ** L),
                         ("blocks.3.mlp.fc1.weight", 0.75 ** 1), ("head.weight", 1.0),
                         ("fc_norm.weight", 1.0)]:
        assert where[id(named[name])]["lr_scale"] == pytest.approx(expect), name
    assert where[id(named["blocks.2.attn.qkv.weight"])]["weight_decay"] == 0.05
    for name in ("blocks.2.attn.q_bias", "blocks.2.norm1.weight", "head.bias",
                 "patch_embed.proj.bias"):
        assert where[id(named[name])]["weight_decay"] == 0.0, name
    opt = torch.optim.AdamW(groups, lr=0.0)
    set_lr(opt, 1e-3)
    assert ({round(g["lr"] / 1e-3, 6) for g in opt.param_groups}
            == {round(0.75 ** k, 6) for k in range(L + 2)})


def test_randaugment_applies_one_op_to_all_frames():
    # timm's rand-m9-n2-mstd0.5-inc1
    ra = augment.RandAug(n=2, m=9, mstd=0.5)
    rng0 = np.random.default_rng(0)
    clip = rng0.integers(0, 256, (6, 24, 24, 3), dtype=np.uint8)
    changed = 0
    for seed in range(12):
        before = torch.get_rng_state()
        out = benchkit.randaugment_clip(ra, clip, np.random.default_rng(seed))
        assert torch.equal(torch.get_rng_state(), before)                    # global RNG untouched
        assert np.array_equal(out, benchkit.randaugment_clip(ra, clip, np.random.default_rng(seed)))
        for t in (0, 5):
            # frame t of the clip == frame t alone under the same draw: the same op everywhere
            alone = benchkit.randaugment_clip(ra, np.repeat(clip[t:t + 1], 2, 0),
                                              np.random.default_rng(seed))
            assert np.array_equal(out[t], alone[0]), (seed, t)
        changed += not np.array_equal(out, clip)
    assert changed >= 6


RANDAUG_M = (9, 7)   # Table 17's magnitude and the reference's (rand-m7-n4-mstd0.5-inc1)


@pytest.mark.parametrize("m", RANDAUG_M)
def test_randaug_levels_match_timm(monkeypatch, m):
    """Every op of timm's "inc1" set maps magnitude m to timm's own argument
    (auto_augment.LEVEL_TO_ARG), both signs of the signed ops (timm's _randomly_negate pinned to +1,
    then -1)."""
    aa = pytest.importorskip("timm.data.auto_augment")
    assert augment.RANDAUG_OPS == tuple(aa._RAND_INCREASING_TRANSFORMS)
    for sign in (1, -1):
        monkeypatch.setattr(aa, "_randomly_negate", lambda v, s=sign: s * v)
        for name in augment.RANDAUG_OPS:
            fn = aa.LEVEL_TO_ARG[name]
            want = fn(m, dict(aa._HPARAMS_DEFAULT)) if fn else ()
            got = augment.randaug_level_args(name, m, sign)
            assert got == pytest.approx(want, abs=1e-12), (name, sign)
            assert [type(v) for v in got] == [type(v) for v in want], name          # ints stay ints
    # torchvision's m=9: 9 degrees
    assert augment.randaug_level_args("Rotate", 9) == pytest.approx((27.0,))
    assert augment.randaug_level_args("ShearX", 9) == pytest.approx((0.27,))


def test_randaug_ops_match_timm_on_a_frame():
    """Each op on one PIL frame == timm's op (NAME_TO_OP) with the same argument, bicubic,
    grey fill."""
    aa = pytest.importorskip("timm.data.auto_augment")
    from PIL import Image
    rng = np.random.default_rng(0)
    frame = (np.linspace(0, 255, 40)[None, :, None]
             * rng.uniform(0.3, 1, (1, 1, 3))).astype(np.uint8)
    frame = np.repeat(frame, 32, 0)
    # a textured patch off-centre
    frame[8:20, 10:30] = rng.integers(0, 256, (12, 20, 3))
    img = Image.fromarray(frame)
    kw = dict(fillcolor=augment.RANDAUG_FILL, resample=Image.Resampling.BICUBIC)
    for name in augment.RANDAUG_OPS:
        args = augment.randaug_level_args(name, 9, -1)
        want = np.asarray(aa.NAME_TO_OP[name](img, *args, **kw))
        got = np.asarray(benchkit.randaug_frame(img, name, args))
        assert np.array_equal(got, want), name
        # (may leave a frame alone)
        if name not in ("AutoContrast", "Equalize"):
            assert not np.array_equal(got, frame), name
    # m=10: keep 0 bits
    zero_bits = augment.randaug_level_args("PosterizeIncreasing", 10)
    assert (zero_bits == (0,)
            and not np.asarray(benchkit.randaug_frame(img, "PosterizeIncreasing", zero_bits)).any())


def test_randaug_draw_statistics():
    """n ops drawn with replacement, each kept with p 0.5, magnitude 9 + N(0, 0.5) clipped to
    [0, 10], signs +-1 at random: read back from Rotate's angle (30 * m / 10) and ShearX (0.3
    * m / 10)."""
    cfg = augment.RandAug(n=2, m=9, mstd=0.5)
    rng = np.random.default_rng(1)
    draws = [augment.randaug_draw(cfg, rng) for _ in range(4000)]
    assert np.mean([len(d) for d in draws]) == pytest.approx(1.0, abs=0.05)   # 2 ops x p 0.5
    mags = np.array([a[0] / 30 * 10 for d in draws for n, a in d if n == "Rotate"]
                    + [a[0] / 0.3 * 10 for d in draws for n, a in d if n == "ShearX"])
    assert len(mags) > 300 and np.abs(mags).max() <= 10 + 1e-9
    mc = np.clip(9 + 0.5 * np.random.default_rng(2).standard_normal(200000), 0, 10)
    assert np.abs(mags).mean() == pytest.approx(mc.mean(), abs=0.06)
    assert np.abs(mags).std() == pytest.approx(mc.std(), abs=0.06)
    assert np.mean(mags > 0) == pytest.approx(0.5, abs=0.06)
    names = [n for d in draws for n, _ in d]
    assert set(names) == set(augment.RANDAUG_OPS)
    assert augment.randaug_draw(augment.RandAug(n=0), rng) == []


def test_random_resized_crop_box_statistics():
    """One box per clip: inside the frame, area fraction in scale and log-aspect (w / h) in log
    ratio (up to rounding), and the means of both, and of the position, equal torchvision's
    RandomResizedCrop.get_params (the same rule as VideoMAE's _get_param_spatial_crop) over
    many draws."""
    from torchvision.transforms import RandomResizedCrop
    H, W, n = 240, 320, 4000
    for scale, ratio in [((0.25, 1.0), (3 / 4, 4 / 3)), ((0.08, 1.0), (3 / 4, 4 / 3)),
                         ((0.5, 1.0), (0.5, 2))]:
        rng = np.random.default_rng(0)
        ours = np.array([augment.random_resized_crop_box(H, W, rng, scale, ratio) for _ in range(n)],
                        float)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            ref = np.array([RandomResizedCrop.get_params(torch.empty(1, H, W), scale, ratio)
                            for _ in range(n)], float)
        for b in (ours, ref):
            y, x, h, w = b.T
            assert (y >= 0).all() and (x >= 0).all() and (y + h <= H).all() and (x + w <= W).all()
            frac, log_ar = h * w / (H * W), np.log(w / h)
            assert frac.min() >= scale[0] - 0.01 and frac.max() <= scale[1]
            assert (log_ar.min() >= np.log(ratio[0]) - 0.02
                    and log_ar.max() <= np.log(ratio[1]) + 0.02)
        stats = [lambda b: b[:, 2] * b[:, 3] / (H * W), lambda b: np.log(b[:, 3] / b[:, 2]),
                 lambda b: (b[:, 0] + b[:, 2] / 2) / H, lambda b: (b[:, 1] + b[:, 3] / 2) / W]
        for f in stats:   # 4000 draws: standard errors ~0.004 (area, centre), ~0.002 (log-aspect)
            assert f(ours).mean() == pytest.approx(f(ref).mean(), abs=0.02), scale
    # a frame far outside the ratio range: the fallback centre crop, clamped to the range
    assert augment.random_resized_crop_box(10, 200, np.random.default_rng(0), (0.9, 1.0),
                                        (3 / 4, 4 / 3)) == (0, 93, 10, 13)


def test_rrc_in_the_datasets(video_list, monkeypatch):
    """crop="rrc": one box per clip (its scale passed on), the clip at img_size; motion's default
    "none" leaves clips as rendered."""
    calls = []
    box = augment.random_resized_crop_box
    monkeypatch.setattr(augment, "random_resized_crop_box", lambda *a: calls.append(a[3:]) or box(*a))
    items = data.read_list(video_list)
    ds = evaluation.VideoClipDataset(items, mode="train", num_classes=3, num_frames=8, img_size=32,
                                     crop="rrc", crop_scale=(0.08, 1.0))
    a = ds[1]["video"]
    assert a.shape == (3, 8, 32, 32) and torch.equal(ds[1]["video"], a)
    assert calls == [((0.08, 1.0), (3 / 4, 4 / 3))] * 2
    frames = np.zeros((4, 48, 64, 3), np.uint8)
    frames[:, 20:28, 28:36] = 255                        # a white square, same in all frames
    out = augment.crop_and_flip(frames, 16, np.random.default_rng(3), False, crop="rrc")
    assert all(np.array_equal(out[0], f) for f in out)   # the same box in every frame
    plain = evaluation.MotionClassDataset("train", 8, img_size=32, num_frames=8)
    assert torch.equal(plain[3]["video"], data.to_tensor(plain.clip(3)[0]))
    rrc = evaluation.MotionClassDataset("train", 8, img_size=32, num_frames=8, crop="rrc")
    assert (rrc[3]["video"].shape == (3, 8, 32, 32)
            and not torch.equal(rrc[3]["video"], plain[3]["video"]))


def test_random_erase_statistics():
    """VideoMAE's erasing (cube): about prob of the clips get one box, the same box in every frame
    and channel, filled with N(0, 1) drawn anew per frame; box area and aspect as timm's rule
    (Monte-Carlo); rest untouched."""
    B, C, T, H, W = 400, 3, 4, 24, 32
    video = torch.full((B, C, T, H, W), 5.0)
    before = torch.get_rng_state()
    out = augment.random_erase(video, 0.25, np.random.default_rng(0))
    assert (torch.equal(torch.get_rng_state(), before)
            and torch.equal(video, torch.full_like(video, 5.0)))
    # seeded by rng
    assert torch.equal(out, augment.random_erase(video, 0.25, np.random.default_rng(0)))
    hit = out != 5.0                                         # (B, C, T, H, W)
    erased = hit.flatten(1).any(1)
    assert erased.float().mean().item() == pytest.approx(0.25, abs=0.07)   # binomial std 0.022
    assert torch.equal(hit, hit[:, :1, :1].expand_as(hit))   # one box for all frames and channels
    areas, log_ar = [], []
    for b in torch.nonzero(erased).flatten():
        m = hit[b, 0, 0]
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        h, w = len(rows), len(cols)
        # a rectangle
        assert m.sum() == h * w and rows[-1] - rows[0] == h - 1 and cols[-1] - cols[0] == w - 1
        areas.append(h * w / (H * W))
        log_ar.append(np.log(h / w))
    vals = out[erased][hit[erased]]
    assert abs(vals.mean().item()) < 0.05 and vals.std().item() == pytest.approx(1.0, abs=0.05)
    b = torch.nonzero(erased).flatten()[0]
    # fresh noise per frame
    assert not torch.equal(out[b, :, 0][hit[b, :, 0]], out[b, :, 1][hit[b, :, 1]])
    # the sampling rule by Monte-Carlo: area U(0.02, 1/3), log h / w U(log 0.3, -log 0.3), rounded,
    # redrawn until the box fits strictly inside (100 tries)
    g = np.random.default_rng(1)
    a, r = (g.uniform(0.02, 1 / 3, 200000) * H * W,
            np.exp(g.uniform(np.log(0.3), -np.log(0.3), 200000)))
    h, w = np.round(np.sqrt(a * r)), np.round(np.sqrt(a / r))
    ok = (h < H) & (w < W)
    assert np.mean(areas) == pytest.approx((h * w)[ok].mean() / (H * W), abs=0.02)
    assert np.mean(log_ar) == pytest.approx(np.log(h / w)[ok].mean(), abs=0.1)
    # off: no copy, no draw
    assert augment.random_erase(video, 0.0, np.random.default_rng(0)) is video
    const = augment.random_erase(video, 1.0, np.random.default_rng(0), mode="const")
    assert ((const == 0) | (const == 5)).all() and (const == 0).flatten(1).any(1).all()


def test_augment_flag_defaults(tmp_path):
    """The paper's recipe: timm RandAug (2, 9, 0.5), rrc, erasing 0.25 pixel x 1; the tiny demo
    keeps none."""
    args = finetune.get_args(["--out-dir", str(tmp_path / "a")])
    assert (args.randaug_n, args.randaug_m, args.randaug_mstd) == (2, 9, 0.5)
    assert (args.crop, args.crop_scale, args.crop_ratio) == ("rrc", [0.25, 1.0], [3 / 4, 4 / 3])
    assert (args.reprob, args.remode, args.recount) == (0.25, "pixel", 1)
    args = finetune.get_args(["--preset", "tiny", "--out-dir", str(tmp_path / "b")])
    assert (args.randaug_n, args.reprob, args.crop) == (0, 0.0, "none")


def test_mix_batch_cutmix_box_shared_by_frames():
    video = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1, 1).expand(4, 3, 5, 16, 16).clone()
    target = torch.eye(4)
    for seed in range(10):
        v, t = augment.mix_batch(video, target, np.random.default_rng(seed), mixup=0.0, cutmix=1.0)
        # sample 0 got sample 3's pixels
        pasted = (v[0] != 0).float()
        # same box in every frame and channel
        assert torch.equal(pasted, pasted[:, :1].expand_as(pasted))
        torch.testing.assert_close(t[0, 3], pasted.mean())   # soft target = pasted area
        torch.testing.assert_close(t.sum(1), torch.ones(4))
        v, t = augment.mix_batch(video, target, np.random.default_rng(seed), mixup=0.8, cutmix=0.0)
        lam = t[0, 0]
        torch.testing.assert_close(v[0], lam * video[0] + (1 - lam) * video[3])


# ----------------------------------------------------------------------------- views and metrics


class HandViews(torch.utils.data.Dataset):
    """5 items (temporal views) of 3 videos, 2 crops each; a view's score is its first
    two pixels."""
    scores = torch.tensor([
        [[0.9, 0.1], [0.7, 0.3]], [[0.3, 0.7], [0.1, 0.9]],   # video 0: clips 0 and 1
        [[0.2, 0.8], [0.4, 0.6]],                             # video 1: one clip
        [[0.6, 0.4], [0.8, 0.2]], [[0.2, 0.8], [0.4, 0.6]]])  # video 2: clips 0 and 1
    ids = [0, 0, 1, 2, 2]

    def __len__(self):
        return 5

    def __getitem__(self, i):
        video = torch.zeros(2, 1, 1, 1, 2)
        video[:, 0, 0, 0] = self.scores[i]
        return {"video": video, "label": torch.tensor(0), "video_id": self.ids[i]}

    def targets(self):
        return torch.zeros(3, dtype=torch.long)


def test_multiview_averaging_by_hand():
    out = evaluation.per_video(lambda v: v.flatten(1), HandViews(), 2, batch_size=2, workers=0,
                               rank=0, world=1, device=torch.device("cpu"))
    torch.testing.assert_close(out, torch.tensor([[0.5, 0.5], [0.3, 0.7], [0.5, 0.5]]))
    # rank 1 of 2 sees items 1 and 3 only: video 0 from clip 1, video 2 from clip 0,
    # video 1 not at all
    part = evaluation.per_video(lambda v: v.flatten(1), HandViews(), 2, 2, 0, rank=1, world=2,
                                device=torch.device("cpu"))
    torch.testing.assert_close(part, torch.tensor([[0.2, 0.8], [0.0, 0.0], [0.7, 0.3]]))


def test_metrics_by_hand():
    scores = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.3, 0.3, 0.4]])
    labels = torch.tensor([0, 1, 1, 1])
    m = evaluation.compute_metrics("single", scores, labels)
    assert m["top1"] == pytest.approx(50.0)
    # class 0: 1/1, class 1: 1/3
    assert m["mean_class_acc"] == pytest.approx(100 * (1 + 1 / 3) / 2)
    assert m["top5"] == pytest.approx(100.0)
    # AP of one class, positives ranked 1st and 3rd: (1/1 + 2/3) / 2; a class without
    # positives is skipped
    s = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.1, 0.4]])
    t = torch.tensor([[1, 0], [0, 0], [1, 0], [0, 0]])
    assert evaluation.mean_average_precision(s, t) == pytest.approx(100 * (1 + 2 / 3) / 2)
    # class 1: its positive ranked 1st
    t[3, 1] = 1
    assert evaluation.mean_average_precision(s, t) == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1) / 2)
    c = evaluation.counting_error(torch.tensor([2.0, 5.0, 9.0]), torch.tensor([4.0, 5.0, 6.0]))
    assert c["count_error"] == pytest.approx((0.5 + 0 + 0.5) / 3)
    assert c["obo"] == pytest.approx(100 / 3)


def test_severe_table_order_and_mean(tmp_path, capsys):
    rows = [("severe-ucfrc", 0.25), ("severe-ssv2", 60.0), ("severe-charades", 20.0),
            ("severe-ssv2", 70.0)]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps({"setting": s, "value": v}) + "\n" for s, v in rows))
    shown = finetune.severe_table(str(path))
    assert list(shown) == ["SSv2", "Gym99", "UCF (10^3)", "GYM (10^3)", "FX-S1", "UB-S1", "UCF-RC",
                           "Charades", "Mean"]
    assert shown["SSv2"] == "70.0"   # the last row of a setting counts
    # UCF-RC enters as 100 * (1 - error)
    assert shown["Mean"].startswith(f"{(70 + 75 + 20) / 3:.1f}")


# ----------------------------------------------------------------------------- end to end


# 32 px, 8 frames, 8 px patches (4 x 4 x 4 tokens), black backgrounds: the quickest motion to learn
# from scratch
LEARN = ["--preset", "tiny", "--img-size", "32", "--num-frames", "8", "--patch-size", "8",
         "--motion-backgrounds", "black", "--motion-train", "512", "--motion-val", "256",
         "--epochs", "4", "--layer-decay", "1.0", "--lr", "8e-3", "--workers", "0"]


def test_finetune_motion_learns(tmp_path):
    """A subprocess run as a user types it: 64 steps from scratch beat chance (12.5%) on motion."""
    out = tmp_path / "ft"
    r = run(["finetune.py", *LEARN, "--out-dir", str(out)])
    assert "clips/s" in r.stdout and "eta" in r.stdout and "top1" in r.stdout
    res = json.loads((out / "results.json").read_text())
    assert res["metric"] == "top1" and {"top1", "top5", "mean_class_acc"} <= set(res)
    # chance 12.5 (+-2.1 std over 256 clips); measured 30.9
    assert res["top1"] > 20.0, res
    ckpt = torch.load(out / "checkpoint-latest.pth", weights_only=True)
    assert ckpt["step"] == 64 and set(ckpt) >= {"model", "optimizer", "scaler", "rng", "args"}
    # the finetuned classifier tests again with --eval-only: the same numbers
    again = finetune.main(LEARN + ["--out-dir", str(tmp_path / "ev"), "--eval-only",
                                   "--checkpoint", str(out / "checkpoint-latest.pth")])
    assert (again["top1"] == pytest.approx(res["top1"])
            and again["top5"] == pytest.approx(res["top5"]))


def test_finetune_video_list_multiview(tmp_path, video_list):
    (video_list.parent / "val.csv").write_text(video_list.read_text())
    out = tmp_path / "ft"
    run(["finetune.py", "--dataset", "list", "--data-root", str(video_list.parent),
         "--num-classes", "3", "--model", "tiny", "--img-size", "32", "--num-frames", "8",
         "--stride", "2", "--test-clips", "2", "--test-crops", "3", "--batch-size", "3",
         "--epochs", "1", "--workers", "0", "--out-dir", str(out),
         "--results-file", str(tmp_path / "all.jsonl")])
    res = json.loads((out / "results.json").read_text())
    assert res["setting"] == "list" and 0 <= res["top1"] <= 100
    assert json.loads((tmp_path / "all.jsonl").read_text().splitlines()[-1])["top1"] == res["top1"]


def test_resume_is_bit_identical(tmp_path):
    """6 steps in one go == 3 steps, stop, --resume, 3 more steps (mixup, cutmix, RandAug, drop
    path on)."""
    args = SMALL + ["--mixup", "0.8", "--cutmix", "1.0", "--randaug-n", "2", "--drop-path", "0.1"]
    finetune.main(args + ["--out-dir", str(tmp_path / "a"), "--steps", "6"])
    finetune.main(args + ["--out-dir", str(tmp_path / "b"), "--steps", "3"])
    half = torch.load(tmp_path / "b" / "checkpoint-latest.pth", weights_only=True)
    finetune.main(args + ["--out-dir", str(tmp_path / "b"), "--steps", "6", "--resume"])
    a = torch.load(tmp_path / "a" / "checkpoint-latest.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint-latest.pth", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert (half["step"] == 3
            and not torch.equal(half["model"]["head.weight"], b["model"]["head.weight"]))


def test_step_applies_the_workers_randaugment_draws(tmp_path, monkeypatch):
    """--randaug-n 2: the loader's clips come unaugmented with their draws (CPU tensors), and every
    micro-step hands them to augment.randaugment_batch before normalising; the model sees its
    output (tests/test_augment_device.py: that output == randaugment_clip's)."""
    seen, normalize = [], data.normalize

    def spy(video, op, arg):
        out = augment.randaugment_batch(video, op, arg)
        seen.append((video.shape, op.shape, arg.shape, op.device.type, out))
        return out
    monkeypatch.setattr(finetune, "randaugment_batch", spy)
    monkeypatch.setattr(data, "normalize", lambda v, *a: seen.append(("normalised", v))
                        or normalize(v, *a))
    finetune.main(SMALL + ["--randaug-n", "2", "--steps", "2", "--out-dir", str(tmp_path)])
    calls = [c for c in seen if c[0] != "normalised"]
    assert [c[:4] for c in calls] == [((16, 3, 8, 32, 32), (16, 2), (16, 2, 6), "cpu")] * 2
    normalised = [c[1] for c in seen if c[0] == "normalised"][:2]
    assert all(n is c[4] for n, c in zip(normalised, calls))
    assert all((c[4] != 0).any() for c in calls)


def test_linear_probing_trains_fc_norm_and_head_only(tmp_path):
    """--linear-probing (SIGMA's probe, Table 1): the encoder's weights stay those of the checkpoint,
    fc_norm and the head train, with finetuning's augmentation and drop path on."""
    torch.manual_seed(0)
    pre = PretrainModel(img_size=32, num_frames=8, patch_size=8, **MODEL_SIZES["tiny"], out_dim=8)
    ck = tmp_path / "pre.pth"
    torch.save({"model": pre.state_dict(), "args": {"model": "tiny", "patch_size": 8,
                                                    "tubelet": 2}}, ck)
    out = tmp_path / "lp"
    finetune.main(SMALL + ["--checkpoint", str(ck), "--linear-probing", "--steps", "3",
                           "--out-dir", str(out), "--drop-path", "0.1"])
    after = torch.load(out / "checkpoint-latest.pth", weights_only=True)["model"]
    encoder = {k: v for k, v in after.items() if not k.startswith(("fc_norm", "head"))}
    assert len(encoder) == len(after) - 4
    assert all(torch.equal(v, pre.state_dict()[f"encoder.{k}"]) for k, v in encoder.items())
    assert not torch.equal(after["fc_norm.weight"], torch.ones(192))


# -------------------------------------------------------------------- evaluation datasets (data.py)


def test_view_sampling_and_crops():
    """Test views as the reference takes them (kinetics.py / ssv2.py, test mode)."""
    # K400, 5 clips of 16 frames at stride 4 from a 300-frame video: 75 frames read at the stride,
    # windows at int(k * 59 / 4) of them = frames 0, 56, 116, 176, 236 (not 0, 60, 120, 179, 239)
    starts = [evaluation.dense_indices(300, 16, 4, view=k, num_views=5)[0] for k in range(5)]
    assert starts == [0, 56, 116, 176, 236]
    assert evaluation.dense_indices(300, 16, 4, view=2, num_views=5).tolist() == list(
        range(116, 116 + 64, 4))
    # the reference's 7 K400 clips: windows at int(k * 59 / 6)
    assert [evaluation.dense_indices(300, 16, 4, view=k, num_views=7)[0]
            for k in range(7)] == [0, 36, 76, 116, 156, 196, 236]
    assert evaluation.dense_indices(100, 4, 5, view=0, num_views=3).tolist() == [0, 5, 10, 15]
    assert evaluation.dense_indices(100, 4, 5, view=2, num_views=3).tolist() == [80, 85, 90, 95]
    # too short: frames 0, 5 read at the stride, the last repeated up to T
    assert evaluation.dense_indices(10, 4, 5).tolist() == [0, 5, 5, 5]
    # SSv2's two views: each segment's start and its midpoint (not its 1/4 and 3/4 points)
    assert (evaluation.segment_indices(12, 4, view=0, num_views=2).tolist(),
            evaluation.segment_indices(12, 4, view=1, num_views=2).tolist()) == ([0, 3, 6, 9],
                                                                                 [1, 4, 7, 10])
    seg = (evaluation.segment_indices(80, 4, view=0, num_views=2).tolist(),
           evaluation.segment_indices(80, 4, view=1, num_views=2).tolist())
    assert seg == ([0, 20, 40, 60], [10, 30, 50, 70])
    # 45 frames, 16 segments: int(tick * i + tick / 2), as the reference computes it
    tick = 45 / 16
    assert (evaluation.segment_indices(45, 16, view=1, num_views=2).tolist()
            == [int(tick / 2.0 + tick * i) for i in range(16)])
    r = evaluation.segment_indices(80, 4, np.random.default_rng(0))
    assert all(20 * i <= f < 20 * (i + 1) for i, f in enumerate(r))
    # spatial: short side to 224, the long side to int(320 * 224 / 240) = 298, crops at int(k * 37)
    assert evaluation.crop_boxes(240, 320, 224) == ((224, 298), [(0, 0), (0, 37), (0, 74)])
    assert evaluation.crop_boxes(299, 224, 224) == ((299, 224), [(0, 0), (37, 0), (75, 0)])
    frames = np.zeros((2, 20, 40, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(40)[None, None, :] * 6   # red ramp along x
    # -> 10 x 20, 3 crops
    crops = evaluation.three_crops(frames, 10, 3)
    assert [c.shape for c in crops] == [(2, 10, 10, 3)] * 3
    # left, centre, right
    assert crops[0][0, 5, 0, 0] < crops[1][0, 5, 0, 0] < crops[2][0, 5, 0, 0]


def test_stratified_subset():
    # class 0: 50 clips, 1: 20, 2: 20
    items = [(f"v{i}", i % 3 if i < 60 else 0) for i in range(90)]
    sub = data.stratified_subset(items, 9, seed=0)
    labels = [label for _, label in sub]
    assert len(sub) == 9 and labels.count(0) == 5 and labels.count(1) == 2 and labels.count(2) == 2
    assert (sub == data.stratified_subset(items, 9, seed=0)
            != data.stratified_subset(items, 9, seed=1))


def test_video_list_dataset_views(video_list):
    items = data.read_list(video_list)
    test = evaluation.VideoClipDataset(items, mode="test", num_classes=3, num_frames=8, stride=2,
                                       img_size=32, num_clips=2, num_crops=3)
    assert len(test) == 12
    s = test[3]
    assert s["video"].shape == (3, 3, 8, 32, 32) and s["video_id"] == 1 and s["label"] == 1
    train = evaluation.VideoClipDataset(items, mode="train", num_classes=3, num_frames=8,
                                        sampling="segment", img_size=32)
    a = train[2]
    assert a["video"].shape == (3, 8, 32, 32) and torch.equal(train[2]["video"], a["video"])
    train.set_epoch(1)
    assert not torch.equal(train[2]["video"], a["video"])



def test_build_datasets_passes_each_value_where_it_belongs(video_list):
    """evaluation.build_datasets takes add_data_args' values by name (no args): each reaches its
    dataset, the training set's and the test set's apart."""
    kw = dict(num_frames=8, img_size=32, seed=5, data_root=str(video_list.parent),
              train_list=str(video_list), val_list=str(video_list), sampling="segment", stride=3,
              flip=False, test_clips=2, test_crops=3)
    train, val = evaluation.build_datasets("list", "single", 3, train_samples=3, **kw)
    assert (len(train.items), train.mode, train.flip, train.sampling, train.stride, train.seed,
            train.num_frames, train.img_size) == (3, "train", False, "segment", 3, 5, 8, 32)
    assert (len(val.items), val.mode, val.num_clips, val.num_crops, val.num_classes) == \
        (6, "test", 2, 3, 3)
    assert evaluation.build_datasets("list", "single", 3, train_mode="test", **kw)[0].mode == "test"
    train, val = evaluation.build_datasets("motion", "single", 8, num_frames=8, img_size=32, seed=5,
                                           motion_train=7, motion_val=4,
                                           motion_backgrounds=["noise"])
    assert (len(train), len(val), train.backgrounds, val.mode, train.seed) == \
        (7, 4, ("noise",), "test", 5)


# ----------------------------------------------------------------------------- SEVERE stand-ins


@pytest.mark.parametrize("task,metric", [("multi", "map"), ("count", "count_error")])
def test_multi_label_and_counting_run(tmp_path, task, metric):
    out = tmp_path / task
    res = finetune.main(SMALL + ["--task", task, "--out-dir", str(out),
                                 "--results-file", str(tmp_path / "r.jsonl")])
    row = json.loads((tmp_path / "r.jsonl").read_text())
    assert row["setting"] == "tiny" and row["metric"] == metric and row["value"] == res[metric]
    if task == "count":
        assert res["count_error"] >= 0 and 0 <= res["obo"] <= 100


def test_severe_presets(tmp_path):
    """Each of the 8 settings carries its class count, task, metric, list files and Table 17's
    schedule."""
    expect = {"severe-ssv2": (174, "single", "top1", "train.csv"),
              "severe-gym99": (99, "single", "top1", "gym99_train.csv"),
              "severe-ucf1k": (101, "single", "top1", "train.csv"),
              "severe-gym1k": (99, "single", "top1", "gym99_train.csv"),
              "severe-fx": (11, "single", "mean_class_acc", "fx_s1_train.csv"),
              "severe-ub": (15, "single", "mean_class_acc", "ub_s1_train.csv"),
              "severe-ucfrc": (101, "count", "count_error", "ucfrep_train.csv"),
              "severe-charades": (157, "multi", "map", "charades_train.csv")}
    assert set(expect) == set(finetune.SEVERE)
    for name, (classes, task, metric, train_file) in expect.items():
        args = finetune.get_args(["--preset", name, "--data-root", "/data/x",
                                  "--out-dir", str(tmp_path)])
        assert (args.num_classes, args.task, args.metric) == (classes, task, metric), name
        assert args.train_list == os.path.join("/data/x", train_file)
        assert (args.epochs, args.batch_size, args.lr, args.layer_decay,
                args.drop_path) == (100, 16, 1e-3, 0.75, 0.1)
        assert args.label_smoothing == (0.1 if task == "single" else 0.0)
        assert args.train_samples == (1000 if name in ("severe-ucf1k", "severe-gym1k") else 0)
        assert args.results_file.endswith("results.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize("task", ["multi", "count"])
def test_severe_standins_learn(tmp_path, task):
    """Multi-label motion (two objects, each its own motion) beats the mAP of random scores;
    counting motion (out and back k = 1 or 2 times in 8 frames) beats the best constant count (1:
    error 0.25)."""
    res = finetune.main(LEARN + ["--task", task, "--motion-train", "1024", "--epochs", "8",
                                 "--out-dir", str(tmp_path)])
    if task == "multi":
        chance = 100 * evaluation.MotionClassDataset("val", 256, task="multi", img_size=32,
                                                     num_frames=8).targets().mean().item()
        assert res["map"] > chance + 8, (res, chance)              # measured 36.1 vs 23.8
    else:
        assert res["count_error"] < 0.15, res                      # measured 0.02


def test_kill_9_then_resume_is_bit_identical(tmp_path):
    """finetune.py: SIGKILL after step 5 (latest checkpoint at step 4), then --resume to step 8:
    the same weights as an uninterrupted run (mixup, cutmix, RandAug and drop path on)."""
    import signal
    args = SMALL + ["--mixup", "0.8", "--cutmix", "1.0", "--randaug-n", "2", "--drop-path", "0.1",
                    "--steps", "8", "--epochs", "4", "--eval-every", "100"]
    run(["finetune.py", *args, "--out-dir", str(tmp_path / "ref")])
    p = subprocess.Popen([sys.executable, "finetune.py", *args, "--out-dir", str(tmp_path / "k"),
                          "--ckpt-every", "2"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        if line.startswith("step 5/"):
            p.send_signal(signal.SIGKILL)
            break
    p.wait()
    assert p.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / "k" / "checkpoint-latest.pth", weights_only=True)["step"] == 4
    r = run(["finetune.py", *args, "--out-dir", str(tmp_path / "k"), "--resume"])
    assert "resumed" in r.stdout
    a = torch.load(tmp_path / "ref" / "checkpoint-latest.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "k" / "checkpoint-latest.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nonfinite_loss_stops_with_checkpoint_named(tmp_path, monkeypatch):
    """NaN losses never reach the weights: each such step is skipped, as in train.py, and after
    --max-nonfinite in a row the run stops naming the step; the message names the checkpoint."""
    monkeypatch.setattr(finetune, "loss_fn", lambda task, out, target: out.sum() * float("nan"))
    with pytest.raises(SystemExit, match="3 non-finite losses in a row at step 0"):
        finetune.main(SMALL + ["--out-dir", str(tmp_path / "ft")])


def test_step_flips_video_list_clips_before_randaugment(tmp_path, video_list, monkeypatch):
    """A video list's clips come unflipped with a flip flag (evaluation.VideoClipDataset): each
    micro-step flips them on the device (data.infuse) and hands the flipped clips to RandAugment
    (tests/test_augment_device.py: the pixels equal the worker path's)."""
    seen, infuse = [], data.infuse
    monkeypatch.setattr(data, "infuse", lambda b: seen.append(("flip", b["flip"].clone()))
                        or seen.append(("out", infuse(b))) or seen[-1][1])
    monkeypatch.setattr(finetune, "randaugment_batch",
                        lambda v, op, arg: seen.append(("randaug", v)) or v)
    (video_list.parent / "val.csv").write_text(video_list.read_text())
    finetune.main(["--dataset", "list", "--data-root", str(video_list.parent), "--num-classes", "3",
                   "--model", "tiny", "--img-size", "32", "--num-frames", "8", "--stride", "2",
                   "--batch-size", "6", "--epochs", "1", "--workers", "0", "--randaug-n", "2",
                   "--steps", "1", "--out-dir", str(tmp_path)])
    (_, flips), (_, out), (what, video) = seen[:3]
    assert what == "randaug" and video is out and flips.shape == (6,)
