"""Evaluation library shared by probe.py, finetune.py and tools/ (Tables 6, 15-17; SPEC 6): the
datasets and their test views, the classifier built from a checkpoint, multi-view testing over
ranks, metrics (top-1/5, mean class accuracy, mAP, counting error), result files.
Every dataset returns dicts of uint8 clips, normalised on the device (data.normalize):
  train mode: {"video": (C, T, H, W) uint8, "label", "index", "bad"(, "flip", "randaug_*")}, one clip;
  test mode:  {"video": (V, C, T, H, W) uint8, "label", "video_id"}, V crops of one temporal view.
label: a long (single-label), a multi-hot float (num_classes,) (multi-label) or a float count.
"""
import argparse
import json
import os
import time

import numpy as np
import torch

import augment
import data
import motion
from model import MODEL_SIZES, VideoClassifier, classifier_state_dict, load_encoder
from runtime import (CheckpointError, all_reduce, check_paths, describe_checkpoint, fail, fmt_time,
                     load_checkpoint, nonneg_int, positive_int, print_table)

# Datasets (Table 15, SPEC 6): list files <data-root>/<splits>; `motion` is the embedded synthetic
# set. sampling: "dense" = T frames at a stride; "segment" = TSN-style, one frame per T equal
# segments (SSv2). flip: SSv2 has left/right classes, so has `motion`. Test views = clips x crops.
EVAL_DATASETS = {
    "k400": dict(num_classes=400, sampling="dense", stride=4, flip=True, test_clips=5, test_crops=3),
    "ssv2": dict(num_classes=174, sampling="segment", flip=False, test_clips=2, test_crops=3),
    "ucf101": dict(num_classes=101, sampling="dense", stride=4, flip=True, test_clips=5, test_crops=3),
    "hmdb51": dict(num_classes=51, sampling="dense", stride=4, flip=True, test_clips=5, test_crops=3),
    "gym99": dict(num_classes=99, sampling="segment", flip=True, test_clips=2, test_crops=3),
    "epic": dict(num_classes=97, sampling="segment", flip=True, test_clips=2, test_crops=3),   # verbs
    "list": dict(),
    "motion": dict(num_classes=8, flip=False, test_clips=1, test_crops=1, img_size=64, num_frames=16),
}

# ============================================================================= flags


def add_data_args(a, tasks=("single", "multi", "count")):
    """Data and model flags shared by finetune.py, probe.py and tools/extract.py; tasks: the --task
    values the script runs."""
    a("--dataset", default="motion", choices=sorted(EVAL_DATASETS),
      help="k400/ssv2/ucf101/hmdb51/gym99/epic read <data-root>/train.csv and val.csv; list reads "
      "--train-list/--val-list; motion is synthetic")
    a("--task", default="single", choices=list(tasks),
      help="single-label, multi-label (Charades; list labels '3,17,42') or repetition counting "
      "(UCFRep; label = the count)")
    a("--data-root", default="", help="folder that list paths are relative to")
    a("--splits", nargs=2, default=["train.csv", "val.csv"], help="the list files in --data-root")
    a("--train-list", help="'<path> <label>' list (default <data-root>/<first of --splits>)")
    a("--val-list", help="(default <data-root>/<second of --splits>)")
    a("--num-classes", type=positive_int, help="from the dataset preset; needed for --dataset list")
    a("--train-samples", type=nonneg_int, default=0, help="low-shot: a seeded class-stratified subset "
      "of this many training clips (SEVERE UCF/GYM 10^3: 1000); 0 = all")
    a("--motion-train", type=positive_int, default=512, help="motion: training clips")
    a("--motion-val", type=positive_int, default=256, help="motion: validation clips")
    a("--motion-backgrounds", nargs="+", default=["black", "image"],
      choices=["black", "image", "noise"],
      help="motion: backgrounds to draw from (noise: far harder for a small model from scratch)")
    a("--num-frames", type=positive_int, default=16, help="T (Sec. 4.1: 16)")
    a("--img-size", type=positive_int, default=224)
    a("--sampling", default="dense", choices=["dense", "segment"],
      help="dense: T frames at --stride; segment: TSN-style, one frame per segment (SSv2)")
    a("--stride", type=positive_int, default=4, help="dense sampling: frames between samples")
    a("--flip", action=argparse.BooleanOptionalAction, default=True,
      help="horizontal flip (not for SSv2 / motion)")
    a("--test-clips", type=positive_int, default=5, help="temporal views at test (K400 5, SSv2 2)")
    a("--test-crops", type=positive_int, default=3, help="spatial views at test (3)")
    a("--workers", type=nonneg_int, default=8, help="data loader processes per rank")
    a("--checkpoint", default=None, help="train.py checkpoint or a released VideoMAE-family one; "
      "none = random init")
    a("--model", choices=["tiny", "small", "base"],
      help="ViT size (default: the checkpoint's, else base)")
    a("--patch-size", type=positive_int, help="default: the checkpoint's, else 16")
    a("--tubelet", type=positive_int, help="default: the checkpoint's, else 2")
    a("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"],
      help="auto: bf16 on GPUs of compute capability >= 8, fp16 on older ones, fp32 on CPU")
    a("--seed", type=nonneg_int, default=0)
    a("--device", default=None, help="cpu / cuda (default: cuda when available)")


def check_data_args(args):
    """Checks and derived paths after parsing (no file is read here)."""
    if args.num_classes is None:
        args.num_classes = EVAL_DATASETS[args.dataset].get("num_classes")
        if args.num_classes is None and args.task != "count":
            fail("--dataset list needs --num-classes")
    if args.dataset != "motion":
        args.train_list = args.train_list or os.path.join(args.data_root, args.splits[0])
        args.val_list = args.val_list or os.path.join(args.data_root, args.splits[1])
    check_paths(("--checkpoint", args.checkpoint, "file"))


def check_data_paths(args):
    """probe.py's and finetune.py's path flags, each for what it must be (in main, before work)."""
    lists = args.dataset != "motion"
    check_paths(("--data-root", args.data_root if lists else None, "folder"),
                ("--train-list", args.train_list if lists else None, "file"),
                ("--val-list", args.val_list if lists else None, "file"),
                ("--results-file", args.results_file, "out-file"))


SHAPE_FLAGS = (("model", "base"), ("patch_size", 16), ("tubelet", 2))   # and their fallbacks


def read_checkpoint(args):
    """The one way the evaluation scripts open --checkpoint (probe, finetune, extract, segment):
    load it once (runtime.load_checkpoint; None without one), check that it holds an encoder, and
    set --model, --patch-size and --tubelet to the shape it states (its args, else its weights)
    where the flag was not typed (args.flags_given: a preset's value gives way), the fallbacks
    where neither says. A typed flag that contradicts the checkpoint is a one-line error naming
    what it holds and the fix. -> the loaded checkpoint or None."""
    typed = (set(args.flags_given) if hasattr(args, "flags_given") else   # apply_presets' record
             {k for k, _ in SHAPE_FLAGS if getattr(args, k) is not None})  # a hand-made Namespace
    state, shape, path = None, {}, args.checkpoint
    if path:
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            fail(f"--checkpoint {e}")
        weights, saved, what = classifier_state_dict(state), state.get("args") or {}, \
            describe_checkpoint(state)
        if not any(k.startswith("blocks.") for k in weights):
            fail(f"--checkpoint {path} is {what}, with no encoder inside (no blocks.* weights): "
                 f"give train.py's or finetune.py's checkpoint")
        shape = {k: saved[k] for k, _ in SHAPE_FLAGS if saved.get(k) is not None}
        embed = weights.get("patch_embed.proj.weight")
        if embed is not None and embed.ndim == 5:                   # (D, 3, tubelet, patch, patch)
            depth = len({k.split(".")[1] for k in weights if k.startswith("blocks.")})
            sizes = [n for n, s in MODEL_SIZES.items()
                     if (s["embed_dim"], s["depth"]) == (embed.shape[0], depth)]
            if not sizes:
                fail(f"--checkpoint {path} holds a ViT of width {embed.shape[0]} and depth "
                     f"{depth}, none of --model {', '.join(MODEL_SIZES)}")
            read = dict(model=sizes[0], tubelet=embed.shape[2], patch_size=embed.shape[3])
            shape = {**read, **shape}
            if not saved:
                what += (f" (--model {read['model']} --patch-size {read['patch_size']} --tubelet "
                         f"{read['tubelet']}, read from its weights)")
        clash = [k for k in shape if k in typed and getattr(args, k) != shape[k]]
        if clash:
            fail(f"--checkpoint {path} is {what}; this command asked for "
                 + " ".join(f"--{k.replace('_', '-')} {getattr(args, k)}" for k in clash)
                 + ": pass " + " ".join(f"--{k.replace('_', '-')} {shape[k]}" for k in clash)
                 + " or leave the flag out (the checkpoint's shape is the default)")
    for key, fallback in SHAPE_FLAGS:
        value = shape.get(key, getattr(args, key))
        setattr(args, key, fallback if value is None else value)
    if args.num_frames % args.tubelet or args.img_size % args.patch_size:
        fail(f"{args.num_frames} frames x {args.img_size} px do not split into {args.tubelet} x "
             f"{args.patch_size} x {args.patch_size} tubelets")
    return state


def frozen_encoder(state, *, model, layer=None, **grid):
    """tools/extract.py's and tools/segment.py's frozen encoder: build_classifier's (grid: its
    keywords; state None: random) to block `layer` (1-based, default the last). -> (model, layer,
    the checkpoint's classifier keys)"""
    depth = MODEL_SIZES[model]["depth"]
    layer = depth if layer is None else layer
    if not 1 <= layer <= depth:
        fail(f"--layer {layer}: the {model} encoder has blocks 1..{depth}")
    keys = classifier_state_dict(state) if state is not None else {}
    return build_classifier(state, 1, model=model, **grid).eval().requires_grad_(False), layer, keys


# ============================================================================= datasets


def make_target(label, task, num_classes):
    """A list label as a tensor: class id (single), multi-hot (multi), the count as a float."""
    if task == "multi":
        return torch.zeros(num_classes).index_fill_(0, torch.tensor(list(label)).long(), 1)
    return torch.tensor(float(label)) if task == "count" else torch.tensor(int(label))


def segment_indices(num_video_frames, num_frames, rng=None, view=0, num_views=1):
    """TSN-style segment sampling (SSv2): split the video into T equal segments of tick = n / T
    frames, take one frame of each; a random one when training (rng). At test, the reference's
    (ssv2.py, test mode): frame int(tick * i + tick * view / num_views) of segment i, i.e. the
    segments' starts and midpoints for its 2 views ([0, 3, 6, 9] and [1, 4, 7, 10] of a 12-frame
    video at T = 4). One view: the midpoints (the reference's one-view test takes the starts)."""
    seg = num_video_frames / num_frames
    if rng is not None:
        offset = rng.uniform(0, seg, num_frames)
    else:
        offset = seg * view / num_views if num_views > 1 else seg / 2
    return np.minimum((np.arange(num_frames) * seg + offset).astype(int), num_video_frames - 1)


def dense_indices(num_video_frames, num_frames, stride, view=0, num_views=1):
    """Test-time dense sampling, the reference's (kinetics.py, test mode): the video read at the
    stride (frames 0, s, 2s, ..., the last repeated when fewer than T), and the view-th of num_views
    windows of T of them, starting at int(view * (len - T) / (num_views - 1)) on that grid: 5 views
    of 300 frames at stride 4 start at frames 0, 56, 116, 176, 236. One view: the centre window."""
    grid = max(-(-num_video_frames // stride), 1)              # frames 0, s, 2s, ... read
    room = max(grid - num_frames, 0)
    start = int(view * (room / (num_views - 1))) if num_views > 1 else room // 2
    return stride * np.minimum(start + np.arange(num_frames), grid - 1)


def crop_boxes(height, width, size, num_crops=3):
    """The reference's test crops (kinetics.py / ssv2.py, test mode): the short side resized to
    size (the long side to int(long * size / short)), then num_crops size x size windows along the
    long side, the k-th at int(k * (long - size) / (num_crops - 1)); one crop: the centre.
    -> (resized (h, w), [(top, left)] per crop)."""
    h, w = ((size, max(size, int(width * size / height))) if height <= width
            else (max(size, int(height * size / width)), size))
    room = max(h, w) - size
    starts = ([int(k * (room / (num_crops - 1))) for k in range(num_crops)] if num_crops > 1
              else [room // 2])
    return (h, w), [(s, 0) if h > w else (0, s) for s in starts]


def three_crops(frames, size, num_crops=3):
    """crop_boxes' num_crops size x size crops (start, centre, end; one: the centre) of the frames
    resized. uint8 (T, H, W, 3) -> list of uint8 (T, size, size, 3)."""
    (h, w), boxes = crop_boxes(*frames.shape[1:3], size, num_crops)
    x = augment.resize(frames, (h, w))
    return [x[:, top:top + size, left:left + size] for top, left in boxes]


class VideoClipDataset(torch.utils.data.Dataset):
    """Decoded clips of a classification list (K400, SSv2, UCF, ... or any `<path> <label>` list).
    train: one clip per item: T frames at `stride` from a random start ("dense") or one random frame
    per segment ("segment", TSN-style, SSv2), a crop (`crop`: "multiscale" = MultiScaleCrop as in
    pretraining, "rrc" = VideoMAE's random resized crop, see augment.crop_and_flip), `augment(frames,
    rng) -> (frames, entries)` (finetune.py's RandAugment draw: entries for the step), shipped
    channels last; the step flips (sample["flip"], data.infuse), then augments. A bad video is
    replaced by another one, reported (sample["bad"]).
    test: item i = video i // num_clips, temporal view i % num_clips; num_crops crops after resizing
    the short side -> (num_crops, C, T, H, W). A bad video is an error here: it would bias the
    result. Randomness: a pure function of (seed, epoch, index): workers and resumed runs agree."""

    def __init__(self, items, mode="train", task="single", num_classes=400, num_frames=16, stride=4,
                 sampling="dense", img_size=224, flip=True, num_clips=1, num_crops=1, augment=None,
                 seed=0, crop="multiscale", crop_scale=(0.25, 1.0), crop_ratio=(3 / 4, 4 / 3)):
        assert mode in ("train", "test") and sampling in ("dense", "segment"), (mode, sampling)
        assert crop in ("multiscale", "rrc", "none"), crop
        self.crop = dict(crop=crop, crop_scale=tuple(crop_scale), crop_ratio=tuple(crop_ratio))
        self.items, self.mode, self.task, self.num_classes = items, mode, task, num_classes
        self.num_frames, self.stride, self.sampling, self.img_size = num_frames, stride, sampling, \
            img_size
        self.flip, self.num_clips, self.num_crops = flip, num_clips, num_crops
        self.augment, self.seed, self.epoch = augment, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.items) * (self.num_clips if self.mode == "test" else 1)

    def targets(self):
        """Every video's target, without decoding: (num_videos,) or (num_videos, num_classes)."""
        return torch.stack([make_target(label, self.task, self.num_classes)
                            for _, label in self.items])

    def frame_indices(self, n, rng, view=0):
        T = self.num_frames
        if self.sampling == "segment":
            return segment_indices(n, T, rng, view, self.num_clips)
        if rng is not None:
            return data.clip_indices(n, T, self.stride, rng)
        return dense_indices(n, T, self.stride, view, self.num_clips)

    def __getitem__(self, key):
        index = data.unkey(key, self.set_epoch)   # the epoch comes with the index
        if self.mode == "test":
            vid, view = divmod(index, self.num_clips)
            path, label = self.items[vid]
            frames = data.decode_frames(path, lambda n: self.frame_indices(n, None, view))
            crops = three_crops(frames, self.img_size, self.num_crops)
            return {"video": torch.stack([data.to_tensor(c) for c in crops]), "video_id": vid,
                    "label": make_target(label, self.task, self.num_classes)}
        rng = np.random.default_rng([self.seed, self.epoch, index])

        def clip(i):
            frames = data.decode_frames(self.items[i][0], lambda n: self.frame_indices(n, rng))
            return i, augment.crop_and_flip(frames, self.img_size, rng, self.flip, **self.crop,
                                         defer_flip=True)
        (index, (frames, flip)), bad = data.with_retries(clip, index, len(self.items), rng,
                                                         lambda i: self.items[i][0])
        frames, extra = self.augment(frames, rng) if self.augment else (frames, {})
        return {"video": torch.from_numpy(frames).permute(3, 0, 1, 2), "flip": flip, "index": index,
                "bad": bad, "label": make_target(self.items[index][1], self.task, self.num_classes),
                **extra}


MOTION_CLASSES = ("left", "right", "up", "down", "clockwise", "counter-clockwise", "growing",
                  "shrinking")


class MotionClassDataset(torch.utils.data.Dataset):
    """Synthetic motion classification (--dataset motion): only motion tells the classes apart.

    task "single": the 8 MOTION_CLASSES (motion.class_path). Clips come in groups of 8: clip i has
    class i % 8, and all clips of group i // 8 share the object (motion.synthetic_objects),
    background (black or a still image; "noise" makes the task far harder for a small model trained
    from scratch), size, start position, angle, scale and speed: the first frame is the same across
    the 8 classes, only the change over time tells them apart.
    task "multi": two class draws, one object per distinct class (1 in 8 clips draws the same class
    twice and shows one object); label = the set (multi-hot). Stand-in for Charades.
    task "count": one object moves out and back k = 1..max_count times (>= 4 frames per repetition);
    label = k, the same group trick keeps frame 0 independent of k. Stand-in for UCFRep.
    Objects are pasted by motion.paste (the overlay's resampling and blend); sizes and speeds are
    fractions of the frame (any img_size). Each clip is a pure function of (seed, split, index);
    train mode's crop (`crop`, default "none"; no flip: the classes have a direction) and augment
    (as VideoClipDataset's) draw from (seed, epoch, index)."""

    def __init__(self, split, length, mode="train", task="single", num_frames=16, img_size=64,
                 seed=0, max_count=4, augment=None, num_objects_bank=64,
                 backgrounds=("black", "image"), crop="none", crop_scale=(0.25, 1.0),
                 crop_ratio=(3 / 4, 4 / 3)):
        assert task in ("single", "multi", "count") and crop in ("multiscale", "rrc", "none")
        self.crop = dict(crop=crop, crop_scale=tuple(crop_scale), crop_ratio=tuple(crop_ratio))
        if task == "count" and num_frames < 4 * max_count:
            raise ValueError(f"counting up to {max_count} repetitions needs "
                             f">= {4 * max_count} frames (4 per repetition)")
        self.split_id = {"train": 0, "val": 1}[split]
        self.length, self.mode, self.task, self.T, self.S = length, mode, task, num_frames, img_size
        self.seed, self.max_count, self.augment, self.epoch = seed, max_count, augment, 0
        self.num_classes = 1 if task == "count" else len(MOTION_CLASSES)
        self.objects = motion.synthetic_objects(num_objects_bank, np.random.default_rng([seed, 7]),
                                                size=48)
        self.group = max_count if task == "count" else len(MOTION_CLASSES)
        self.backgrounds = backgrounds

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.length

    def targets(self):
        return torch.stack([make_target(self.label(i), self.task, self.num_classes)
                            for i in range(self.length)])

    def label(self, index):
        """Labels without rendering (class counts, stratified subsets)."""
        if self.task == "multi":
            g = np.random.default_rng([self.seed, self.split_id, index, 1])
            return sorted(set(g.integers(0, 8, 2).tolist()))
        return index % self.group + (1 if self.task == "count" else 0)

    def clip(self, index):
        """-> uint8 (T, S, S, 3) frames and the label."""
        T, S = self.T, self.S
        g = np.random.default_rng([self.seed, self.split_id, index // self.group])   # the group's
        kind = self.backgrounds[g.integers(len(self.backgrounds))]
        still = motion.still_image(S, S, g) if kind == "image" else None
        frames = motion.background(kind, T, S, S, g, image=still)
        label = self.label(index)
        if self.task == "multi":   # the group trick does not apply: each clip draws its own objects
            g = np.random.default_rng([self.seed, self.split_id, index, 2])
        for cls in (label if self.task == "multi" else [label]):
            obj = self.objects[g.integers(len(self.objects))]
            size = np.maximum(np.round(g.uniform(0.3, 0.45, 2) * S).astype(int), 2)   # (P, Q)
            centres, angles, scales = motion.class_path(cls, self.T, self.S, g,
                                                        count=self.task == "count")
            motion.paste(frames, obj, tuple(size), centres, angles, scales)
        return frames, label

    def __getitem__(self, key):
        index = data.unkey(key, self.set_epoch)   # the epoch comes with the index
        frames, label = self.clip(index)
        target = make_target(label, self.task, self.num_classes)
        if self.mode == "test":
            return {"video": data.to_tensor(frames)[None], "label": target, "video_id": index}
        rng = np.random.default_rng([self.seed, self.epoch, index])
        frames = augment.crop_and_flip(frames, self.S, rng, False, **self.crop)   # "none": no draw
        frames, extra = self.augment(frames, rng) if self.augment else (frames, {})
        return {"video": data.to_tensor(frames), "label": target, "index": index, "bad": [], **extra}


def eval_collate(samples):
    """Stack a batch; test-mode items keep their views: video (B, V, C, T, H, W); an augment's
    randaug_op (B, n), randaug_arg (B, n, 6): the CPU tensors randaugment_batch groups clips by."""
    out = {k: data.cat([s[k] for s in samples], stack=True) for k in ("video", "label")}
    out.update({k: torch.stack([s[k] for s in samples]) for k in samples[0] if "randaug" in k})
    out.update({k: torch.tensor([s[k] for s in samples]) for k in ("index", "video_id", "flip")
                if k in samples[0]})
    out["bad"] = [b for s in samples for b in s.get("bad", [])]
    return out


def build_datasets(dataset, task, num_classes, *, num_frames, img_size, seed, data_root="",
                   train_list=None, val_list=None, train_samples=0, sampling="dense", stride=4,
                   flip=True, test_clips=1, test_crops=1, motion_train=512, motion_val=256,
                   motion_backgrounds=("black", "image"), augment=None, train_mode="train",
                   crop=None):
    """add_data_args' flags (by dest) -> (train set, validation set in test mode). train_mode
    "test": one centre view per training video (probe.py's cached features); crop: finetune's."""
    crop = crop or {}
    if dataset == "motion":
        kw = dict(task=task, num_frames=num_frames, img_size=img_size, seed=seed,
                  max_count=min(4, num_frames // 4), backgrounds=tuple(motion_backgrounds))
        return (MotionClassDataset("train", motion_train, mode=train_mode, augment=augment,
                                   **crop, **kw),
                MotionClassDataset("val", motion_val, mode="test", **kw))
    classes, multi = None if task == "count" else num_classes, task == "multi"
    train_items = data.read_list(train_list, data_root or None, classes, multi_label=multi)
    val_items = data.read_list(val_list, data_root or None, classes, multi_label=multi)
    if train_samples:
        train_items = data.stratified_subset(train_items, train_samples, seed)
    kw = dict(task=task, num_classes=num_classes, num_frames=num_frames, stride=stride,
              sampling=sampling, img_size=img_size, seed=seed)
    return (VideoClipDataset(train_items, mode=train_mode, flip=flip, augment=augment, **crop,
                             **kw),
            VideoClipDataset(val_items, mode="test", num_clips=test_clips, num_crops=test_crops,
                             **kw))


# ==================================================================== model and multi-view testing


def build_classifier(state, num_outputs, *, model, patch_size, tubelet, img_size, num_frames,
                     path=None, drop_path=0.0, head_init_scale=1.0, verbose=True):
    """A VideoClassifier on the evaluation grid, its encoder loaded from a checkpoint's `state`
    (None: random init; the position table rebuilt for the grid). Weights of another shape: one
    line naming the checkpoint (`path`), what it holds and the model this command built."""
    encoder = {k: v for k, v in MODEL_SIZES[model].items() if not k.startswith("decoder")}
    net = VideoClassifier(img_size=img_size, patch_size=patch_size, num_frames=num_frames,
                          tubelet_size=tubelet, num_classes=num_outputs, drop_path=drop_path,
                          head_init_scale=head_init_scale, **encoder)
    if state is not None:
        try:
            load_encoder(net, state, verbose=verbose)
        except RuntimeError as e:
            fail(f"--checkpoint {path} is {describe_checkpoint(state)}; its weights do not load "
                 f"into the --model {model} --patch-size {patch_size} --tubelet {tubelet} encoder "
                 f"this command built: {(str(e).strip().splitlines()[:2])[-1].strip()[:120]}")
    return net


@torch.no_grad()
def per_video(fn, dataset, out_dim, batch_size, workers, rank, world, device, log=None,
              what="views"):
    """Multi-view testing: fn(normalised video (B*V, C, T, H, W)) -> (B*V, out_dim), averaged over
    a video's views (temporal clips: items, spatial crops: V per item) and ranks (rank r runs items
    r, r + world, ...; sums, counts all-reduced). -> (num_videos, out_dim), every rank's device."""
    shard = torch.utils.data.Subset(dataset, range(rank, len(dataset), world))
    loader = data.loader(shard, None, batch_size, workers, device, eval_collate)
    n = dataset.targets().shape[0]
    sums = torch.zeros(n, out_dim, dtype=torch.float64, device=device)
    counts = torch.zeros(n, dtype=torch.float64, device=device)
    t0, done = time.time(), 0
    for i, batch in enumerate(loader):
        video = batch["video"].to(device, non_blocking=True)          # (B, V, C, T, H, W) uint8
        B, V = video.shape[:2]
        video = video.flatten(0, 1)
        if video.dtype == torch.uint8:   # pixels: normalised here, on the device
            video = data.normalize(video)
        out = fn(video).float().view(B, V, -1)
        ids = batch["video_id"].to(device)
        sums.index_add_(0, ids, out.sum(1).double())
        counts.index_add_(0, ids, torch.full((B,), float(V), dtype=torch.float64, device=device))
        done += B * V
        if log and (i + 1) % 20 == 0:
            rate = done / (time.time() - t0)
            log({"eval_views": done},
                f"  {what}: {done * world}/{len(dataset) * V} | {rate * world:.1f} views/s | "
                f"eta {fmt_time((len(shard) * V - done) / rate)}")
    all_reduce(sums), all_reduce(counts)
    return (sums / counts.clamp(min=1)[:, None]).float()


# ============================================================================= metrics and results


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


def counting_error(pred, counts):
    """UCFRep's metrics: MAE = mean |pred - true| / true (lower is better), OBO = share off by
    <= 1."""
    return {"count_error": ((pred - counts).abs() / counts.clamp(min=1)).mean().item(),
            "obo": 100 * ((pred.round() - counts).abs() <= 1).float().mean().item()}


def compute_metrics(task, scores, targets):
    """Per-video scores (softmax / sigmoid / count) against targets -> dict of metrics (% or error;
    mean_class_acc: the mean over the classes present of per-class accuracy)."""
    scores, targets = scores.cpu(), targets.cpu()
    if task == "count":
        return counting_error(scores[:, 0], targets.float())
    if task == "multi":
        return {"map": mean_average_precision(scores, targets)}
    top5 = scores.topk(min(5, scores.shape[1]), dim=1).indices
    per_class = [(top5[targets == c, 0] == c).float().mean() for c in targets.unique()]
    return {"top1": 100 * (top5[:, 0] == targets).float().mean().item(),
            "top5": 100 * (top5 == targets[:, None]).any(1).float().mean().item(),
            "mean_class_acc": 100 * torch.stack(per_class).mean().item()}   # FX-S1, UB-S1


def write_results(metrics, headline, name, *, setting, checkpoint, out_dir, results_file=None):
    """results.json in out_dir, one row appended to results_file (keyed by the setting: the preset
    or the dataset), a table."""
    row = {"setting": setting, "script": name, "metric": headline, "value": metrics[headline],
           **metrics, "checkpoint": checkpoint, "out_dir": out_dir}
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(row, f, indent=1)
    if results_file:
        os.makedirs(os.path.dirname(results_file) or ".", exist_ok=True)
        with open(results_file, "a") as f:
            f.write(json.dumps(row) + "\n")
    print_table([{"setting": setting, **metrics}], f"{name} results ({out_dir}/results.json):")
