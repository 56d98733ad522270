"""Full finetuning of a SMILE encoder (paper Table 17) and the SEVERE benchmark (Table 6 / 14).

    python finetune.py --preset tiny        # CPU demo: synthetic motion, minutes
    python finetune.py --preset tiny --checkpoint out/tiny/checkpoint-latest.pth
    torchrun --nproc_per_node=8 finetune.py --dataset k400 --data-root /data/k400 --checkpoint smile_k400.pth
    python finetune.py --preset severe-fx --data-root /data/finegym --checkpoint smile_k400.pth
    python finetune.py --severe-table out/severe/results.jsonl   # Table 6's columns and their mean
    python finetune.py -h                   # every flag, with the paper's values

Recipe (Table 17): AdamW lr 1e-3 x batch/256, wd 0.05 (none on biases and 1-D params), betas
(0.9, 0.999), layer-wise lr decay 0.75, cosine with 5 warm-up epochs, drop path 0.1, RandAug
(9, 0.5) in timm's convention, mixup 0.8, cutmix 1.0, label smoothing 0.1, head init scale 0.001; as
VideoMAE (SPEC 6), a random resized crop and random erasing (p 0.25). Test: softmax averaged over
temporal clips x spatial crops (5x3 K400, 2x3 SSv2 with TSN-style segments). Tasks beside
single-label classification (SEVERE): multi-label (Charades: sigmoid + BCE, mAP over classes) and
repetition counting (UCFRep: one regression output on the pooled features, trained with MSE on
standardised counts; metric UCFRep's "MAE", the absolute count error divided by the true count,
lower is better; off-by-one accuracy beside it).

Datasets, multi-view testing and metrics are evaluation.py's; this file holds the recipe. Same order
as train.py: args, dist, data, model, optimizer + schedule, resume, loop, test, teardown. --resume
continues bit-identically: the data stream is a pure function of (seed, epoch, index), and mixup,
cutmix and drop path draw from (seed, step, rank).
"""
import argparse
import json
import os
import time
from contextlib import nullcontext
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

import data
from augment import RandAug, mix_batch, randaug_sample, randaugment_batch, random_erase
from evaluation import (EVAL_DATASETS, add_data_args, build_classifier, build_datasets,
                        check_data_args, check_data_paths, compute_metrics, eval_collate, per_video,
                        read_checkpoint, write_results)
from model import classifier_state_dict
from runtime import (CheckpointClock, Log, Parser, StepGuard, adamw, add_run_args, amp_setup,
                     apply_presets, below_one, bounded, check_paths, check_ranks_agree,
                     cosine_schedule, describe_checkpoint, fail, fast_math, fmt_time, fraction,
                     make_out_dir, no_weight_decay, nonneg_float, nonneg_int, open_resume,
                     optimizer_step, positive_float, positive_int, print_table, resume, rng_state,
                     save_args, save_checkpoint, set_lr, setup_dist, teardown, wrap_model)

# ============================================================================= presets

# Finetuning schedules (Table 17); the datasets it does not list take K400's (ours).
SCHEDULES = {"k400": dict(epochs=100, batch_size=16), "ssv2": dict(epochs=40, batch_size=32)}

# SEVERE (Table 6 / 14): 8 settings, each finetuned with Table 17's SEVERE schedule (AdamW 1e-3,
# layer decay 0.75, batch 16, 100 epochs, RandAug, mixup/cutmix, drop path 0.1; label smoothing
# single-label only). Lists, one folder per source dataset given as --data-root:
#   ssv2: train.csv val.csv | gym99: gym99_train.csv gym99_val.csv |
#   ucf1k: <ucf101>/train.csv val.csv, 1,000 stratified clips | gym1k: <finegym>/gym99_train.csv,
#   1,000 clips | fx: fx_s1_train.csv fx_s1_val.csv | ub: ub_s1_train.csv ub_s1_val.csv |
#   ucfrc: ucfrep_train.csv ucfrep_val.csv (label = count) |
#   charades: charades_train.csv charades_val.csv (label = comma-separated class ids).
SEVERE_COMMON = dict(epochs=100, batch_size=16, lr=1e-3, layer_decay=0.75, drop_path=0.1)
GYM = ["gym99_train.csv", "gym99_val.csv"]
SEVERE = {
    "severe-ssv2": dict(dataset="ssv2", metric="top1"),
    "severe-gym99": dict(dataset="gym99", metric="top1", splits=GYM),
    "severe-ucf1k": dict(dataset="ucf101", metric="top1", train_samples=1000),
    "severe-gym1k": dict(dataset="gym99", metric="top1", train_samples=1000, splits=GYM),
    "severe-fx": dict(dataset="gym99", num_classes=11, metric="mean_class_acc",
                      splits=["fx_s1_train.csv", "fx_s1_val.csv"]),
    "severe-ub": dict(dataset="gym99", num_classes=15, metric="mean_class_acc",
                      splits=["ub_s1_train.csv", "ub_s1_val.csv"]),
    # counting needs the whole video in the clip: segment sampling; no mixup or
    # smoothing for a count
    "severe-ucfrc": dict(dataset="ucf101", task="count", metric="count_error", sampling="segment",
                         mixup=0.0, cutmix=0.0, label_smoothing=0.0, test_clips=1,
                         splits=["ucfrep_train.csv", "ucfrep_val.csv"]),
    "severe-charades": dict(dataset="list", task="multi", num_classes=157, metric="map",
                            sampling="segment", label_smoothing=0.0, test_clips=2, test_crops=3,
                            splits=["charades_train.csv", "charades_val.csv"]),
}
# --preset tiny: the 2-core CPU demo on `motion`, on the grid of train.py's tiny pretraining: 640
# steps, no mixup / cutmix / RandAug / erasing / drop path / crop (motion clips as rendered), and
# lr 4e-3 per 256, where every start trains, random initialisation included (at 1.6e-2 a random
# start mostly stalls; at 1e-3, 320 steps left even the demo's encoder at 26-32%: docs/demo.md).
PRESETS = {
    "tiny": dict(dataset="motion", model="tiny", patch_size=8, tubelet=2, img_size=32, num_frames=8,
                 motion_train=2048, motion_val=1024, epochs=10, warmup_epochs=1, batch_size=32, lr=4e-3,
                 layer_decay=0.75, mixup=0.0, cutmix=0.0, randaug_n=0, reprob=0.0, crop="none",
                 drop_path=0.0, workers=1, log_every=8, out_dir="out/finetune-tiny"),
    **{name: {**SEVERE_COMMON, **p, "out_dir": f"out/severe/{name[7:]}",
              "results_file": "out/severe/results.jsonl"} for name, p in SEVERE.items()},
}
# flags whose change makes a checkpoint unloadable / a resumed run another run
# (runtime.open_resume)
SHAPE_FLAGS = ("model", "img_size", "patch_size", "tubelet", "num_frames", "task", "num_classes")
SCHEDULE_FLAGS = ("batch_size", "accum_iter", "epochs", "warmup_epochs", "lr", "min_lr",
                  "layer_decay", "dataset", "train_list", "seed", "linear_probing")

# ============================================================================= finetuning pieces


def layer_decay_groups(model, weight_decay, layer_decay):
    """AdamW groups with layer-wise lr decay (Table 17: 0.75). patch_embed = layer 0, block i
    = layer i + 1, fc_norm / head = layer L + 1; lr_scale = decay^(L + 1 - layer). No weight decay
    on biases / 1-D params."""
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
        no_wd = no_weight_decay(name, p)
        g = groups.setdefault((layer, no_wd),
                              {"params": [], "weight_decay": 0.0 if no_wd else weight_decay,
                               "lr_scale": layer_decay ** (depth + 1 - layer), "layer": layer})
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def soft_targets(labels, task, num_classes, smoothing):
    """Targets as floats: one-hot with label smoothing (single), multi-hot (multi), the
    count (count)."""
    if task == "single":
        return F.one_hot(labels, num_classes).float() * (1 - smoothing) + smoothing / num_classes
    return labels.float().view(len(labels), -1)


def loss_fn(task, out, target):
    """Soft-target cross-entropy (single), BCE on sigmoids (multi), MSE on standardised counts
    (count: the normalised L1 of the metric itself has sign-only gradients and settles on the
    median count)."""
    if task == "single":
        return torch.sum(-target * F.log_softmax(out, dim=-1), dim=-1).mean()
    if task == "multi":
        return F.binary_cross_entropy_with_logits(out, target)
    return F.mse_loss(out, target)


# ============================================================================= SEVERE's table


SEVERE_COLUMNS = [("severe-ssv2", "SSv2"), ("severe-gym99", "Gym99"),
                  ("severe-ucf1k", "UCF (10^3)"), ("severe-gym1k", "GYM (10^3)"),
                  ("severe-fx", "FX-S1"), ("severe-ub", "UB-S1"),
                  ("severe-ucfrc", "UCF-RC"), ("severe-charades", "Charades")]


def severe_table(path):
    """Print SEVERE results in Table 6's order with their mean. The last row of each setting counts.
    Mean convention: accuracies and mAP in %, UCF-RC (an error, lower is better) enters as
    100 * (1 - error)."""
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
    mean = (f"{np.mean(vals):.1f}" + ("" if len(vals) == 8 else f" ({len(vals)} of 8)")
            if vals else "-")
    shown["Mean"] = mean
    print_table([shown], f"SEVERE (Table 6) from {path}; UCF-RC = mean count error "
                         "(lower is better), entering the mean as 100 * (1 - error)")
    return shown


# ============================================================================= args


def get_args(argv=None):
    """Parse and check the flags; no side effects (folders are made and checkpoints read
    in main)."""
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", choices=sorted(PRESETS),
      help="tiny = the 2-core CPU demo; severe-* = Table 6's settings")
    a("--severe-table", metavar="RESULTS_JSONL",
      help="print Table 6 from a --results-file and exit")
    add_data_args(a)
    a("--metric", default=None, choices=["top1", "mean_class_acc", "map", "count_error"],
      help="headline metric (default: top1 / map / count_error by task)")
    # model and optimisation (Table 17)
    a("--drop-path", type=below_one, default=0.1, help="stochastic depth (Table 17: 0.1)")
    a("--head-init-scale", type=nonneg_float, default=0.001,
      help="head weights x this at init (Table 17: 0.001)")
    a("--epochs", type=positive_int, default=100, help="Table 17: 100 K400, 40 SSv2; SEVERE 100")
    a("--warmup-epochs", type=nonneg_float, default=5, help="Table 17: 5")
    a("--batch-size", type=positive_int, default=16,
      help="total clips per optimizer step over all ranks and --accum-iter micro-steps "
      "(Table 17: 16 K400, 32 SSv2)")
    a("--accum-iter", type=positive_int, default=1,
      help="micro-steps per optimizer step (gradient accumulation)")
    a("--lr", type=positive_float, default=1e-3,
      help="base lr for a batch of 256 (actual = lr * batch / 256)")
    a("--min-lr", type=nonneg_float, default=1e-6,
      help="cosine floor for a batch of 256, scaled like --lr (VideoMAE: 1e-6)")
    a("--weight-decay", type=nonneg_float, default=0.05)
    a("--betas", type=below_one, nargs=2, default=[0.9, 0.999])
    a("--compile", action="store_true",
      help="torch.compile the classifier for training (after DDP: the all-reduce overlaps)")
    a("--layer-decay", type=fraction, default=0.75, help="layer-wise lr decay (Table 17: 0.75; the "
      "reference's SSv2 script: 0.7)")
    a("--label-smoothing", type=fraction, default=0.1, help="Table 17: 0.1 (single-label only)")
    a("--mixup", type=nonneg_float, default=0.8, help="mixup alpha (Table 17: 0.8); 0 = off")
    a("--cutmix", type=nonneg_float, default=1.0, help="cutmix alpha (Table 17: 1.0); 0 = off")
    a("--randaug-n", type=nonneg_int, default=2,
      help="RandAugment ops per clip, timm's convention (Table 17's RandAug (9, 0.5) = timm's "
      "rand-m9-mstd0.5-inc1, n defaulting to 2; the reference runs rand-m7-n4-mstd0.5-inc1); 0 "
      "= off")
    a("--randaug-m", type=bounded(float, 0, 10), default=9,
      help="RandAugment magnitude out of timm's 10 (Table 17: 9; reference 7): m=9 rotates up "
      "to 27 degrees, shears up to 0.27")
    a("--randaug-mstd", type=nonneg_float, default=0.5,
      help="std of the Gaussian noise on the magnitude, drawn per op and clip (Table 17: 0.5)")
    a("--crop", default="rrc", choices=["rrc", "multiscale", "none"],
      help="training crop: rrc = VideoMAE's random resized crop (SPEC 6), multiscale "
      "= MultiScaleCrop (pretraining's), none = the whole frame")
    a("--crop-scale", type=fraction, nargs=2, default=[0.25, 1.0], metavar=("LO", "HI"),
      help="rrc: area fraction range (the SMILE reference: 0.25 1.0; VideoMAE: 0.08 1.0)")
    a("--crop-ratio", type=positive_float, nargs=2, default=[3 / 4, 4 / 3], metavar=("LO", "HI"),
      help="rrc: aspect (w / h) range (VideoMAE and the reference: 3/4 4/3)")
    a("--reprob", type=fraction, default=0.25,
      help="random erasing probability per clip (VideoMAE: 0.25); 0 = off")
    a("--remode", default="pixel", choices=["pixel", "rand", "const"],
      help="erased box filled with N(0, 1) per pixel / per channel, or 0 (VideoMAE: pixel)")
    a("--recount", type=nonneg_int, default=1, help="erased boxes per clip (VideoMAE: 1)")
    a("--linear-probing", action="store_true",
      help="freeze the encoder, train fc_norm and head only, everything else as finetuning: the "
      "linear probe behind the paper's Table 1 (SIGMA, QUVA-Lab/SIGMA run_class_finetuning.py "
      "--linear_probing; docs/evaluation.md)")
    # run
    add_run_args(a, out_dir="out/finetune", log_every=20)
    a("--results-file", default=None,
      help="append the result as a JSON row (keyed by setting) to this file")
    a("--eval-only", action="store_true",
      help="test --checkpoint (a finetuned classifier) and exit")
    a("--eval-every", type=nonneg_int, default=0,
      help="epochs between validations during training; 0 = at the end only")
    # dataset tables first, the preset last: a preset's values win over its dataset's; flags
    # win over both
    tables = [("preset", PRESETS), ("dataset", EVAL_DATASETS), ("dataset", SCHEDULES),
              ("preset", PRESETS)]
    args = apply_presets(p, tables, argv)
    if args.severe_table:
        return args
    args.metric = args.metric or {"single": "top1", "multi": "map",
                                  "count": "count_error"}[args.task]
    check_data_args(args)
    return args


def make_augment(args):
    """The clip augmentation of the training set (Table 17: RandAugment, timm's convention), or
    None: the worker only draws each clip's ops (augment.randaug_sample, from the sample's rng as
    timm's RandAugment does); the step applies them on the device (augment.randaugment_batch)."""
    if not args.randaug_n:
        return None
    return partial(randaug_sample, RandAug(args.randaug_n, args.randaug_m, args.randaug_mstd))


def crop_args(args):
    """The training crop (VideoMAE: random resized crop) as evaluation.build_datasets' keywords."""
    return dict(crop=args.crop, crop_scale=args.crop_scale, crop_ratio=args.crop_ratio)


# ============================================================================= main


def main(argv=None):
    # ------------------------------------------------------------------ args + dist
    args = get_args(argv)
    if args.severe_table:
        check_paths(("--severe-table", args.severe_table, "file"))
        return severe_table(args.severe_table)
    check_data_paths(args)
    rank, world, device = setup_dist(args.device)
    master = rank == 0
    if args.batch_size % (world * args.accum_iter):
        fail(f"--batch-size {args.batch_size} does not split over {world} ranks x --accum-iter "
             f"{args.accum_iter}")
    per_micro = args.batch_size // world // args.accum_iter   # clips per rank and micro-step
    make_out_dir(args.out_dir)
    shape = {k: getattr(args, k) for k in SHAPE_FLAGS}
    found = open_resume(args.resume, args.out_dir, master, "finetune.py", shape,   # before any work
                        {k: getattr(args, k) for k in SCHEDULE_FLAGS}, args.accept_changes)
    state = read_checkpoint(args)
    num_outputs = 1 if args.task == "count" else args.num_classes
    if args.eval_only and state is not None:   # tests the checkpoint's head: it must be there
        head = classifier_state_dict(state).get("head.weight")
        if head is None or head.shape[0] != num_outputs:
            fail(f"--eval-only tests a finetuned classifier, and --checkpoint {args.checkpoint} is "
                 f"{describe_checkpoint(state)}, with "
                 + ("no classifier head: drop --eval-only to finetune it" if head is None else
                    f"a head of {head.shape[0]} outputs (this command: {num_outputs}): pass its "
                    f"--num-classes / --task"))
    torch.manual_seed(args.seed)
    fast_math(device, args.workers)
    log = Log(args.out_dir, master, args.tensorboard, args)

    # ------------------------------------------------------------------ data
    try:   # each clip's RandAugment draw travels with it (make_augment), for the step
        train_set, val_set = build_datasets(
            args.dataset, args.task, args.num_classes, num_frames=args.num_frames,
            img_size=args.img_size, seed=args.seed, data_root=args.data_root,
            train_list=args.train_list, val_list=args.val_list, train_samples=args.train_samples,
            sampling=args.sampling, stride=args.stride, flip=args.flip, test_clips=args.test_clips,
            test_crops=args.test_crops, motion_train=args.motion_train, motion_val=args.motion_val,
            motion_backgrounds=args.motion_backgrounds, augment=make_augment(args),
            crop=crop_args(args))
    except (OSError, ValueError) as e:
        # missing list, malformed line, label out of range: before any work
        fail(str(e))
    sampler = data.ResumableSampler(train_set, world, rank, seed=args.seed, shuffle=True,
                                    drop_last=True)
    loader = data.loader(train_set, sampler, per_micro, args.workers, device, eval_collate)
    steps_per_epoch = len(train_set) // world // (per_micro * args.accum_iter)
    if steps_per_epoch == 0 and not args.eval_only:
        unit = world * args.accum_iter                      # --batch-size must be a multiple
        fits = len(train_set) // world * world // unit * unit
        fail(f"{len(train_set)} training clips cannot fill one step of "
             f"{per_micro * args.accum_iter} on each of {world} ranks: "
             + (f"lower --batch-size to <= {fits} or " if fits else "") + "add videos")
    total_steps = args.epochs * steps_per_epoch

    # ------------------------------------------------------------------ model
    raw_model = build_classifier(
        state, num_outputs, model=args.model, patch_size=args.patch_size, tubelet=args.tubelet,
        img_size=args.img_size, num_frames=args.num_frames, path=args.checkpoint,
        drop_path=args.drop_path, head_init_scale=args.head_init_scale, verbose=master).to(device)
    if args.linear_probing:   # SIGMA's probe: the blocks frozen (drop path still on), LayerNorm + head
        for name, p in raw_model.named_parameters():
            p.requires_grad_(name.startswith(("fc_norm.", "head.")))
    # counting: the head predicts (count - mean) / std of the training counts, so it starts
    # near the mean
    targets = train_set.targets().float()
    count_stats = (targets.mean().item(), targets.std().clamp(min=1).item()) \
        if args.task == "count" else (0.0, 1.0)
    if isinstance(state, dict) and "count_stats" in state:
        count_stats = tuple(state["count_stats"])
    model = wrap_model(raw_model, device, world, args.compile)   # DDP, then compile
    autocast, scaler, _ = amp_setup(device, args.amp)

    def predict(video):   # -> per-view scores: softmax (single), sigmoid (multi), count (count)
        with autocast():
            out = raw_model(video).float()
        return {"single": lambda: out.softmax(-1), "multi": lambda: out.sigmoid(),
                "count": lambda: out * count_stats[1] + count_stats[0]}[args.task]()

    def evaluate(what):
        raw_model.eval()
        scores = per_video(predict, val_set, num_outputs, per_micro, args.workers, rank, world,
                           device, log, what)
        raw_model.train()
        return compute_metrics(args.task, scores, val_set.targets())

    # ------------------------------------------------------------------ optimizer + schedule
    optimizer = adamw(layer_decay_groups(raw_model, args.weight_decay, args.layer_decay),
                      args.betas, device)
    lr = args.lr * args.batch_size / 256           # linear scaling rule (Table 17)
    min_lr = args.min_lr * args.batch_size / 256   # scaled alike, as VideoMAE does
    lrs = cosine_schedule(lr, min_lr, total_steps, int(args.warmup_epochs * steps_per_epoch))

    # ------------------------------------------------------------------ resume
    step, _ = resume(found, master, raw_model, optimizer, scaler, steps_per_epoch)
    check_ranks_agree(step, {k: getattr(args, k) for k in SHAPE_FLAGS}, device)

    def checkpoint(step):
        save_checkpoint({"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict() if scaler is not None else {}, "step": step,
                         "epoch": step / steps_per_epoch, "rng": rng_state(),
                         "count_stats": list(count_stats), "args": vars(args)},
                        os.path.join(args.out_dir, "checkpoint-latest.pth"))

    # ------------------------------------------------------------------ loop
    end_step = 0 if args.eval_only else min(total_steps, args.steps) if args.steps else total_steps
    if master:
        save_args(args, args.out_dir)
        if end_step:
            print(f"finetuning {args.model} on {args.dataset} ({len(train_set)} clips, task "
                  f"{args.task}, {num_outputs} outputs) | {world} rank(s) on {device} | "
                  f"{total_steps} steps ({steps_per_epoch} per epoch), lr {lr:.2e} | running to "
                  f"step {end_step}", flush=True)
    # every random draw of a step is a pure function of (seed, step, rank): --resume replays it
    guard = StepGuard(len(train_set), 1.0, args.max_nonfinite, rank,   # bad items: skipped, named
                      os.path.join(args.out_dir, "checkpoint-latest.pth"))
    saver = CheckpointClock(args.ckpt_minutes, args.ckpt_every)
    window = {"t0": time.time(), "clips": 0, "loss": torch.zeros((), device=device), "n": 0}
    while step < end_step:
        epoch, offset = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, start=offset * args.batch_size // world,   # -> train_set.set_epoch
                          state=dict(epoch=epoch))
        batches = iter(loader)
        for _ in range(offset, steps_per_epoch):
            # ---- fetch
            micro = [next(batches) for _ in range(args.accum_iter)]
            rng = np.random.default_rng([args.seed, step, rank])   # mixup / cutmix / drop path
            torch.manual_seed(int(rng.integers(2 ** 62)))

            # ---- one optimizer step (Table 17's recipe); skipped on every rank when not finite
            set_lr(optimizer, lrs[step])
            loss = torch.zeros((), device=device)
            for i, batch in enumerate(micro):
                video = batch["video"].to(device, non_blocking=True)   # uint8 (B, C, T, H, W)
                if "flip" in batch:   # the worker's flips, done here (data.infuse), then RandAugment
                    video = data.infuse({"video": video,
                                         "flip": batch["flip"].to(device, non_blocking=True)})
                if "randaug_op" in batch:   # the worker's RandAugment draws, applied after the flip
                    video = randaugment_batch(video, batch["randaug_op"], batch["randaug_arg"])
                video = data.normalize(video)
                # before mixup
                video = random_erase(video, args.reprob, rng, args.remode, args.recount)
                target = soft_targets(batch["label"], args.task, num_outputs, args.label_smoothing)
                target = target.to(device, non_blocking=True)
                if args.task == "count":   # the head regresses standardised counts
                    target = (target - count_stats[0]) / count_stats[1]
                else:
                    video, target = mix_batch(video, target, rng, args.mixup, args.cutmix)
                sync = i == len(micro) - 1 or not hasattr(model, "no_sync")
                with (nullcontext() if sync else model.no_sync()), autocast():
                    micro_loss = loss_fn(args.task, model(video).float(), target) / args.accum_iter
                (scaler.scale(micro_loss) if scaler else micro_loss).backward()
                loss += micro_loss.detach()
            if not guard.check(loss[None], [b for m in micro for b in m["bad"]], step):
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer_step(optimizer, scaler)
            step += 1

            # ---- log, checkpoint, validate
            window["loss"] += loss
            window["clips"] += len(micro) * micro[0]["video"].shape[0] * world
            window["n"] += 1
            if step % args.log_every == 0 or step == end_step:
                dt, n = time.time() - window["t0"], window["n"]
                rec = {"step": step, "epoch": round(step / steps_per_epoch, 3),
                       "loss": window["loss"].item() / n, "lr": float(lrs[step - 1]),
                       "clips_per_s": window["clips"] / dt, "time": time.time()}
                log(rec, f"step {step}/{end_step} | ep {rec['epoch']:.2f} | loss {rec['loss']:.4f} "
                         f"| lr {rec['lr']:.2e} | {rec['clips_per_s']:.1f} clips/s | eta "
                         f"{fmt_time((end_step - step) * dt / n)}")
                window = {"t0": time.time(), "clips": 0, "loss": torch.zeros((), device=device),
                          "n": 0}
            if master and (saver.due(step) or step == end_step or guard.stop):
                checkpoint(step)
                saver.done()
            guard.exit_if_preempted(step, world, device)
            if step % steps_per_epoch == 0 and args.eval_every and step < end_step \
                    and (step // steps_per_epoch) % args.eval_every == 0:
                metrics = evaluate(f"val epoch {step // steps_per_epoch}")
                log({"step": step, "epoch": step // steps_per_epoch, **metrics},
                    f"val epoch {step // steps_per_epoch}: "
                    + " | ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
            if step >= end_step:
                break

    # ------------------------------------------------------------------ test + teardown
    metrics = evaluate("test")
    if master:
        log({"step": step, "test": metrics})
        write_results(metrics, args.metric, "finetune", setting=args.preset or args.dataset,
                      checkpoint=args.checkpoint, out_dir=args.out_dir,
                      results_file=args.results_file)
        log.finish(os.path.join(args.out_dir, "checkpoint-latest.pth"))
    teardown(world, device)
    return metrics


if __name__ == "__main__":
    main()
