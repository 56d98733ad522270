"""SMILE pretraining (Sec. 3, 4.1, F.3): motion-infused clips, trajectory masking, CLIP targets.

    python train.py --preset tiny     # CPU demo: synthetic data, minutes
    torchrun --nproc_per_node=8 train.py --dataset k400 --data-root /data/k400 --objects /data/pin
    python train.py -h                # every flag, with the paper's values

One flat script in the order the method runs: args, dist, data, model + teacher, optimizer +
schedule, resume, loop, teardown. The run plumbing (DDP, amp, checkpoints, the log) is runtime.py's.
"""
import argparse
import os
import time

import numpy as np
import torch

import data
import masking
import motion
import teacher as teacher_lib
from model import MODEL_SIZES, PretrainModel
from runtime import (CheckpointClock, Log, LogWindow, Parser, StepGuard, adamw, add_run_args,
                     amp_setup, apply_presets, below_one, check_paths, check_ranks_agree,
                     cosine_schedule, fail, fast_math, finite_float, fmt_time, fraction,
                     make_out_dir, no_weight_decay, nonneg_float, nonneg_int, open_resume,
                     optimizer_step, positive_float, positive_int, prune_checkpoints, resume,
                     rng_state, save_args, save_checkpoint, schedule_summary, set_lr, setup_dist,
                     teardown, to_device, train_step, wrap_model)

# ============================================================================= presets

# Dataset presets (SPEC 5, Table 18): the parser's defaults (apply_presets); command-line flags win.
PRETRAIN_DATASETS = {
    "k400": dict(source="video", stride=4, flip=True, epochs=600),
    "ssv2": dict(source="video", stride=2, flip=False, epochs=800),
    "list": dict(source="video"),
    # Table 7 / Appendix D: no natural video. Progressive stage 2 would train on empty clips here,
    # so motion is on throughout (strategy single) unless asked otherwise.
    "noise": dict(source="noise", strategy="single"),
    "black": dict(source="black", strategy="single"),
    "images": dict(source="images", strategy="single"),
    # procedural landscape stills (motion.still_image), one fixed image per item: images with no download
    "stills": dict(source="stills", strategy="single"),
    "frames": dict(source="frames", strategy="single"),
}
PRESETS = {
    # the CPU demo (README's first command), chosen by measurement on 2 cores: see docs/demo.md
    # (batch 16: at 5e-4 per step or more the encoder transferred worse than a random one; 64
    # epochs: at 32 its finetuning gain over a random encoder was inside the seed noise)
    "tiny": dict(dataset="stills", model="tiny", img_size=32, num_frames=8, patch_size=8, tubelet=2,
                 target="pixel", batch_size=16, lr=4e-3, min_lr=1e-4, warmup_epochs=1,
                 epochs=64, synthetic_length=1024, object_size=[64, 160], workers=1, log_every=32,
                 save_every=16, out_dir="out/tiny"),
    # Table 4's base setting (Sec. 4.3): ViT-S, mask 90%, motion on throughout, 400 epochs of K400_m,
    # two objects, trajectory masking, CLIP targets. The README's ablation table adds one flag per row.
    "ablation": dict(model="small", mask_ratio=0.9, strategy="single", epochs=400, num_objects=2,
                     masking="trajectory", target="clip", out_dir="out/ablation"),
    # The recipe the released checkpoints were trained with: fmthoker/SMILE's
    # scripts/pretrain/k400/*.slurm and run_mae_pretraining.py as they ran, where they depart from
    # the paper's text (docs/differences.md). Each stage: --epochs 801 planned, stopped at
    # checkpoint 150, so the lr barely decays (lr_schedule); stage 1's script lost
    # --multiple_sampling to a missing backslash (one clip per video: 150 effective epochs), stage 2
    # feeds each clip twice with two masks (150 passes = 300 effective epochs); CLIP sees the
    # ImageNet-normalised frames; no flip (its pretraining loader never flips). Epochs per dataset:
    # REFERENCE_RUNS.
    "reference": dict(schedule="reference", planned_epochs=801, stage1_epochs=150, epochs=450,
                      repeated_sampling=["off", "same-crop"], teacher_norm="imagenet", flip=False,
                      stage2_schedule="restart", out_dir="out/reference"),
}
# --preset reference, per dataset, applied after the dataset table. K400: 150 + 150 passes (the
# scripts). SSv2 has no pretraining script in the repository: the K400 scripts with SSv2's stride
# and the paper's 400 + 400, counted as the scripts count 150 + 150 passes as 300 + 300 (200
# passes per stage).
REFERENCE_RUNS = {"k400": dict(stage1_epochs=150, epochs=450),
                  "ssv2": dict(stage1_epochs=200, epochs=600)}
# flags whose change makes a checkpoint unloadable / a resumed run another (runtime.open_resume)
SHAPE_FLAGS = ("model", "img_size", "patch_size", "tubelet", "num_frames", "target", "teacher")
SCHEDULE_FLAGS = ("batch_size", "accum_iter", "epochs", "stage1_epochs", "warmup_epochs", "lr",
                  "min_lr", "dataset", "train_list", "num_sample", "strategy", "seed",
                  "synthetic_length", "schedule", "planned_epochs", "repeated_sampling")


def get_args(argv=None):
    """Parse and check the flags; no side effects (main makes folders and reads checkpoints)."""
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", choices=sorted(PRESETS), help="bundle of overrides; tiny = the 2-core CPU demo, "
      "ablation = Table 4's base setting (ViT-S, mask 0.9, single, 400 epochs), reference = the "
      "official scripts as they ran (the released checkpoints' recipe; with --dataset k400/ssv2)")
    # data
    a("--dataset", default="k400", choices=sorted(PRETRAIN_DATASETS),
      help="k400/ssv2 read <data-root>/train.csv; list reads --train-list; "
      "noise/black/images/frames are Table 7's backgrounds; stills = procedural landscape images")
    a("--data-root", default="", help="folder that list paths are relative to")
    a("--train-list", help="list file '<path> <label>' (default <data-root>/train.csv)")
    a("--image-dir", default=None, help="folder of still images for --dataset images")
    a("--synthetic-length", type=positive_int, default=80000,
      help="clips per pass for noise/black backgrounds (Table 7: 80K, the size of K400_m)")
    a("--frame-pick", default="fixed", choices=["fixed", "per-pass"],
      help="--dataset frames: one frame per video chosen once from the seed (Table 7's fixed "
      "K400m-1frm set), or a new one every pass")
    a("--num-frames", type=positive_int, default=16, help="T, frames per clip (Sec. 4.1: 16)")
    a("--stride", type=positive_int, default=4,
      help="temporal stride (Table 18: 4 for K400, 2 for SSv2)")
    a("--img-size", type=positive_int, default=224)
    a("--flip", action=argparse.BooleanOptionalAction, default=True,
      help="horizontal flip (Table 18: K400 yes, SSv2 no)")
    a("--num-sample", type=positive_int, default=2,
      help="clips per decoded video, repeated sampling (F.3: 2)")
    a("--repeated-sampling", nargs="+", default=["independent"],
      choices=["independent", "same-crop", "off"], metavar="MODE",
      help="what an item's --num-sample clips share; one mode, or stage 1's and stage 2's "
      "(progressive): independent = each clip its own crop, flip, objects and mask (F.3); "
      "same-crop = one crop and flip, own objects and mask (the reference's stage 2); off = each "
      "clip from another video, a step of batch different videos (the reference's stage 1)")
    a("--workers", type=nonneg_int, default=8,
      help="data loader processes per rank (docs/performance.md: how many a GPU needs)")
    a("--max-bad-fraction", type=fraction, default=0.01,
      help="stop when more than this share of the items are unreadable")
    # motion (Sec. 3.3)
    a("--strategy", default="progressive", choices=["progressive", "mixed", "single", "none"],
      help="Table 4d: progressive 79.8 > mixed 79.5 > single 78.9; none = SMILE w/o motion")
    a("--stage1-epochs", type=nonneg_float, default=None,
      help="progressive: epochs with motion before plain clips (default: half of --epochs, as the "
      "paper's 300 + 300 and 400 + 400)")
    a("--stage2-schedule", default="restart", choices=["restart", "continue"],
      help="progressive: restart the optimizer and warm-up + cosine for stage 2, as the paper's "
      "two-job runs did; or one schedule")
    a("--objects", default=None, help="folder of RGBA object PNGs (PIN synthetic set), or the "
      "file `python -m tools.prepare objects` packs it into; default: built-in shapes")
    a("--object-list", default=None,
      help="file of PNG paths relative to --objects, one per line: the subset the paper drew from "
      "(the reference's annotation_files/object_instances.txt)")
    a("--num-objects", type=nonneg_int, default=2, help="objects per clip (Table 4f: 1 < 2 ~ 3)")
    a("--object-size", type=positive_int, nargs=2, default=[32, 128], metavar=("LO", "HI"),
      help="object side range in px at 224 (Sec. 4.1)")
    a("--angle-range", type=finite_float, nargs=2, default=[-90, 90], metavar=("LO", "HI"),
      help="keyframe rotation in degrees (Table 4c: 0 0 = scaling only)")
    a("--scale-range", type=positive_float, nargs=2, default=[0.5, 1.5], metavar=("LO", "HI"),
      help="keyframe scale (Table 4c: 1 1 = rotation only; both = no transformation)")
    a("--masking", default="trajectory", choices=["trajectory", "tube"],
      help="Table 4g: trajectory +~1%%")
    a("--mask-ratio", type=fraction, default=0.8, help="Table 4e: 0.8 > 0.9 > 0.95")
    # model and target
    a("--model", default="base", choices=["tiny", "small", "base"],
      help="ViT size (small = ViT-S, base = ViT-B)")
    a("--patch-size", type=positive_int, default=16)
    a("--tubelet", type=positive_int, default=2)
    a("--target", default="clip", choices=["clip", "pixel"],
      help="Table 4b: CLIP features (default) or pixels")
    a("--teacher", default="ViT-B-16", help="open_clip model name (or a model-config JSON), or "
      "timm:<name> for a timm ViT (Table 4b): timm:vit_base_patch16_224.mae, "
      "timm:vit_base_patch16_224.dino, timm:vit_base_patch14_dinov2.lvd142m (run at the student's "
      "grid: 196 px under 224/16)")
    a("--teacher-weights", default="openai",
      help="open_clip: a pretrained tag (openai) or a local file (ViT-B-16.pt); timm: 'timm' "
      "= timm's own weights for the tag in the name, or a local file; none = random weights, for "
      "smoke tests")
    a("--teacher-norm", default="clip", choices=["clip", "imagenet"],
      help="clip: the teacher's own mean/std (CLIP's for open_clip, pretrained_cfg's for timm); "
      "imagenet: feed the ImageNet-normalised frames unchanged, as the reference code does")
    a("--norm-pix", action=argparse.BooleanOptionalAction, default=True,
      help="pixel target: per-tubelet normalisation (VideoMAE)")
    # optimisation (SPEC 5, Table 18)
    a("--epochs", type=positive_int, default=600,
      help="effective epochs = passes x num-sample (K400 600, SSv2 800)")
    a("--warmup-epochs", type=nonneg_float, default=40)
    a("--schedule", default="cosine", choices=["cosine", "reference"],
      help="cosine: warm-up + cosine to --min-lr over each stage (Table 18); reference: the "
      "official scripts' lr as it ran, a cosine planned for --planned-epochs stopped at the end "
      "of each stage (lr_schedule)")
    a("--planned-epochs", type=positive_int, default=801,
      help="--schedule reference: the epochs each stage's cosine is planned for (the scripts' "
      "--epochs 801)")
    a("--batch-size", type=positive_int, default=256,
      help="total clips per optimizer step over all ranks and --accum-iter micro-steps "
      "(paper: 256)")
    a("--accum-iter", type=positive_int, default=1,
      help="micro-steps per optimizer step (gradient accumulation: fewer GPUs, same total batch)")
    a("--lr", type=positive_float, default=1.5e-4,
      help="base lr for a total batch of 256 (actual = lr * batch / 256)")
    a("--min-lr", type=nonneg_float, default=1e-5, help="cosine floor, scaled like --lr")
    a("--weight-decay", type=nonneg_float, default=0.05)
    a("--betas", type=below_one, nargs=2, default=[0.9, 0.95])
    a("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"],
      help="auto: bf16 on GPUs of compute capability >= 8 (A100, H100), fp16 + loss scaler on "
      "older ones (V100), fp32 on CPU")
    a("--compile", action="store_true", help="torch.compile the student and the teacher")
    a("--grad-checkpointing", action="store_true",
      help="recompute activations in backward: less memory, slower")
    add_run_args(a, out_dir="out/pretrain", log_every=50)
    a("--seed", type=nonneg_int, default=0)
    a("--save-every", type=nonneg_int, default=50, help="effective epochs between kept checkpoints")
    a("--keep", type=nonneg_int, default=3, help="periodic checkpoints kept")
    a("--device", default=None, help="cpu / cuda (default: cuda when available)")
    # A preset may name a dataset (tiny: stills), so the dataset table is read once the preset is
    # known, then the preset again so that its own values win over its dataset's; flags over both.
    tables = [("preset", PRESETS), ("dataset", PRETRAIN_DATASETS), ("preset", PRESETS)]
    if p.parse_known_args(argv)[0].preset == "reference":   # its epochs differ per dataset
        tables.append(("dataset", REFERENCE_RUNS))
    return check_args(apply_presets(p, tables, argv))


def check_args(args):
    """One-line errors for flags that cannot work, before any work; derived values set. -> args"""
    args.source = PRETRAIN_DATASETS[args.dataset]["source"]
    args.stage1_epochs = args.epochs / 2 if args.stage1_epochs is None else args.stage1_epochs
    side = args.img_size // args.patch_size
    checks = [
        (0 < args.mask_ratio < 1, f"--mask-ratio must lie in (0, 1), got {args.mask_ratio}"),
        (args.num_frames % args.tubelet == 0,
         f"--num-frames {args.num_frames} is not divisible by --tubelet {args.tubelet}"),
        (args.img_size % args.patch_size == 0,
         f"--img-size {args.img_size} is not divisible by --patch-size {args.patch_size}"),
        (args.strategy != "mixed" or args.num_sample % 2 == 0,
         "--strategy mixed needs an even --num-sample (half the clips with motion, half without)"),
        (args.strategy != "progressive" or 0 < args.stage1_epochs < args.epochs,
         f"--strategy progressive needs 0 < --stage1-epochs ({args.stage1_epochs:g}) < --epochs "
         f"({args.epochs})"),
        (args.source != "images" or args.image_dir,
         "--dataset images needs --image-dir, a folder of images"),
        (args.object_list is None or args.objects,
         "--object-list needs --objects (the folder it is relative to)"),
        (len(args.repeated_sampling) <= 2,
         "--repeated-sampling takes one mode, or two (stage 1's and stage 2's)"),
        (args.schedule != "reference" or args.stage2_schedule == "restart",
         "--schedule reference restarts each stage, as the scripts' two jobs: it needs "
         "--stage2-schedule restart"),
    ]
    for ok, msg in checks:
        if not ok:
            fail(msg)
    if masking.num_masked(1, side, side, args.mask_ratio) < 1:
        fail(f"--mask-ratio {args.mask_ratio} masks no token of a {side}x{side} patch grid")
    if args.source in ("video", "frames") and args.train_list is None:
        args.train_list = os.path.join(args.data_root, "train.csv")
    return args


def check_files(args):
    """Each path flag for what it must be, in main before any work (get_args reads no file)."""
    lists, clip = args.source in ("video", "frames"), args.target == "clip"
    local = os.sep in args.teacher_weights or args.teacher_weights.endswith(
        (".pt", ".pth", ".bin", ".safetensors"))               # a file, not a tag
    check_paths(("--data-root", args.data_root if lists else None, "folder"),
                ("--train-list", args.train_list if lists else None, "file"),
                ("--image-dir", args.image_dir if args.source == "images" else None, "folder"),
                ("--objects", args.objects, "path"), ("--object-list", args.object_list, "file"),
                ("--teacher", args.teacher if clip and args.teacher.endswith(".json") else None,
                 "file"),
                ("--teacher-weights", args.teacher_weights if clip and local else None, "file"))


# =========================================================================== data, target, schedule


def build_objects(args):
    """The object bank O (Sec. 3.3): a folder of RGBA PNGs, or built-in textured shapes instead."""
    if args.objects:
        return motion.ObjectBank(args.objects, list_file=args.object_list)
    return motion.synthetic_objects(256, np.random.default_rng(args.seed), size=128)


def build_dataset(args):
    items = None
    if args.source in ("video", "frames"):
        items = data.read_list(args.train_list, args.data_root or None)
    elif args.source == "images":
        items = motion.image_items(args.image_dir)
    return data.PretrainDataset(
        args.source, items=items, length=args.synthetic_length, num_frames=args.num_frames,
        stride=args.stride, img_size=args.img_size, flip=args.flip, num_sample=args.num_sample,
        objects=build_objects(args) if args.strategy != "none" else None,
        num_objects=args.num_objects, motion=motion_for_stage(args.strategy, 1),
        masking=args.masking, mask_ratio=args.mask_ratio, tubelet=args.tubelet,
        patch=args.patch_size, seed=args.seed, object_size=tuple(args.object_size),
        angle_range=tuple(args.angle_range), scale_range=tuple(args.scale_range),
        frame_pick=args.frame_pick, repeat=repeat_for_stage(args, 1))


def motion_for_stage(strategy, stage):
    """Which clips get objects (Table 4d). Progressive: stage 1 motion-infused (V'), 2 plain (V)."""
    return {"progressive": "on" if stage == 1 else "off", "mixed": "mixed", "single": "on",
            "none": "off"}[strategy]


def repeat_for_stage(args, stage):
    """--repeated-sampling's mode in this stage (one mode: every stage's)."""
    return args.repeated_sampling[min(stage, len(args.repeated_sampling)) - 1]


def lr_schedule(args, steps_per_pass):
    """Per-optimizer-step lr (linear scaling rule: lr x total batch / 256).
    -> (one lr per step of the run: its length is the run's; the step stage 2 starts at).

    cosine (Table 18): warm-up + cosine to --min-lr over the run; progressive with "restart": one
    per stage, as the paper's two jobs.
    reference: the official scripts as they ran (run_mae_pretraining.py + engine_for_pretraining.py
    of fmthoker/SMILE). Each stage reads one warm-up + cosine planned for --planned-epochs epochs of
    n = videos // batch steps (its scheduler counts one clip per video) and stops where the stage
    ends, so the lr never anneals. Step s of pass e reads entry e * n + s: a pass of 2 clips per
    video has 2n (or 2n + 1) steps, so stage 2's warm-up lasts about twice as long and the lr
    steps back a little at every pass (a saw-tooth). A stage without repeated sampling ("off", the
    scripts' stage 1) runs its epochs x n steps, n per epoch, as the reference's loader did."""
    lr, min_lr = args.lr * args.batch_size / 256, args.min_lr * args.batch_size / 256
    steps_per_epoch = steps_per_pass / args.num_sample
    progressive = args.strategy == "progressive"
    total = int(round(args.epochs * steps_per_epoch))
    stage1 = int(round(args.stage1_epochs * steps_per_epoch)) if progressive else total
    if args.schedule == "cosine":
        warmup = int(args.warmup_epochs * steps_per_epoch)
        if progressive and args.stage2_schedule == "restart":
            return np.concatenate([cosine_schedule(lr, min_lr, stage1, warmup),
                                   cosine_schedule(lr, min_lr, total - stage1, warmup)]), stage1
        return cosine_schedule(lr, min_lr, total, warmup), stage1
    n = steps_per_pass // args.num_sample                  # the reference's steps per epoch
    plan = cosine_schedule(lr, min_lr, args.planned_epochs * n, int(args.warmup_epochs * n))
    stages = ([(1, args.stage1_epochs), (2, args.epochs - args.stage1_epochs)] if progressive
              else [(1, args.epochs)])
    parts = []
    for stage, epochs in stages:
        off = repeat_for_stage(args, stage) == "off"
        steps = int(round(epochs * (n if off else steps_per_epoch)))
        e, s = np.divmod(np.arange(steps), n if off else steps_per_pass)
        index = e * n + s
        if steps and index[-1] >= len(plan):
            fail(f"--schedule reference: stage {stage} runs past the --planned-epochs "
                 f"{args.planned_epochs} its cosine is planned for")
        parts.append(plan[index])
    return np.concatenate(parts), len(parts[0])


# ============================================================================= main


def main(argv=None):
    # ------------------------------------------------------------------ args + dist
    args = get_args(argv)
    check_files(args)
    rank, world, device = setup_dist(args.device)
    master = rank == 0
    if args.batch_size % (world * args.num_sample * args.accum_iter):
        fail(f"--batch-size {args.batch_size} does not split over {world} ranks x --accum-iter "
             f"{args.accum_iter} x {args.num_sample} clips per video")
    videos_per_micro = args.batch_size // world // args.accum_iter // args.num_sample   # per rank
    make_out_dir(args.out_dir)
    shape = {k: getattr(args, k) for k in SHAPE_FLAGS}
    found = open_resume(args.resume, args.out_dir, master, "train.py", shape,   # before any work
                        {k: getattr(args, k) for k in SCHEDULE_FLAGS}, args.accept_changes)
    torch.manual_seed(args.seed)   # same initial weights on every rank
    fast_math(device, args.workers)
    log = Log(args.out_dir, master, args.tensorboard, args)
    latest = os.path.join(args.out_dir, "checkpoint-latest.pth")

    # ------------------------------------------------------------------ data
    try:
        dataset = build_dataset(args)
    except (OSError, ValueError) as e:   # empty list, missing folder, malformed line: before work
        fail(str(e))
    sampler = data.ResumableSampler(dataset, world, rank, seed=args.seed)   # shuffled, drop_last
    loader = data.loader(dataset, sampler, videos_per_micro, args.workers, device, data.collate)
    videos_per_step = videos_per_micro * args.accum_iter
    steps_per_pass = len(dataset) // world // videos_per_step
    if steps_per_pass == 0:
        unit = world * args.num_sample * args.accum_iter   # --batch-size must be a multiple
        fits = len(dataset) // world * world * args.num_sample // unit * unit
        fail(f"{len(dataset)} items cannot fill one step of {videos_per_step} videos on each of "
             f"{world} ranks: " + (f"lower --batch-size to <= {fits} or " if fits else "")
             + {"video": "add videos", "frames": "add videos",
                "images": "add images"}.get(args.source, "raise --synthetic-length"))
    # one pass over the videos = num_sample effective epochs (SPEC 5: epochs x clips per video)
    steps_per_epoch = steps_per_pass / args.num_sample
    progressive = args.strategy == "progressive"
    lrs, stage1_steps = lr_schedule(args, steps_per_pass)
    total_steps = len(lrs)
    if total_steps == 0:
        fail(f"--epochs {args.epochs} x {steps_per_epoch:g} steps per epoch rounds to 0 optimizer "
             f"steps: raise --epochs to {int(0.5 / steps_per_epoch) + 1}")
    if master:   # the plan before any work
        print(schedule_summary(lrs, stage1_steps, args.lr * args.batch_size / 256, args.schedule),
              flush=True)

    def stage_of(s):   # Sec. 3.4, Table 4d: progressive = motion-infused clips, then plain ones
        return 1 if s < stage1_steps else 2

    # ------------------------------------------------------------------ model + teacher
    autocast, scaler, amp = amp_setup(device, args.amp)
    try:
        target_fn, target_dim = teacher_lib.build_target(
            args.target, args.teacher, args.teacher_weights, input_norm=args.teacher_norm,
            tubelet=args.tubelet, img_size=args.img_size, patch_size=args.patch_size,
            norm_pix=args.norm_pix, compile=args.compile, device=device, dtype=amp)
    except (OSError, ValueError, RuntimeError) as e:
        fail(f"teacher: {e}")
    raw_model = PretrainModel(img_size=args.img_size, patch_size=args.patch_size,
                              num_frames=args.num_frames, tubelet_size=args.tubelet,
                              out_dim=target_dim, **MODEL_SIZES[args.model]).to(device)
    raw_model.set_grad_checkpointing(args.grad_checkpointing)
    model = wrap_model(raw_model, device, world, args.compile)   # DDP, then compile

    # ------------------------------------------------------------------ optimizer + schedule
    def make_optimizer():   # SPEC 5: no weight decay on biases, norms and the mask token
        params = [(n, p) for n, p in raw_model.named_parameters() if p.requires_grad]
        decay = [p for n, p in params if not no_weight_decay(n, p, ["mask_token"])]
        rest = [p for n, p in params if no_weight_decay(n, p, ["mask_token"])]
        return adamw([{"params": decay, "weight_decay": args.weight_decay},
                      {"params": rest, "weight_decay": 0.0}], args.betas, device)
    optimizer = make_optimizer()

    def checkpoint(path):
        save_checkpoint({"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict() if scaler is not None else {}, "step": step,
                         "epoch": step / steps_per_epoch, "stage": stage_of(step),
                         "rng": rng_state(), "args": vars(args)}, path)

    # ------------------------------------------------------------------ resume
    step = resume(found, master, raw_model, optimizer, scaler, steps_per_epoch)[0]
    check_ranks_agree(step, shape, device)
    start_step, resumed_from = step, found["path"] if found else "the run"
    del found   # the checkpoint's tensors: not kept through the run

    # ------------------------------------------------------------------ loop
    end_step = min(total_steps, args.steps) if args.steps else total_steps
    if master:
        save_args(args, args.out_dir)
        print(f"pretraining {args.model} on {args.dataset} ({len(dataset)} items, {args.strategy}, "
              f"target {args.target}) | {world} rank(s) on {device} | {total_steps} steps "
              f"({steps_per_pass} per pass of {args.num_sample} clips per video, {args.accum_iter} "
              f"micro-step(s) each), stage 2 from step {stage1_steps} | running to step {end_step}",
              flush=True)
    # pass by pass; each pass's sampler state (seed, pass, offset) makes --resume replay the stream
    guard = StepGuard(len(dataset), args.max_bad_fraction, args.max_nonfinite, rank, latest)
    saver = CheckpointClock(args.ckpt_minutes, args.ckpt_every)
    window, t_start = LogWindow(device), time.time()
    while step < end_step:
        stage = stage_of(step)
        if progressive and args.stage2_schedule == "restart" and step == stage1_steps:
            optimizer = make_optimizer()   # stage 2 starts from stage 1's weights, fresh optimizer
        pass_index, offset = divmod(step, steps_per_pass)
        sampler.set_epoch(pass_index, start=offset * videos_per_step,   # -> dataset.set_state
                          state=dict(pass_index=pass_index, repeat=repeat_for_stage(args, stage),
                                     motion=motion_for_stage(args.strategy, stage)))
        batches = iter(loader)
        for _ in range(offset, steps_per_pass):
            # ---- fetch
            t_wait = time.time()
            micro = [to_device(next(batches), device) for _ in range(args.accum_iter)]
            window.wait += time.time() - t_wait

            # ---- one optimizer step (Eq. 2); skipped on every rank when a loss is not finite
            set_lr(optimizer, lrs[step])
            sums = train_step(model, target_fn, micro, autocast, scaler, args.accum_iter)
            if not guard.check(sums[:1], [b for m in micro for b in m["bad"]], step):
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer_step(optimizer, scaler)
            step += 1

            # ---- log: the loss beside its trivial floors, read from the device at log time only
            window.add(sums, clips=len(micro) * micro[0]["video"].shape[0] * world)
            if step % args.log_every == 0 or step == end_step:
                window.log(log, step, end_step, stage_of(step - 1), lrs[step - 1],
                           step / steps_per_epoch, guard.bad_total)

            # ---- checkpoint: latest (for --resume: every --ckpt-minutes, at the end of stage 1
            # and of the run, on preemption), periodic ones (kept)
            epoch, before = (int(s / steps_per_epoch) for s in (step, step - 1))
            if master:
                if saver.due(step) or step in (end_step, stage1_steps) or guard.stop:
                    checkpoint(latest)
                    saver.done()
                if epoch > before and args.save_every > 0 and epoch % args.save_every == 0:
                    checkpoint(os.path.join(args.out_dir, f"checkpoint-{epoch:04d}.pth"))
                    prune_checkpoints(args.out_dir, args.keep)
                if progressive and step == stage1_steps:
                    checkpoint(os.path.join(args.out_dir, "checkpoint-stage1.pth"))
            guard.exit_if_preempted(step, world, device)
            if step >= end_step or stage_of(step) != stage:
                break

    # ------------------------------------------------------------------ teardown
    if master:   # the loop writes checkpoint-latest at its end; a resumed run at its end runs none
        saved = (f"checkpoint {latest}" if step > start_step else
                 f"nothing to run: {resumed_from} is at step {start_step}, the end is step "
                 f"{end_step}; no checkpoint written")
        print(f"done: {step} steps in {fmt_time(time.time() - t_start)}, {saved}", flush=True)
        log.finish(latest)
    teardown(world, device)


if __name__ == "__main__":
    main()
