"""The paper's numbers as a user gets them (issue 30): every hyperparameter of SPEC 5-6 (Tables 16,
17, 18) read back from the parsed args of each dataset preset and recipe; what the optimizer holds
after one real step of train.py and finetune.py; the lr schedule as an array in every strategy;
Eq. 2's loss against its definition; probabilities where multi-view testing averages them; every
RNG restored on resume.

Each test here was checked to fail on the bug it guards against (conftest.py says how)."""
import inspect
import random
from contextlib import nullcontext

import numpy as np
import pytest
import torch

import augment
import finetune
import probe

import runtime
import train
from conftest import TINY
from model import MODEL_SIZES, PretrainModel, VideoClassifier, mask_indices

# ============================================================================ the paper's values
# One row per number: (script, recipe, flag, the paper's value, where it is stated). A recipe is
# what a user types: the dataset preset (or --preset) of that script.

RECIPES = {
    ("train", "k400"): ["--dataset", "k400"],
    ("train", "ssv2"): ["--dataset", "ssv2"],
    ("train", "ablation"): ["--preset", "ablation"],
    **{("finetune", d): ["--dataset", d, "--data-root", "/nowhere"]
       for d in ("k400", "ssv2", "ucf101", "hmdb51", "gym99", "epic")},
    **{("probe", d): ["--dataset", d, "--data-root", "/nowhere"]
       for d in ("k400", "ssv2", "ucf101", "hmdb51", "gym99", "epic")},
}
GET_ARGS = {"train": train.get_args, "finetune": finetune.get_args, "probe": probe.get_args}

# the effective lr at another total batch than 256: the linear scaling rule (SPEC 5), read from the
# schedule train.py runs (train.lr_schedule), 100 steps per epoch
OTHER_BATCH = 64


def _train_schedule(argv):
    args = train.get_args(argv + ["--batch-size", str(OTHER_BATCH)])
    lrs, _ = train.lr_schedule(args, 100 * args.num_sample)   # steps per pass: 100 per epoch
    assert len(lrs) == args.epochs * 100
    return lrs


DERIVED = {
    # the peak of the schedule and its floor, at batch 64
    f"peak lr at batch {OTHER_BATCH}": lambda script, argv: float(_train_schedule(argv).max()),
    f"final lr at batch {OTHER_BATCH}": lambda script, argv: float(_train_schedule(argv)[-1]),
    # MultiScaleCrop's scales of the short side, as pretraining's crop gets them
    "multiscale crop scales": lambda script, argv: list(
        inspect.signature(augment.crop_and_flip).parameters["scales"].default),
}


def rows(script, recipes, source, **values):
    return [(script, r, k, v, source) for r in recipes for k, v in values.items()]


PRETRAIN = ("k400", "ssv2")
FT = ("k400", "ssv2", "ucf101", "hmdb51", "gym99", "epic")
PAPER = [
    # ---- pretraining (SPEC 5, Sec. 4.1, F.3, Table 18)
    *rows("train", PRETRAIN, "SPEC 5 / Table 18", num_frames=16, img_size=224, batch_size=256,
          lr=1.5e-4, min_lr=1e-5, warmup_epochs=40, weight_decay=0.05, betas=[0.9, 0.95],
          num_sample=2, strategy="progressive", stage2_schedule="restart", accum_iter=1,
          **{f"peak lr at batch {OTHER_BATCH}": 1.5e-4 * OTHER_BATCH / 256,
             f"final lr at batch {OTHER_BATCH}": 1e-5 * OTHER_BATCH / 256,
             "multiscale crop scales": [1, 0.875, 0.75, 0.66]}),
    *rows("train", PRETRAIN, "SPEC 1-4 (Sec. 3, 4.1, F.3)", model="base", patch_size=16,
          tubelet=2, mask_ratio=0.8, masking="trajectory", num_objects=2, object_size=[32, 128],
          angle_range=[-90, 90], scale_range=[0.5, 1.5], target="clip", teacher="ViT-B-16",
          norm_pix=True),
    *rows("train", ["k400"], "SPEC 5 / Table 18 (K400)", epochs=600, stage1_epochs=300,
          stride=4, flip=True),
    *rows("train", ["ssv2"], "SPEC 5 / Table 18 (SSv2)", epochs=800, stage1_epochs=400,
          stride=2, flip=False),
    # Table 4's base setting (SPEC 5, Sec. 4.3)
    *rows("train", ["ablation"], "SPEC 5 / Sec. 4.3 (Table 4 base)", model="small",
          mask_ratio=0.9, strategy="single", epochs=400, num_objects=2, masking="trajectory",
          target="clip", dataset="k400", batch_size=256, lr=1.5e-4, warmup_epochs=40),
    # ---- full finetuning (SPEC 6, Table 17; augmentation as VideoMAE)
    *rows("finetune", FT, "SPEC 6 / Table 17", lr=1e-3, weight_decay=0.05, betas=[0.9, 0.999],
          layer_decay=0.75, warmup_epochs=5, drop_path=0.1, label_smoothing=0.1, mixup=0.8,
          cutmix=1.0, randaug_m=9, randaug_mstd=0.5, head_init_scale=0.001, num_frames=16,
          img_size=224, accum_iter=1),
    *rows("finetune", FT, "SPEC 6 (VideoMAE's finetuning augmentation)", crop="rrc",
          reprob=0.25, remode="pixel", recount=1),
    # timm's rand-m9-mstd0.5-inc1 applies n=2 ops (the paper names (9, 0.5) only)
    *rows("finetune", FT, "SPEC 6 (timm's RandAugment default n)", randaug_n=2),
    # SPEC is silent on the finetuning floor; VideoMAE's
    *rows("finetune", FT, "VideoMAE finetuning (SPEC silent)", min_lr=1e-6),
    *rows("finetune", ["k400"], "SPEC 6 / Table 17 (K400)", epochs=100, batch_size=16,
          flip=True, sampling="dense", test_clips=5, test_crops=3, num_classes=400),
    # K400's clips: 16 frames at stride 4 in evaluation as in pretraining (VideoMAE's 16x4)
    *rows("finetune", ["k400"], "SPEC 5 (K400 16x4) / VideoMAE evaluation", stride=4),
    *rows("finetune", ["ssv2"], "SPEC 6 / Table 17 (SSv2)", epochs=40, batch_size=32,
          flip=False, sampling="segment", test_clips=2, test_crops=3, num_classes=174),
    # the datasets Table 17 does not list take K400's schedule; flips for all but SSv2
    *rows("finetune", ["ucf101", "hmdb51", "gym99", "epic"], "SPEC 6 (flip, not SSv2)",
          flip=True),
    *rows("finetune", ["ucf101"], "SPEC 6 / Table 15", num_classes=101),
    *rows("finetune", ["hmdb51"], "SPEC 6 / Table 15", num_classes=51),
    *rows("finetune", ["gym99"], "SPEC 6 / Table 15", num_classes=99),
    *rows("finetune", ["epic"], "SPEC 6 / Table 15 (EPIC-100 verbs)", num_classes=97),
    # ---- linear probe (SPEC 6, Table 16)
    *rows("probe", FT, "SPEC 6 / Table 16", head="linear", lr=1e-3, weight_decay=0.05,
          betas=[0.9, 0.999], batch_size=128, num_frames=16, img_size=224, warmup_epochs=0,
          clip_grad=None),
    *rows("probe", ["k400"], "SPEC 6 / Table 16 (K400)", epochs=30, flip=True),
    *rows("probe", ["ucf101"], "SPEC 6 / Table 16 (UCF)", epochs=100, flip=True),
    *rows("probe", ["hmdb51"], "SPEC 6 / Table 16 (HMDB)", epochs=100, flip=True),
    *rows("probe", ["ssv2"], "SPEC 6 / Table 16 (SSv2)", epochs=50, flip=False),
    *rows("probe", ["gym99"], "SPEC 6 / Table 16 (GYM)", epochs=100, flip=True),
    *rows("probe", ["epic"], "SPEC 6 / Table 16 (EPIC)", epochs=100, flip=True),
]


@pytest.mark.parametrize("script,recipe,flag,paper,source", PAPER,
                         ids=[f"{s}-{r}-{k.replace(' ', '_')}" for s, r, k, _, _ in PAPER])
def test_paper_value(script, recipe, flag, paper, source):
    """A changed default, preset or derived value fails with the paper's number beside it."""
    argv = RECIPES[(script, recipe)]
    if flag in DERIVED:
        got = DERIVED[flag](script, argv)
    else:
        got = getattr(GET_ARGS[script](argv), flag)
    if isinstance(got, tuple):
        got = list(got)
    same = (got == paper if paper is None or isinstance(paper, (str, bool))
            else not isinstance(got, (str, bool)) and got == pytest.approx(paper, rel=1e-6))
    typed = " ".join(argv)
    assert same, (f"{script}.py {typed}: {flag} = {got!r}, the paper's value is {paper!r} "
                  f"({source})")


def test_every_recipe_has_its_rows():
    """The table covers each recipe with the numbers SPEC 5-6 give for it."""
    have = {}
    for s, r, k, _, _ in PAPER:
        have.setdefault((s, r), set()).add(k)
    assert set(have) == set(RECIPES)
    common = {"lr", "weight_decay", "betas", "warmup_epochs", "num_frames", "flip"}
    for (s, r), keys in have.items():
        if (s, r) != ("train", "ablation"):
            assert common <= keys, (s, r, common - keys)
        # Table 17 gives no schedule for the finetuning sets beyond K400 and SSv2
        if s != "finetune" or r in ("k400", "ssv2"):
            assert {"epochs", "batch_size"} <= keys, (s, r)
    ft = {"layer_decay", "drop_path", "label_smoothing", "mixup", "cutmix", "randaug_m",
          "randaug_mstd", "reprob", "min_lr", "num_classes"}
    assert all(ft <= have[("finetune", d)] for d in FT)
    assert {"test_clips", "test_crops", "stride", "sampling"} <= have[("finetune", "k400")]
    assert {"stride", "min_lr", "stage1_epochs"} <= have[("train", "ssv2")]


# ===================================================================== the optimizer after a step


def _expect_no_decay(name):
    """SPEC 5 / Table 17, written out here independently of runtime.no_weight_decay: no weight
    decay on biases (q_bias / v_bias included), norms, the mask token, position / class tokens."""
    leaf = name.split(".")[-1]
    return (leaf in ("bias", "q_bias", "v_bias", "mask_token", "pos_embed", "cls_token")
            or "norm" in name.split(".")[-2 if "." in name else -1])


def _group_shapes(ckpt):
    """The checkpoint's optimizer groups (their saved settings) and, per group, the shapes of its
    parameters in order, from the AdamW moments (the only thing the checkpoint ties to them)."""
    opt = ckpt["optimizer"]
    return [(g, [tuple(opt["state"][i]["exp_avg"].shape) for i in g["params"]])
            for g in opt["param_groups"]]


def test_pretraining_optimizer_after_one_step(tmp_path):
    """train.py's checkpoint after one real step: one group with weight decay 0.05 holding exactly
    the weight matrices, one with none holding biases, norms and the mask token; AdamW betas
    (0.9, 0.95), eps 1e-8; lr = 1.5e-4 x batch / 256 (no warm-up here, so step 0 is at the peak)."""
    out = tmp_path / "pre"
    train.main([*TINY, "--warmup-epochs", "0", "--steps", "1", "--out-dir", str(out)])
    ckpt = torch.load(out / "checkpoint-latest.pth", weights_only=True)
    model = PretrainModel(img_size=32, num_frames=4, out_dim=1536, **MODEL_SIZES["tiny"])
    named = list(model.named_parameters())
    assert not [n for n, _ in named if n.endswith(("pos_embed", "cls_token"))], \
        "SPEC 1: the position table is fixed, not a parameter"
    decay = [tuple(p.shape) for n, p in named if not _expect_no_decay(n)]
    no_decay = [tuple(p.shape) for n, p in named if _expect_no_decay(n)]
    assert "mask_token" in [n for n, _ in named if _expect_no_decay(n)]
    groups = _group_shapes(ckpt)
    by_wd = {g["weight_decay"]: shapes for g, shapes in groups}
    assert sorted(by_wd) == [0.0, 0.05], (
        f"weight decay per group {[g['weight_decay'] for g, _ in groups]}: SPEC 5 wants 0.05 on "
        f"the weight matrices and none on biases, norms and the mask token")
    assert by_wd[0.05] == decay, "the weight-decay group must hold the weight matrices only"
    assert by_wd[0.0] == no_decay, "biases, norms and the mask token must not decay (SPEC 5)"
    peak = 1.5e-4 * 8 / 256                                     # TINY's total batch is 8
    for g, _ in groups:
        assert tuple(g["betas"]) == (0.9, 0.95) and g["eps"] == 1e-8, g
        assert g["lr"] == pytest.approx(peak, rel=1e-9), \
            f"lr {g['lr']:.4g} at the peak, SPEC 5: 1.5e-4 x batch 8 / 256 = {peak:.4g}"
        assert g.get("lr_scale", 1.0) == 1.0


def test_finetuning_optimizer_after_one_step(tmp_path):
    """finetune.py's checkpoint after one real step: one group per (layer, decay or not), each
    holding exactly its layer's parameters; lr_scale = 0.75^(L + 1 - layer) (Table 17's layer-wise
    decay: patch_embed layer 0, block i layer i + 1, fc_norm / head layer L + 1); lr = base x
    batch / 256 x lr_scale; no weight decay on biases and norms; betas (0.9, 0.999)."""
    out = tmp_path / "ft"
    batch, base = 16, 4e-3                              # the tiny preset's lr, batch 16 here
    finetune.main(["--preset", "tiny", "--img-size", "32", "--num-frames", "8", "--motion-train",
                   "32", "--motion-val", "8", "--batch-size", str(batch), "--epochs", "2",
                   "--warmup-epochs", "0", "--workers", "0", "--steps", "1",
                   "--out-dir", str(out)])
    ckpt = torch.load(out / "checkpoint-latest.pth", weights_only=True)
    assert ckpt["args"]["layer_decay"] == 0.75 and ckpt["args"]["weight_decay"] == 0.05
    enc = {k: v for k, v in MODEL_SIZES["tiny"].items() if not k.startswith("decoder")}
    model = VideoClassifier(img_size=32, patch_size=8, num_frames=8, tubelet_size=2,
                            num_classes=8, **enc)
    depth = len(model.blocks)

    def layer(name):
        if name.startswith("patch_embed"):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return depth + 1

    expect = {}
    for n, p in model.named_parameters():
        expect.setdefault((layer(n), _expect_no_decay(n)), []).append(tuple(p.shape))
    groups = _group_shapes(ckpt)
    got = {}
    for g, shapes in groups:
        key = (g["layer"], g["weight_decay"] == 0.0)
        assert key not in got, f"two groups for layer {key[0]}"
        got[key] = shapes
        assert g["weight_decay"] in (0.0, 0.05), f"weight decay {g['weight_decay']}, Table 17: 0.05"
        scale = 0.75 ** (depth + 1 - g["layer"])
        assert g["lr_scale"] == pytest.approx(scale), \
            f"layer {g['layer']}: lr scale {g['lr_scale']:.4g}, Table 17: 0.75^(L + 1 - layer)"
        want = base * batch / 256 * scale
        assert g["lr"] == pytest.approx(want, rel=1e-9), (
            f"layer {g['layer']}: lr {g['lr']:.4g}, Table 17: lr x batch / 256 x lr scale = "
            f"{base:g} x {batch} / 256 x {scale:.4g} = {want:.4g}")
        assert tuple(g["betas"]) == (0.9, 0.999) and g["eps"] == 1e-8, g
    assert got == expect, "groups by (layer, no decay) do not hold the expected parameters"


# ================================================================================== the schedule


def _expected_schedule(peak, floor, total, warmup):
    """Linear warm-up from 0 (step 0) to the peak, reached at its last step `warmup - 1` (the
    reference's np.linspace, endpoint included); then a half-cosine from the peak to the floor
    over the remaining steps, written from its definition."""
    k = np.arange(total, dtype=np.float64)
    t = (k - warmup) / (total - warmup)
    return np.where(k < warmup, peak * k / max(warmup - 1, 1),
                    floor + 0.5 * (peak - floor) * (1 + np.cos(np.pi * t)))


STRATEGIES = [("progressive", "restart"), ("progressive", "continue"), ("single", "restart"),
              ("mixed", "restart"), ("none", "restart")]


@pytest.mark.parametrize("strategy,stage2", STRATEGIES,
                         ids=[f"{s}-{c}" if s == "progressive" else s for s, c in STRATEGIES])
def test_schedule_as_an_array(strategy, stage2):
    """train.py's per-step lr at batch 64 (not 256): warm-up rising linearly from 0 to
    1.5e-4 x 64 / 256 over 40 epochs, cosine to 1e-5 x 64 / 256; progressive "restart" does both
    again in stage 2 (the paper's second job), every other strategy runs one schedule."""
    batch, per_epoch = 64, 3                       # 3 steps per epoch: 120 warm-up steps
    args = train.get_args(["--dataset", "k400", "--strategy", strategy, "--stage2-schedule",
                           stage2, "--batch-size", str(batch)])
    total = args.epochs * per_epoch                # 600 epochs: 1800 steps
    stage1 = int(args.stage1_epochs * per_epoch)   # 300 epochs: 900 steps
    lrs, stage1_at = train.lr_schedule(args, per_epoch * args.num_sample)   # steps per pass
    assert stage1_at == (stage1 if strategy == "progressive" else total)
    peak, floor, warm = 1.5e-4 * batch / 256, 1e-5 * batch / 256, 40 * per_epoch
    assert len(lrs) == total
    if strategy == "progressive" and stage2 == "restart":
        want = np.concatenate([_expected_schedule(peak, floor, stage1, warm),
                               _expected_schedule(peak, floor, total - stage1, warm)])
        pins = {0: 0.0, warm - 1: peak, warm: peak, stage1: 0.0,
                stage1 + warm - 1: peak, stage1 + warm: peak,
                (warm + stage1) // 2: (peak + floor) / 2}
    else:
        want = _expected_schedule(peak, floor, total, warm)
        pins = {0: 0.0, warm - 1: peak, warm: peak, (warm + total) // 2: (peak + floor) / 2}
    for step, lr in pins.items():
        assert lrs[step] == pytest.approx(lr, rel=1e-9, abs=1e-15), \
            f"{strategy}/{stage2}: lr at step {step} = {lrs[step]:.4g}, expected {lr:.4g}"
    assert lrs[-1] == pytest.approx(floor, rel=1e-4), (lrs[-1], floor)
    np.testing.assert_allclose(lrs, want, rtol=1e-9, atol=1e-15)


# ======================================================================================= the loss


class StubModel(torch.nn.Module):
    """Predicts a fixed, known tensor for the masked tokens (B, Nm, Dt), whatever the input; the
    loss is PretrainModel's own (forward_loss), as the step calls it."""

    def __init__(self, pred):
        super().__init__()
        self.pred = torch.nn.Parameter(pred.clone())

    def forward(self, video, idx, targets):
        vis_idx, mask_idx = idx
        assert self.pred.shape[:2] == mask_idx.shape
        return PretrainModel.forward_loss(self, self.pred + 0 * video.sum(), targets, mask_idx)


def test_step_loss_is_mse_over_masked_tokens_only():
    """Eq. 2: mean over the masked tokens and channels of (prediction - target)^2, nothing else:
    the step's loss and the gradient reaching the prediction both follow that definition."""
    g = torch.Generator().manual_seed(0)
    B, N, D, Nm = 2, 8, 5, 6
    mask = torch.zeros(B, N, dtype=torch.bool)
    mask[0, [0, 1, 2, 4, 5, 7]] = True
    mask[1, [1, 2, 3, 5, 6, 7]] = True
    vis_idx, mask_idx = mask_indices(mask)
    targets = torch.randn(B, N, D, generator=g)
    pred = torch.randn(B, Nm, D, generator=g)
    batch = {"video": torch.zeros(B, 3, 4, 8, 8, dtype=torch.uint8), "visible_idx": vis_idx,
             "masked_idx": mask_idx}
    model = StubModel(pred)
    sums = runtime.train_step(model, lambda video: targets, [batch], nullcontext, None, 1)
    # the definition, token by token
    diffs = [(pred[b, j] - targets[b, t]) for b in range(B)
             for j, t in enumerate(torch.nonzero(mask[b]).flatten().tolist())]
    want = torch.stack(diffs).pow(2).mean()
    assert sums[0].item() == pytest.approx(want.item(), rel=1e-6), \
        f"loss {sums[0].item():.6f}, Eq. 2 (masked tokens only) {want.item():.6f}"
    all_tokens = ((torch.cat([pred, targets[:, :N - Nm]], 1) - targets) ** 2).mean()
    assert not np.isclose(sums[0].item(), all_tokens.item())        # the test tells them apart
    tgt = torch.stack([targets[b, mask[b]] for b in range(B)])
    torch.testing.assert_close(model.pred.grad, 2 * (pred - tgt) / pred.numel())
    # the floors logged beside it: predict zero, predict the mean of the visible tokens
    vis_mean = torch.stack([targets[b, ~mask[b]].mean(0) for b in range(B)])[:, None]
    assert sums[1].item() == pytest.approx(tgt.pow(2).mean().item(), rel=1e-6)
    assert sums[2].item() == pytest.approx((tgt - vis_mean).pow(2).mean().item(), rel=1e-6)


# ===================================================================== probabilities over the views


def _spy_views(monkeypatch, module):
    """Wrap module.per_video (multi-view testing): record each call's per-view outputs (one row per
    view, before the average) under the call's label. -> {label: [tensor, ...]}."""
    real, seen = module.per_video, {}

    def spy(fn, *a, **kw):
        what = kw.get("what", a[8] if len(a) > 8 else "views")

        def recorded(video):
            out = fn(video)
            seen.setdefault(what, []).append(out.detach().float().cpu())
            return out
        return real(recorded, *a, **kw)
    monkeypatch.setattr(module, "per_video", spy)
    return seen


def _assert_probabilities(rows, what):
    assert (rows >= 0).all(), f"{what}: negative scores: logits, not probabilities"
    torch.testing.assert_close(rows.sum(-1), torch.ones(len(rows)), atol=1e-5, rtol=0,
                               msg=f"{what}: scores do not sum to 1 (logits, not probabilities)")


def _multiview_list(video_list):
    (video_list.parent / "val.csv").write_text(video_list.read_text())
    return ["--dataset", "list", "--data-root", str(video_list.parent), "--num-classes", "3",
            "--model", "tiny", "--img-size", "32", "--num-frames", "8", "--stride", "2",
            "--test-clips", "2", "--test-crops", "3", "--workers", "0"]


def test_finetune_multiview_averages_probabilities(tmp_path, video_list, monkeypatch):
    """Table 17's test: the softmax of each of the 2 x 3 views, then their average (SPEC 6)."""
    seen = _spy_views(monkeypatch, finetune)
    finetune.main([*_multiview_list(video_list), "--eval-only", "--out-dir", str(tmp_path / "ft")])
    rows = torch.cat(seen["test"])
    assert rows.shape == (6 * 2 * 3, 3)                           # every view of every video
    _assert_probabilities(rows, "finetune.py, per view")


@pytest.mark.parametrize("head", ["linear", "attentive"])
def test_probe_scores_are_probabilities(tmp_path, video_list, monkeypatch, head):
    """The probe's reported scores are softmax probabilities; the attentive head's views are
    averaged as probabilities (V-JEPA), each view's summing to 1. (The linear probe averages the
    views' features, for a linear head the views' logits, by design: see probe.py's docstring.)"""
    seen = _spy_views(monkeypatch, probe)
    final = []
    real = probe.compute_metrics
    monkeypatch.setattr(probe, "compute_metrics",
                        lambda task, scores, *a: final.append(scores.cpu()) or real(task, scores,
                                                                                    *a))
    probe.main([*_multiview_list(video_list), "--head", head, "--epochs", "1", "--batch-size",
                "4", "--feature-batch", "4", "--out-dir", str(tmp_path / head)])
    if head == "attentive":
        rows = torch.cat(seen["val"])
        assert rows.shape == (6 * 2 * 3, 3)
        _assert_probabilities(rows, "probe.py --head attentive, per view")
    assert final and final[-1].shape == (6, 3)
    _assert_probabilities(final[-1], f"probe.py --head {head}, reported scores")


# ========================================================================== every RNG on resume


def _global_rngs():
    return np.random.get_state(), random.getstate()


def _same_global_rngs(a, b):
    (na, pa), (nb, pb) = a, b
    return (na[0] == nb[0] and np.array_equal(na[1], nb[1]) and na[2:] == nb[2:] and pa == pb)


def _spy_resume(monkeypatch, module, record):
    """Wrap module.resume: the RNG states just before and just after it runs."""
    real = module.resume

    def spy(*a, **kw):
        record["before"] = runtime.rng_state()
        out = real(*a, **kw)
        record["after"] = runtime.rng_state()
        return out
    monkeypatch.setattr(module, "resume", spy)


def _assert_restored(record, saved):
    assert set(saved) >= ({"torch", "cuda"} if torch.cuda.is_available() else {"torch"}), \
        f"the checkpoint's RNG states: {sorted(saved)}"
    for k in saved:
        # the resumed process had drawn from its own seed: restoring must change the state
        assert not torch.equal(record["before"][k], saved[k]), f"{k}: nothing to restore?"
        assert torch.equal(record["after"][k], saved[k]), f"--resume did not restore the {k} RNG"


@pytest.mark.parametrize("script", ["train", "finetune"])
def test_resume_restores_every_rng(tmp_path, monkeypatch, script):
    """--resume sets torch's RNG (and CUDA's, when present) to the checkpoint's states: asserted
    on the states, right after the resume. numpy's and Python's global RNGs have no state to
    restore: every random draw of the scripts comes from explicitly seeded generators, so a run
    must leave both untouched (a change that draws from them must save them in runtime.rng_state
    too)."""
    module = {"train": train, "finetune": finetune}[script]
    args = ([*TINY, "--strategy", "single"] if script == "train" else
            ["--preset", "tiny", "--img-size", "32", "--num-frames", "8", "--motion-train", "32",
             "--motion-val", "8", "--batch-size", "16", "--epochs", "2", "--warmup-epochs", "1",
             "--workers", "0"])
    args += ["--out-dir", str(tmp_path / script)]
    np.random.seed(1234)
    random.seed(1234)
    globals_before = _global_rngs()
    module.main([*args, "--steps", "2"])
    assert _same_global_rngs(globals_before, _global_rngs()), \
        f"{script}.py drew from numpy's or Python's global RNG; runtime.rng_state does not save it"
    saved = torch.load(tmp_path / script / "checkpoint-latest.pth", weights_only=True)["rng"]
    record = {}
    _spy_resume(monkeypatch, module, record)
    module.main([*args, "--steps", "3", "--resume"])
    _assert_restored(record, saved)
    assert _same_global_rngs(globals_before, _global_rngs())


def test_rng_state_round_trip():
    """runtime.set_rng_state(runtime.rng_state()) puts back every generator the checkpoint holds,
    after each has moved on."""
    torch.manual_seed(5)
    saved = runtime.rng_state()
    want = torch.rand(3)
    if torch.cuda.is_available():
        want_cuda = torch.rand(3, device="cuda")
    torch.rand(7)
    runtime.set_rng_state(saved)
    assert all(torch.equal(runtime.rng_state()[k], saved[k]) for k in saved)
    assert torch.equal(torch.rand(3), want)
    if torch.cuda.is_available():
        assert torch.equal(torch.rand(3, device="cuda"), want_cuda)
