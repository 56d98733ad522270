"""Full finetuning of a SMILE encoder (paper Table 17) and the SEVERE benchmark (Table 6 / 14).

    python finetune.py --preset tiny                                  # CPU demo: synthetic motion, minutes
    python finetune.py --preset tiny --checkpoint out/tiny/checkpoint-latest.pth
    torchrun --nproc_per_node=8 finetune.py --dataset k400 --data-root /data/k400 --checkpoint smile_k400.pth
    python finetune.py --preset severe-fx --data-root /data/finegym --checkpoint smile_k400.pth
    python finetune.py --severe-table out/severe/results.jsonl        # Table 6's columns and their mean
    python finetune.py -h                                             # every flag, with the paper's values

Recipe (Table 17): AdamW lr 1e-3 x batch/256, wd 0.05 (none on biases and 1-D params), betas (0.9, 0.999),
layer-wise lr decay 0.75, cosine with 5 warm-up epochs, drop path 0.1, RandAug (9, 0.5) in timm's convention,
mixup 0.8, cutmix 1.0, label smoothing 0.1, head init scale 0.001; as VideoMAE (SPEC 6), a random resized crop
and random erasing (p 0.25). Test: softmax averaged over temporal clips x
spatial crops (5x3 K400, 2x3 SSv2 with TSN-style segments). Tasks beside single-label classification
(SEVERE): multi-label (Charades: sigmoid + BCE, mAP over classes) and repetition counting (UCFRep: one
regression output on the pooled features, trained with MSE on standardised counts; metric UCFRep's "MAE",
the absolute count error divided by the true count, lower is better; off-by-one accuracy beside it).

The helpers under "shared evaluation helpers" (dataset presets, checkpoint reading, multi-view testing,
metrics) are used by probe.py as well. Same structure as train.py: args, dist, data, model, optimizer +
schedule, resume, loop, test, teardown. --resume continues bit-identically: the data stream is a pure
function of (seed, epoch, index), and mixup, cutmix and drop path draw from (seed, step, rank).
"""
import argparse
import json
import os
import time
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from train import (Log, all_reduce, amp_setup, apply_presets, check_out_dir, cosine_schedule, fail, fmt_time,
                   resume_from, rng_state, save_checkpoint, set_lr, setup_dist, teardown)

# ============================================================================= presets

# Datasets (Table 15, SPEC 6): list files <data-root>/<splits>; `motion` is the embedded synthetic set.
# sampling: "dense" = T frames at a stride; "segment" = TSN-style, one frame per T equal segments (SSv2).
# flip: SSv2 has left/right classes, and so does `motion`. Test views = clips x crops.
DATASETS = {
    "k400": dict(num_classes=400, sampling="dense", stride=4, flip=True, test_clips=5, test_crops=3),
    "ssv2": dict(num_classes=174, sampling="segment", flip=False, test_clips=2, test_crops=3),
    "ucf101": dict(num_classes=101, sampling="dense", stride=4, flip=True, test_clips=5, test_crops=3),
    "hmdb51": dict(num_classes=51, sampling="dense", stride=4, flip=True, test_clips=5, test_crops=3),
    "gym99": dict(num_classes=99, sampling="segment", flip=True, test_clips=2, test_crops=3),
    "epic": dict(num_classes=97, sampling="segment", flip=True, test_clips=2, test_crops=3),   # verbs
    "list": dict(),
    "motion": dict(num_classes=8, flip=False, test_clips=1, test_crops=1, img_size=64, num_frames=16),
}
# Finetuning schedules (Table 17); the datasets it does not list take K400's (ours).
SCHEDULES = {"k400": dict(epochs=100, batch_size=16), "ssv2": dict(epochs=40, batch_size=32)}

# SEVERE (Table 6 / 14): 8 settings, each finetuned with Table 17's SEVERE schedule (AdamW 1e-3, layer decay
# 0.75, batch 16, 100 epochs, RandAug, mixup/cutmix, drop path 0.1; label smoothing single-label only).
# Lists, one folder per source dataset given as --data-root:
#   ssv2: train.csv val.csv | gym99: gym99_train.csv gym99_val.csv | ucf1k: <ucf101>/train.csv val.csv,
#   1,000 stratified clips | gym1k: <finegym>/gym99_train.csv, 1,000 clips | fx: fx_s1_train.csv
#   fx_s1_val.csv | ub: ub_s1_train.csv ub_s1_val.csv | ucfrc: ucfrep_train.csv ucfrep_val.csv (label = count)
#   | charades: charades_train.csv charades_val.csv (label = comma-separated class ids).
SEVERE_COMMON = dict(epochs=100, batch_size=16, lr=1e-3, layer_decay=0.75, drop_path=0.1)
SEVERE = {
    "severe-ssv2": dict(dataset="ssv2", metric="top1"),
    "severe-gym99": dict(dataset="gym99", metric="top1", splits=["gym99_train.csv", "gym99_val.csv"]),
    "severe-ucf1k": dict(dataset="ucf101", metric="top1", train_samples=1000),
    "severe-gym1k": dict(dataset="gym99", metric="top1", train_samples=1000, splits=["gym99_train.csv", "gym99_val.csv"]),
    "severe-fx": dict(dataset="gym99", num_classes=11, metric="mean_class_acc", splits=["fx_s1_train.csv", "fx_s1_val.csv"]),
    "severe-ub": dict(dataset="gym99", num_classes=15, metric="mean_class_acc", splits=["ub_s1_train.csv", "ub_s1_val.csv"]),
    # counting needs the whole video in the clip: segment sampling; no mixup or smoothing for a count
    "severe-ucfrc": dict(dataset="ucf101", task="count", metric="count_error", sampling="segment", mixup=0.0,
                         cutmix=0.0, label_smoothing=0.0, test_clips=1, splits=["ucfrep_train.csv", "ucfrep_val.csv"]),
    "severe-charades": dict(dataset="list", task="multi", num_classes=157, metric="map", sampling="segment",
                            label_smoothing=0.0, test_clips=2, test_crops=3,
                            splits=["charades_train.csv", "charades_val.csv"]),
}
SEVERE_COLUMNS = [("severe-ssv2", "SSv2"), ("severe-gym99", "Gym99"), ("severe-ucf1k", "UCF (10^3)"),
                  ("severe-gym1k", "GYM (10^3)"), ("severe-fx", "FX-S1"), ("severe-ub", "UB-S1"),
                  ("severe-ucfrc", "UCF-RC"), ("severe-charades", "Charades")]
# --preset tiny: the 2-core CPU demo on `motion`, on the grid of train.py's tiny pretraining (64 px, 16 frames,
# 2x16x16). 20 epochs of 512 clips, ~2.5 min on 2 cores (docs/table7.py runs it for its table). A higher lr
# and no mixup / cutmix / RandAug / erasing / drop path / crop (motion clips as rendered, the demo's numbers
# unchanged): from scratch at this size the paper's recipe needs far more steps.
PRESETS = {
    "tiny": dict(dataset="motion", model="tiny", patch_size=16, tubelet=2, img_size=64, num_frames=16,
                 motion_train=512, motion_val=256, epochs=20, warmup_epochs=1, batch_size=32, lr=4e-3,
                 layer_decay=0.75, mixup=0.0, cutmix=0.0, randaug_n=0, reprob=0.0, crop="none", drop_path=0.0,
                 workers=1, log_every=8, out_dir="out/finetune-tiny"),
    **{name: {**SEVERE_COMMON, **p, "out_dir": f"out/severe/{name[7:]}", "results_file": "out/severe/results.jsonl"}
       for name, p in SEVERE.items()},
}

# ============================================================================= shared evaluation helpers


def add_data_args(a):
    """Data and model flags shared by finetune.py and probe.py."""
    a("--dataset", default="motion", choices=sorted(DATASETS), help="k400/ssv2/ucf101/hmdb51/gym99/epic read "
      "<data-root>/train.csv and val.csv; list reads --train-list/--val-list; motion is synthetic (no files)")
    a("--task", default="single", choices=["single", "multi", "count"], help="single-label, multi-label "
      "(Charades; list labels '3,17,42') or repetition counting (UCFRep; label = the count)")
    a("--data-root", default="", help="folder that list paths are relative to")
    a("--splits", nargs=2, default=["train.csv", "val.csv"], help="list file names under --data-root")
    a("--train-list", default=None, help="'<path> <label>' list (default <data-root>/<first of --splits>)")
    a("--val-list", default=None, help="(default <data-root>/<second of --splits>)")
    a("--num-classes", type=int, default=None, help="from the dataset preset; required for --dataset list")
    a("--train-samples", type=int, default=0, help="low-shot: a seeded class-stratified subset of this many "
      "training clips (SEVERE UCF/GYM 10^3: 1000); 0 = all")
    a("--motion-train", type=int, default=512, help="motion: training clips")
    a("--motion-val", type=int, default=256, help="motion: validation clips")
    a("--motion-backgrounds", nargs="+", default=["black", "image"], choices=["black", "image", "noise"],
      help="motion: backgrounds drawn from (noise makes it far harder for a small model from scratch)")
    a("--num-frames", type=int, default=16, help="T (Sec. 4.1: 16)")
    a("--img-size", type=int, default=224)
    a("--sampling", default="dense", choices=["dense", "segment"], help="dense: T frames at --stride; segment: "
      "TSN-style, one frame per segment (SSv2)")
    a("--stride", type=int, default=4, help="dense sampling: frames between samples")
    a("--flip", action=argparse.BooleanOptionalAction, default=True, help="horizontal flip (not for SSv2 / motion)")
    a("--test-clips", type=int, default=5, help="temporal views at test (K400 5, SSv2 2)")
    a("--test-crops", type=int, default=3, help="spatial views at test (3)")
    a("--workers", type=int, default=8, help="data loader processes per rank")
    a("--checkpoint", default=None, help="train.py checkpoint or a released VideoMAE-family one; none = random init")
    a("--model", default=None, choices=["tiny", "small", "base"], help="ViT size (default: the checkpoint's, else base)")
    a("--patch-size", type=int, default=None, help="default: the checkpoint's, else 16")
    a("--tubelet", type=int, default=None, help="default: the checkpoint's, else 2")
    a("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"], help="auto: bf16 on GPUs that have it, fp32 on CPU")
    a("--seed", type=int, default=0)
    a("--device", default=None, help="cpu / cuda (default: cuda when available)")


def finish_data_args(args):
    """Checks and derived paths after parsing; reads --checkpoint once (its args fill the model shape)."""
    if args.num_classes is None:
        args.num_classes = DATASETS[args.dataset].get("num_classes")
        if args.num_classes is None and args.task != "count":
            fail("--dataset list needs --num-classes")
    if args.dataset != "motion":
        args.train_list = args.train_list or os.path.join(args.data_root, args.splits[0])
        args.val_list = args.val_list or os.path.join(args.data_root, args.splits[1])
    state, ckpt_args = None, {}
    if args.checkpoint:
        if not os.path.isfile(args.checkpoint):
            fail(f"--checkpoint {args.checkpoint} does not exist")
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        ckpt_args = (state.get("args") or {}) if isinstance(state, dict) else {}
    # a train.py (or finetune.py) checkpoint says what it is; flags still win
    for key, fallback in (("model", "base"), ("patch_size", 16), ("tubelet", 2)):
        if getattr(args, key) is None:
            setattr(args, key, ckpt_args.get(key, fallback))
    if args.num_frames % args.tubelet or args.img_size % args.patch_size:
        fail(f"{args.num_frames} frames x {args.img_size} px do not split into {args.tubelet} x "
                     f"{args.patch_size} x {args.patch_size} tubelets")
    return state


def build_datasets(args, augment=None, train_mode="train", crop=None):
    """-> (train set, validation set in test mode). train_mode "test": one centre view per training video
    (probe.py's cached features). crop: the training set's crop keywords (finetune.py's --crop*)."""
    crop = crop or {}
    import data
    if args.dataset == "motion":
        kw = dict(task=args.task, num_frames=args.num_frames, img_size=args.img_size, seed=args.seed,
                  max_count=min(4, args.num_frames // 4), backgrounds=tuple(args.motion_backgrounds))
        return (data.MotionClassDataset("train", args.motion_train, mode=train_mode, augment=augment, **crop, **kw),
                data.MotionClassDataset("val", args.motion_val, mode="test", **kw))
    classes = None if args.task == "count" else args.num_classes
    train_items = data.read_list(args.train_list, args.data_root or None, classes, multi_label=args.task == "multi")
    val_items = data.read_list(args.val_list, args.data_root or None, classes, multi_label=args.task == "multi")
    if args.train_samples:
        train_items = data.stratified_subset(train_items, args.train_samples, args.seed)
    kw = dict(task=args.task, num_classes=args.num_classes, num_frames=args.num_frames, stride=args.stride,
              sampling=args.sampling, img_size=args.img_size, seed=args.seed)
    return (data.VideoClipDataset(train_items, mode=train_mode, flip=args.flip, augment=augment, **crop, **kw),
            data.VideoClipDataset(val_items, mode="test", num_clips=args.test_clips, num_crops=args.test_crops, **kw))


def build_classifier(args, num_outputs, state=None, verbose=True, **kw):
    """VideoClassifier for the evaluation grid; loads the encoder (position table rebuilt for the grid)."""
    from model import MODEL_SIZES, VideoClassifier, load_encoder
    model = VideoClassifier(img_size=args.img_size, patch_size=args.patch_size, num_frames=args.num_frames,
                            tubelet_size=args.tubelet, num_classes=num_outputs, **MODEL_SIZES[args.model], **kw)
    if state is not None:
        load_encoder(model, state, verbose=verbose)
    return model


@torch.no_grad()
def per_video(fn, dataset, out_dim, batch_size, workers, rank, world, device, log=None, what="views"):
    """Multi-view testing: fn(video (B*V, C, T, H, W)) -> (B*V, out_dim), averaged over all views of each
    video (temporal clips = items, spatial crops = V per item), over all ranks (rank r runs items r,
    r + world, ...; sums and counts are all-reduced). -> (num_videos, out_dim) on every rank."""
    import data
    shard = torch.utils.data.Subset(dataset, range(rank, len(dataset), world))
    loader = torch.utils.data.DataLoader(shard, batch_size=batch_size, num_workers=workers, collate_fn=data.eval_collate,
                                         worker_init_fn=data.worker_init)
    n = dataset.targets().shape[0]
    sums, counts = torch.zeros(n, out_dim, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    t0, done = time.time(), 0
    for i, batch in enumerate(loader):
        video = batch["video"]                                       # (B, V, C, T, H, W)
        B, V = video.shape[:2]
        out = fn(video.flatten(0, 1).to(device, non_blocking=True)).float().cpu().view(B, V, -1)
        ids = batch["video_id"]
        sums.index_add_(0, ids, out.sum(1).double())
        counts.index_add_(0, ids, torch.full((B,), float(V), dtype=torch.float64))
        done += B * V
        if log and (i + 1) % 20 == 0:
            rate = done / (time.time() - t0)
            log({"eval_views": done}, f"  {what}: {done * world}/{len(dataset) * V} | {rate * world:.1f} views/s | "
                                      f"eta {fmt_time((len(shard) * V - done) / rate)}")
    all_reduce(sums), all_reduce(counts)
    return (sums / counts.clamp(min=1)[:, None]).float()


def mean_average_precision(scores, targets):
    """Charades mAP (%): per class, the mean precision at the rank of each positive; classes without
    positives are skipped. scores (N, K), targets (N, K) in {0, 1}."""
    aps = []
    for k in range(scores.shape[1]):
        pos = targets[:, k] > 0.5
        if not pos.any():
            continue
        hits = pos[scores[:, k].argsort(descending=True)].float()  # ties: argsort order
        precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
        aps.append((precision * hits).sum() / hits.sum())
    return 100 * torch.stack(aps).mean().item()


def mean_class_accuracy(pred, labels):
    """Mean over the classes present of per-class accuracy (%) (FX-S1, UB-S1)."""
    classes = labels.unique()
    return 100 * torch.stack([(pred[labels == c] == c).float().mean() for c in classes]).mean().item()


def counting_error(pred, counts):
    """UCFRep's metrics: MAE = mean |pred - true| / true (lower is better) and OBO = share off by <= 1."""
    return {"count_error": ((pred - counts).abs() / counts.clamp(min=1)).mean().item(),
            "obo": 100 * ((pred.round() - counts).abs() <= 1).float().mean().item()}


def compute_metrics(task, scores, targets):
    """Per-video scores (softmax / sigmoid / count) against targets -> dict of metrics (% or error)."""
    if task == "count":
        return counting_error(scores[:, 0], targets.float())
    if task == "multi":
        return {"map": mean_average_precision(scores, targets)}
    top5 = scores.topk(min(5, scores.shape[1]), dim=1).indices
    return {"top1": 100 * (top5[:, 0] == targets).float().mean().item(),
            "top5": 100 * (top5 == targets[:, None]).any(1).float().mean().item(),
            "mean_class_acc": mean_class_accuracy(top5[:, 0], targets)}


def print_table(rows, title):
    """rows: list of dicts with the same keys -> a plain aligned table."""
    keys = list(rows[0])
    cells = [[f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print(title)
    print("  ".join(k.rjust(w) for k, w in zip(keys, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))


def write_results(args, metrics, headline, name):
    """results.json in --out-dir, one row appended to --results-file (keyed by the setting), a table."""
    row = {"setting": args.preset or args.dataset, "script": name, "metric": headline,
           "value": metrics[headline], **metrics, "checkpoint": args.checkpoint, "out_dir": args.out_dir}
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(row, f, indent=1)
    if getattr(args, "results_file", None):
        os.makedirs(os.path.dirname(args.results_file) or ".", exist_ok=True)
        with open(args.results_file, "a") as f:
            f.write(json.dumps(row) + "\n")
    print_table([{"setting": row["setting"], **metrics}], f"{name} results ({args.out_dir}/results.json):")


def severe_table(path):
    """Print SEVERE results in Table 6's order with their mean. The last row of each setting counts.
    Mean convention: accuracies and mAP in %, UCF-RC (an error, lower is better) enters as 100 * (1 - error)."""
    rows = {}
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            rows[r["setting"]] = r
    vals, shown = [], {}
    for key, col in SEVERE_COLUMNS:
        if key in rows:
            v = rows[key]["value"]
            shown[col] = f"{v:.3f}" if key == "severe-ucfrc" else f"{v:.1f}"
            vals.append(100 * (1 - v) if key == "severe-ucfrc" else v)
        else:
            shown[col] = "-"
    shown["Mean"] = f"{np.mean(vals):.1f}" + ("" if len(vals) == 8 else f" ({len(vals)} of 8)") if vals else "-"
    print_table([shown], f"SEVERE (Table 6) from {path}; UCF-RC = mean count error (lower is better), "
                         "entering the mean as 100 * (1 - error)")
    return shown


# ============================================================================= finetuning pieces


def layer_decay_groups(model, weight_decay, layer_decay):
    """AdamW groups with layer-wise lr decay (Table 17: 0.75). patch_embed = layer 0, block i = layer i + 1,
    fc_norm / head = layer L + 1; lr_scale = decay^(L + 1 - layer). No weight decay on biases / 1-D params."""
    depth = len(model.blocks)
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = depth + 1                                   # fc_norm, head
        if name.startswith("patch_embed"):
            layer = 0
        elif name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
        no_wd = p.ndim <= 1 or name.endswith(".bias")
        g = groups.setdefault((layer, no_wd), {"params": [], "weight_decay": 0.0 if no_wd else weight_decay,
                                               "lr_scale": layer_decay ** (depth + 1 - layer), "layer": layer})
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]


class RandAug(NamedTuple):
    """timm's RandAugment settings (`rand-m{m}-n{n}-mstd{mstd}-inc1`, p 0.5 per op): Table 17's (9, 0.5)."""
    n: int = 2
    m: float = 9.0
    mstd: float = 0.5
    prob: float = 0.5


# timm's _RAND_INCREASING_TRANSFORMS ("inc1"): the ops whose strength grows with the magnitude. Cutout is
# not among them (timm and VideoMAE do it as random erasing, random_erase below).
RANDAUG_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
               "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
               "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
RANDAUG_FILL = (128, 128, 128)   # timm's _FILL (the reference passes no img_mean): grey outside the image


def randaug_level_args(name, magnitude, sign=1):
    """timm's level -> op argument (auto_augment.LEVEL_TO_ARG) for magnitude in [0, 10] (timm's
    _LEVEL_DENOM = 10: m=9 is 9/10 of each range). sign (+1/-1) is timm's _randomly_negate of signed ops.
    -> the op's arguments (a tuple, empty for the parameter-free ops)."""
    lvl = magnitude / 10.0
    if name in ("AutoContrast", "Equalize", "Invert"):
        return ()
    if name == "Rotate":
        return (sign * lvl * 30.0,)                         # degrees, +-30 at m=10
    if name == "PosterizeIncreasing":
        return (4 - int(lvl * 4),)                          # bits kept: 4 down to 0
    if name == "SolarizeIncreasing":
        return (256 - min(256, int(lvl * 256)),)            # threshold: 256 (none) down to 0
    if name == "SolarizeAdd":
        return (min(128, int(lvl * 110)),)                  # added below 128: 0 .. 110
    if name.endswith("Increasing"):                         # Color / Contrast / Brightness / Sharpness
        return (max(0.1, 1.0 + sign * lvl * 0.9),)          # enhance factor 1 -+ 0.9
    if name in ("ShearX", "ShearY"):
        return (sign * lvl * 0.3,)                          # +-0.3 at m=10
    if name in ("TranslateXRel", "TranslateYRel"):
        return (sign * lvl * 0.45,)                         # fraction of the side, +-0.45 at m=10
    raise ValueError(f"unknown RandAugment op {name}")


def randaug_frame(img, name, args):
    """One RandAugment op on one PIL RGB frame, as timm's NAME_TO_OP does it (geometric ops bicubic, as
    the reference's --train_interpolation, grey fill)."""
    from PIL import Image, ImageEnhance, ImageOps
    geo = dict(resample=Image.Resampling.BICUBIC, fillcolor=RANDAUG_FILL)
    affine = {"ShearX": lambda v: (1, v, 0, 0, 1, 0), "ShearY": lambda v: (1, 0, 0, v, 1, 0),
              "TranslateXRel": lambda v: (1, 0, v * img.size[0], 0, 1, 0),
              "TranslateYRel": lambda v: (1, 0, 0, 0, 1, v * img.size[1])}
    enhance = {"ColorIncreasing": ImageEnhance.Color, "ContrastIncreasing": ImageEnhance.Contrast,
               "BrightnessIncreasing": ImageEnhance.Brightness, "SharpnessIncreasing": ImageEnhance.Sharpness}
    if name in affine:
        return img.transform(img.size, Image.Transform.AFFINE, affine[name](*args), **geo)
    if name in enhance:
        return enhance[name](img).enhance(*args)
    if name == "Rotate":
        return img.rotate(*args, **geo)
    if name == "SolarizeAdd":                               # pixels below 128 brightened by args[0]
        lut = [min(255, i + args[0]) if i < 128 else i for i in range(256)]
        return img.point(lut * 3)
    if name == "PosterizeIncreasing":                       # keep args[0] high bits: ImageOps.posterize's
        lut = [i & ~(2 ** (8 - args[0]) - 1) for i in range(256)]   # LUT, also for 0 bits (m=10: black)
        return img.point(lut * 3)
    ops = {"AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize, "Invert": ImageOps.invert,
           "SolarizeIncreasing": ImageOps.solarize}
    return ops[name](img, *args)


def randaug_draw(cfg, rng):
    """One clip's RandAugment draw (timm's RandAugment + AugmentOp): n ops with replacement, each applied
    with prob p, at magnitude m + N(0, mstd) clipped to [0, 10] (mstd > 100: uniform in [0, m], as timm),
    with a random sign. -> [(name, args), ...] of the ops that apply."""
    chosen = []
    for k in rng.integers(len(RANDAUG_OPS), size=cfg.n):
        if rng.random() > cfg.prob:
            continue
        m = rng.uniform(0, cfg.m) if cfg.mstd > 100 else cfg.m + cfg.mstd * rng.standard_normal()
        sign = 1 if rng.random() < 0.5 else -1
        chosen.append((RANDAUG_OPS[k], randaug_level_args(RANDAUG_OPS[k], float(np.clip(m, 0, 10)), sign)))
    return chosen


def randaugment_clip(cfg, frames, rng):
    """RandAugment in timm's convention (Table 17: RandAug (9, 0.5); VideoMAE's video RandAugment): ONE
    draw of ops, magnitudes and signs (from the sample's numpy rng; Python's and torch's global RNGs
    untouched) applied to every frame, per frame with PIL as timm. cfg: RandAug. Runs after the crop
    (the reference's before it, on the decoded frames; translations are relative to the side either way).
    uint8 (T, H, W, 3) -> uint8 (T, H, W, 3)."""
    from PIL import Image
    ops = randaug_draw(cfg, rng)
    if not ops:
        return frames
    out = []
    for frame in frames:
        img = Image.fromarray(np.ascontiguousarray(frame))
        for name, args in ops:
            img = randaug_frame(img, name, args)
        out.append(np.asarray(img))
    return np.stack(out)


def random_erase(video, prob, rng, mode="pixel", count=1, area=(0.02, 1 / 3), aspect=(0.3, 1 / 0.3)):
    """Random erasing after normalisation (VideoMAE finetuning: --reprob 0.25 --remode pixel --recount 1;
    VideoMAE's random_erasing.py, cube=True). Per clip, with prob `prob`: `count` boxes, each of area
    U(area) / count of a frame and aspect h / w log-uniform in `aspect` (timm's RandomErasing defaults; 100
    tries for a box inside the frame), at the same place in every frame (one box per clip, not per frame),
    filled with N(0, 1) per pixel and frame ("pixel"), per channel and frame ("rand") or 0 ("const").
    Draws from the numpy rng (the noise from a generator seeded by it). video (B, C, T, H, W) -> new tensor."""
    if prob <= 0:
        return video
    B, C, T, H, W = video.shape
    gen = torch.Generator(device=video.device)
    gen.manual_seed(int(rng.integers(2 ** 62)))
    video = video.clone()
    for b in range(B):
        if rng.random() > prob:
            continue
        for _ in range(count):
            for _ in range(100):
                target = rng.uniform(*area) * H * W / count
                r = np.exp(rng.uniform(*np.log(aspect)))
                h, w = int(round(np.sqrt(target * r))), int(round(np.sqrt(target / r)))
                if h < H and w < W:
                    y, x = int(rng.integers(H - h + 1)), int(rng.integers(W - w + 1))
                    shape = (C, T, h, w) if mode == "pixel" else (C, T, 1, 1)
                    fill = torch.randn(shape, generator=gen, device=video.device, dtype=video.dtype)
                    video[b, :, :, y:y + h, x:x + w] = fill if mode != "const" else 0.0
                    break
    return video


def mix_batch(video, target, rng, mixup, cutmix, switch_prob=0.5):
    """Mixup (alpha 0.8) or CutMix (alpha 1.0), one lam per batch, each sample mixed with the batch reversed
    (timm's batch mode); the CutMix box is the same in every frame. video (B, C, T, H, W), target (B, K) soft."""
    if mixup <= 0 and cutmix <= 0:
        return video, target
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < switch_prob)
    lam = rng.beta(cutmix, cutmix) if use_cutmix else rng.beta(mixup, mixup)
    if use_cutmix:
        H, W = video.shape[-2:]
        ch, cw = int(H * np.sqrt(1 - lam)), int(W * np.sqrt(1 - lam))
        cy, cx = rng.integers(H), rng.integers(W)
        y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, H), max(cx - cw // 2, 0), min(cx + cw // 2, W)
        video = video.clone()
        video[..., y0:y1, x0:x1] = video.flip(0)[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)   # the area actually pasted
    else:
        video = lam * video + (1 - lam) * video.flip(0)
    return video, lam * target + (1 - lam) * target.flip(0)


def soft_targets(labels, task, num_classes, smoothing):
    """Targets as floats: one-hot with label smoothing (single), multi-hot (multi), the count (count)."""
    if task == "single":
        return F.one_hot(labels, num_classes).float() * (1 - smoothing) + smoothing / num_classes
    return labels.float().view(len(labels), -1)


def loss_fn(task, out, target):
    """Soft-target cross-entropy (single), BCE on sigmoids (multi), MSE on standardised counts (count: the
    normalised L1 of the metric itself has sign-only gradients and settles on the median count)."""
    if task == "single":
        return torch.sum(-target * F.log_softmax(out, dim=-1), dim=-1).mean()
    if task == "multi":
        return F.binary_cross_entropy_with_logits(out, target)
    return F.mse_loss(out, target)


# ============================================================================= args


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", choices=sorted(PRESETS), help="tiny = the 2-core CPU demo; severe-* = Table 6's settings")
    a("--severe-table", metavar="RESULTS_JSONL", help="print Table 6 from a --results-file and exit")
    add_data_args(a)
    a("--metric", default=None, choices=["top1", "mean_class_acc", "map", "count_error"],
      help="headline metric (default: top1 / map / count_error by task)")
    # model and optimisation (Table 17)
    a("--drop-path", type=float, default=0.1, help="stochastic depth (Table 17: 0.1)")
    a("--head-init-scale", type=float, default=0.001, help="head weights x this at init (Table 17: 0.001)")
    a("--epochs", type=int, default=100, help="Table 17: 100 K400, 40 SSv2; SEVERE 100")
    a("--warmup-epochs", type=float, default=5, help="Table 17: 5")
    a("--batch-size", type=int, default=16, help="total over all ranks (Table 17: 16 K400, 32 SSv2)")
    a("--lr", type=float, default=1e-3, help="base lr for a batch of 256 (actual = lr * batch / 256)")
    a("--min-lr", type=float, default=1e-6, help="cosine floor for a batch of 256, scaled like --lr (VideoMAE: 1e-6)")
    a("--weight-decay", type=float, default=0.05)
    a("--betas", type=float, nargs=2, default=[0.9, 0.999])
    a("--layer-decay", type=float, default=0.75, help="layer-wise lr decay (Table 17: 0.75)")
    a("--label-smoothing", type=float, default=0.1, help="Table 17: 0.1 (single-label only)")
    a("--mixup", type=float, default=0.8, help="mixup alpha (Table 17: 0.8); 0 = off")
    a("--cutmix", type=float, default=1.0, help="cutmix alpha (Table 17: 1.0); 0 = off")
    a("--randaug-n", type=int, default=2, help="RandAugment ops per clip, timm's convention (Table 17's "
      "RandAug (9, 0.5) = timm's rand-m9-mstd0.5-inc1, n defaulting to 2; the reference runs "
      "rand-m7-n4-mstd0.5-inc1); 0 = off")
    a("--randaug-m", type=float, default=9, help="RandAugment magnitude out of timm's 10 (Table 17: 9; "
      "reference 7): m=9 rotates up to 27 degrees, shears up to 0.27")
    a("--randaug-mstd", type=float, default=0.5, help="std of the Gaussian noise on the magnitude, drawn per "
      "op and clip (Table 17: 0.5)")
    a("--crop", default="rrc", choices=["rrc", "multiscale", "none"], help="training crop: rrc = VideoMAE's "
      "random resized crop (SPEC 6), multiscale = MultiScaleCrop (pretraining's), none = the whole frame")
    a("--crop-scale", type=float, nargs=2, default=[0.25, 1.0], metavar=("LO", "HI"), help="rrc: area "
      "fraction range (the SMILE reference: 0.25 1.0; VideoMAE: 0.08 1.0)")
    a("--crop-ratio", type=float, nargs=2, default=[3 / 4, 4 / 3], metavar=("LO", "HI"),
      help="rrc: aspect (w / h) range (VideoMAE and the reference: 3/4 4/3)")
    a("--reprob", type=float, default=0.25, help="random erasing probability per clip (VideoMAE: 0.25); 0 = off")
    a("--remode", default="pixel", choices=["pixel", "rand", "const"], help="erased box filled with N(0, 1) "
      "per pixel / per channel, or 0 (VideoMAE: pixel)")
    a("--recount", type=int, default=1, help="erased boxes per clip (VideoMAE: 1)")
    # run
    a("--out-dir", default="out/finetune", help="everything a run writes goes here")
    a("--results-file", default=None, help="append the result as a JSON row (keyed by setting) to this file")
    a("--eval-only", action="store_true", help="test --checkpoint (a finetuned classifier) and exit")
    a("--eval-every", type=int, default=0, help="epochs between validations during training; 0 = at the end only")
    a("--resume", nargs="?", const="auto", default=None, help="continue from <out-dir>/checkpoint-latest.pth or a path")
    a("--steps", type=int, default=None, help="stop after this many optimizer steps (schedule unchanged)")
    a("--log-every", type=int, default=20)
    a("--ckpt-every", type=int, default=200, help="steps between writes of checkpoint-latest.pth")
    args = apply_presets(p, [("preset", PRESETS), ("dataset", DATASETS), ("dataset", SCHEDULES), ("preset", PRESETS)], argv)
    if args.severe_table:
        return args, None
    args.metric = args.metric or {"single": "top1", "multi": "map", "count": "count_error"}[args.task]
    if args.batch_size % int(os.environ.get("WORLD_SIZE", 1)):
        fail(f"--batch-size {args.batch_size} does not split over {os.environ['WORLD_SIZE']} ranks")
    check_out_dir(args.out_dir)
    return args, finish_data_args(args)


def main(argv=None):
    # ------------------------------------------------------------------ args
    args, state = get_args(argv)
    if args.severe_table:
        return severe_table(args.severe_table)

    # ------------------------------------------------------------------ dist
    rank, world, device = setup_dist()
    if args.device:
        device = torch.device(args.device)
    master = rank == 0
    per_rank = args.batch_size // world
    torch.manual_seed(args.seed)
    log = Log(args.out_dir, master)
    if master:
        with open(os.path.join(args.out_dir, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=1)

    # ------------------------------------------------------------------ data
    import data
    augment = None
    if args.randaug_n:
        augment = partial(randaugment_clip, RandAug(args.randaug_n, args.randaug_m, args.randaug_mstd))
    crop = dict(crop=args.crop, crop_scale=args.crop_scale, crop_ratio=args.crop_ratio)
    try:
        train_set, val_set = build_datasets(args, augment, crop=crop)
    except (OSError, ValueError) as e:   # missing list, malformed line, label out of range: before any work
        fail(str(e))
    sampler = data.ResumableSampler(train_set, world, rank, seed=args.seed, shuffle=True, drop_last=True)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=per_rank, sampler=sampler, num_workers=args.workers, collate_fn=data.eval_collate,
        pin_memory=device.type == "cuda", drop_last=True, worker_init_fn=data.worker_init)
    steps_per_epoch = len(train_set) // world // per_rank
    if steps_per_epoch == 0 and not args.eval_only:
        fail(f"{len(train_set)} training clips cannot fill one batch of {per_rank} on each of {world} ranks")
    total_steps = args.epochs * steps_per_epoch

    # ------------------------------------------------------------------ model
    num_outputs = 1 if args.task == "count" else args.num_classes
    model = build_classifier(args, num_outputs, state, verbose=master, drop_path=args.drop_path,
                             head_init_scale=args.head_init_scale).to(device)
    # counting: the head predicts (count - mean) / std of the training counts, so it starts near the mean
    targets = train_set.targets().float()
    count_stats = (targets.mean().item(), targets.std().clamp(min=1).item()) if args.task == "count" else (0.0, 1.0)
    if isinstance(state, dict) and "count_stats" in state:
        count_stats = tuple(state["count_stats"])
    raw_model = model
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast, scaler = amp_setup(device, args.amp)

    def predict(video):   # -> per-view scores: softmax (single), sigmoid (multi), count (count)
        with autocast():
            out = raw_model(video).float()
        return {"single": lambda: out.softmax(-1), "multi": lambda: out.sigmoid(),
                "count": lambda: out * count_stats[1] + count_stats[0]}[args.task]()

    def evaluate(what):
        raw_model.eval()
        scores = per_video(predict, val_set, num_outputs, per_rank, args.workers, rank, world, device, log, what)
        raw_model.train()
        return compute_metrics(args.task, scores, val_set.targets())

    # ------------------------------------------------------------------ optimizer + schedule
    optimizer = torch.optim.AdamW(layer_decay_groups(raw_model, args.weight_decay, args.layer_decay), lr=0.0,
                                  betas=tuple(args.betas), eps=1e-8)
    lr = args.lr * args.batch_size / 256   # linear scaling rule (Table 17)
    min_lr = args.min_lr * args.batch_size / 256                       # scaled alike, as VideoMAE does
    lrs = cosine_schedule(lr, min_lr, total_steps, int(args.warmup_epochs * steps_per_epoch))

    # ------------------------------------------------------------------ resume
    ckpt, latest = resume_from(args.resume, args.out_dir, master, raw_model, optimizer, scaler)
    step = ckpt["step"] if ckpt else 0
    if ckpt and master:
        print(f"resumed from {ckpt['path']} at step {step} (epoch {step / steps_per_epoch:.2f})")

    def checkpoint_state():
        return {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {}, "step": step, "epoch": step / steps_per_epoch,
                "rng": rng_state(), "count_stats": list(count_stats), "args": vars(args)}

    # ------------------------------------------------------------------ loop
    end_step = 0 if args.eval_only else min(total_steps, args.steps) if args.steps else total_steps
    if master and end_step:
        print(f"finetuning {args.model} on {args.dataset} ({len(train_set)} clips, task {args.task}, {num_outputs} "
              f"outputs) | {world} rank(s) on {device} | {total_steps} steps ({steps_per_epoch} per epoch), lr {lr:.2e} "
              f"| running to step {end_step}", flush=True)
    model.train()
    window = {"t0": time.time(), "clips": 0, "loss": 0.0, "n": 0}
    while step < end_step:
        epoch, offset = divmod(step, steps_per_epoch)
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch, start=offset * per_rank)
        for batch in loader:
            for b in batch["bad"]:
                print(f"[rank {rank}] skipped bad item: {b}", flush=True)
            # every random draw of this step is a pure function of (seed, step, rank): mixup from rng, drop
            # path from the global torch RNG reseeded here, so --resume replays the same stream
            rng = np.random.default_rng([args.seed, step, rank])
            torch.manual_seed(int(rng.integers(2 ** 62)))
            set_lr(optimizer, lrs[step])
            video = batch["video"].to(device, non_blocking=True)                 # (B, C, T, H, W)
            video = random_erase(video, args.reprob, rng, args.remode, args.recount)   # normalised; before mixup
            target = soft_targets(batch["label"], args.task, num_outputs, args.label_smoothing).to(device)
            if args.task == "count":   # the head regresses standardised counts
                target = (target - count_stats[0]) / count_stats[1]
            else:
                video, target = mix_batch(video, target, rng, args.mixup, args.cutmix)
            with autocast():
                out = model(video).float()                                       # (B, num_outputs)
            loss = loss_fn(args.task, out, target)
            finite = all_reduce(torch.isfinite(loss.detach()).float().cpu(), dist.ReduceOp.MIN if world > 1 else None)
            if finite.item() < 1:   # all ranks stop together, before the weights see it
                raise SystemExit(f"error: non-finite loss at step {step} (on some rank); the last good checkpoint "
                                 f"is {latest} (untouched)")
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            # ---- logging and checkpoints
            window["loss"] += loss.item()
            window["clips"] += video.shape[0] * world
            window["n"] += 1
            if step % args.log_every == 0 or step == end_step:
                dt = time.time() - window["t0"]
                rec = {"step": step, "epoch": round(step / steps_per_epoch, 3), "loss": window["loss"] / window["n"],
                       "lr": float(lrs[step - 1]), "clips_per_s": window["clips"] / dt, "time": time.time()}
                log(rec, f"step {step}/{end_step} | ep {rec['epoch']:.2f} | loss {rec['loss']:.4f} | lr {rec['lr']:.2e} | "
                         f"{rec['clips_per_s']:.1f} clips/s | eta {fmt_time((end_step - step) * dt / window['n'])}")
                window = {"t0": time.time(), "clips": 0, "loss": 0.0, "n": 0}
            epoch_done = step % steps_per_epoch == 0
            if master and (step % args.ckpt_every == 0 or step == end_step or epoch_done):
                save_checkpoint(checkpoint_state(), latest)
            if epoch_done and args.eval_every and (step // steps_per_epoch) % args.eval_every == 0 and step < end_step:
                metrics = evaluate(f"val epoch {step // steps_per_epoch}")
                log({"step": step, "epoch": step // steps_per_epoch, **metrics},
                    f"val epoch {step // steps_per_epoch}: " + " | ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
            if step >= end_step:
                break

    # ------------------------------------------------------------------ test
    metrics = evaluate("test")
    if master:
        log({"step": step, "test": metrics})
        write_results(args, metrics, args.metric, "finetune")

    # ------------------------------------------------------------------ teardown
    teardown(world)
    return metrics


if __name__ == "__main__":
    main()
