"""SMILE pretraining: motion-infused clips, trajectory masking, CLIP feature targets (Sec. 3, 4.1, F.3).

    python train.py --preset tiny                                  # CPU demo: synthetic data, minutes
    torchrun --nproc_per_node=8 train.py --dataset k400 --data-root /data/k400 --objects /data/pin
    python train.py -h                                             # every flag, with the paper's values

One flat script in the order the method runs: args, dist, data, model + teacher, optimizer + schedule,
resume, loop, teardown. The helpers above `main` (DDP setup, schedules, checkpoint IO, logging) are
shared with probe.py and finetune.py.
"""
import argparse
import datetime
import glob
import json
import os
import re
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist

# ============================================================================= shared helpers


def setup_dist():
    """nanoGPT-style DDP: under torchrun RANK is set; NCCL on GPU, gloo on CPU. -> (rank, world, device)."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        # NCCL reduces CUDA tensors only; the few CPU tensors reduced (counts, flags, eval sums) go over gloo
        device, backend = torch.device("cuda", local_rank), "cpu:gloo,cuda:nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    # a bounded timeout: a rank stuck in a collective fails instead of hanging forever
    timeout = datetime.timedelta(minutes=int(os.environ.get("SMILE_DIST_TIMEOUT_MIN", 30)))
    rank, world, store = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), None
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchrun's agent hosts the store and keeps it across --max-restarts, so a restarted attempt can
        # read the dead attempt's addresses and fail to connect (pytorch#135712): one key prefix per attempt.
        agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False, timeout=timeout)
        store = dist.PrefixStore(f"smile-attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", agent)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    return dist.get_rank(), dist.get_world_size(), device


def all_reduce(x, op=None):
    """Sum (or op) a tensor over ranks; a no-op without DDP."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x, op=op or dist.ReduceOp.SUM)
    return x


def cosine_schedule(base, final, total_steps, warmup_steps=0):
    """Per-step lr: linear warm-up from 0 to base, then half-cosine from base to final (DINO-style array)."""
    warmup_steps = min(warmup_steps, total_steps)
    warm = np.linspace(0, base, warmup_steps, endpoint=False)
    t = np.arange(total_steps - warmup_steps)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t / max(len(t), 1)))
    return np.concatenate([warm, cos])


def set_lr(optimizer, lr):
    for g in optimizer.param_groups:   # lr_scale: layer-wise decay in finetune.py, 1 elsewhere
        g["lr"] = float(lr) * g.get("lr_scale", 1.0)


def param_groups(model, weight_decay, no_decay_names=("mask_token",)):
    """AdamW groups (SPEC 5): no weight decay on biases, 1-D params (norms) and the mask token."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(".bias") or any(n in name for n in no_decay_names)
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def amp_setup(device, amp):
    """-> (autocast context factory, GradScaler or None). auto: bf16 on GPUs that have it, fp16 + scaler
    on older GPUs, fp32 on CPU. bf16 on CPU when asked (--amp bf16)."""
    if amp == "auto":
        amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device.type == "cuda" else "none"
    if amp == "none":
        return nullcontext, None
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def save_checkpoint(state, path):
    """Atomic: write a temporary file, then rename over the target, so a crash mid-write leaves the
    previous checkpoint intact. Plain tensors and builtins only: loads with weights_only=True."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def prune_checkpoints(out_dir, keep, pattern="checkpoint-[0-9]*.pth"):
    """Keep only the newest `keep` periodic checkpoints (the latest one is never pruned)."""
    paths = sorted(glob.glob(os.path.join(out_dir, pattern)), key=lambda p: int(re.findall(r"\d+", os.path.basename(p))[0]))
    for p in paths[:-keep] if keep > 0 else []:
        os.remove(p)


def rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def resume_from(resume, out_dir, master, model, optimizer, scaler):
    """--resume: "auto" takes <out_dir>/checkpoint-latest.pth when there is one (so that `torchrun --max-restarts
    N ... --resume` also makes the first start), a path takes that checkpoint. Restores model, optimizer,
    scaler and RNG states. -> (the checkpoint dict or None, the path of checkpoint-latest.pth)."""
    latest = os.path.join(out_dir, "checkpoint-latest.pth")
    if not resume:
        return None, latest
    if resume == "auto" and not os.path.isfile(latest):
        if master:
            print(f"--resume: no checkpoint at {latest} yet, starting from scratch")
        return None, latest
    path = latest if resume == "auto" else resume
    if not os.path.isfile(path):
        fail(f"--resume: no checkpoint at {path}")
    ckpt = load_checkpoint(path)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    ckpt["path"] = path
    return ckpt, latest


def teardown(world):
    """All ranks finish together, then the process group goes (nanoGPT's destroy_process_group)."""
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


class Log:
    """Rank 0 prints one line per call and appends the same record to <out_dir>/log.jsonl."""

    def __init__(self, out_dir, master):
        self.path, self.master = os.path.join(out_dir, "log.jsonl"), master

    def __call__(self, record, line=None):
        if not self.master:
            return
        if line:
            print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def fmt_time(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def fail(msg):
    """Bad input: one line on stderr and exit code 2 before any work, no traceback."""
    print(f"error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def check_out_dir(out_dir):
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write_test{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        fail(f"--out-dir {out_dir} is not writable ({e.strerror})")


def apply_presets(parser, presets, argv=None):
    """Two-pass parse: a preset's dict becomes the defaults, so flags given on the command line win.
    presets: list of (flag dest, {name: overrides}), applied in order (later ones win)."""
    for dest, table in presets:
        known, _ = parser.parse_known_args(argv)
        name = getattr(known, dest)
        if name is not None and name in table:
            parser.set_defaults(**table[name])
    return parser.parse_args(argv)


# ============================================================================= presets

# Dataset presets (SPEC 5, Table 18): overrides applied right after parsing; command-line flags still win.
DATASETS = {
    "k400": dict(source="video", stride=4, flip=True, epochs=600, stage1_epochs=300),
    "ssv2": dict(source="video", stride=2, flip=False, epochs=800, stage1_epochs=400),
    "list": dict(source="video"),
    # Table 7 / Appendix D: no natural video. Progressive stage 2 would train on empty clips here, so
    # motion is on throughout (strategy single) unless asked otherwise.
    "noise": dict(source="noise", strategy="single"),
    "black": dict(source="black", strategy="single"),
    "images": dict(source="images", strategy="single"),
    "frames": dict(source="frames", strategy="single"),
}
# --preset tiny: the CPU demo (README's first command). Chosen by measurement on 2 cores: see README.
PRESETS = {
    "tiny": dict(dataset="black", model="tiny", img_size=64, num_frames=16, target="pixel", norm_pix=False,
                 batch_size=32, lr=1.6e-2, min_lr=1e-4, warmup_epochs=1, epochs=12, synthetic_length=1024,
                 object_size=[64, 160], workers=1, log_every=10, save_every=4, out_dir="out/tiny"),
}


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", choices=sorted(PRESETS), help="bundle of overrides; tiny = the 2-core CPU demo")
    # data
    a("--dataset", default="k400", choices=sorted(DATASETS), help="k400/ssv2 read <data-root>/train.csv; "
      "list reads --train-list; noise/black/images/frames are Table 7's backgrounds")
    a("--data-root", default="", help="folder that list paths are relative to")
    a("--train-list", default=None, help="list file '<path> <label>' (default <data-root>/train.csv)")
    a("--image-dir", default=None, help="folder of still images for --dataset images")
    a("--synthetic-length", type=int, default=10000, help="samples per pass for noise/black backgrounds")
    a("--num-frames", type=int, default=16, help="T, frames per clip (Sec. 4.1: 16)")
    a("--stride", type=int, default=4, help="temporal stride (Table 18: 4 for K400, 2 for SSv2)")
    a("--img-size", type=int, default=224)
    a("--flip", action=argparse.BooleanOptionalAction, default=True, help="horizontal flip (Table 18: K400 yes, SSv2 no)")
    a("--num-sample", type=int, default=2, help="clips per decoded video, repeated sampling (F.3: 2)")
    a("--workers", type=int, default=8, help="data loader processes per rank")
    a("--max-bad-fraction", type=float, default=0.01, help="stop when more than this share of the items are unreadable")
    # motion (Sec. 3.3)
    a("--strategy", default="progressive", choices=["progressive", "mixed", "single", "none"],
      help="Table 4d: progressive 79.8 > mixed 79.5 > single 78.9; none = SMILE w/o motion")
    a("--stage1-epochs", type=int, default=300, help="progressive: epochs with motion before plain clips")
    a("--stage2-schedule", default="restart", choices=["restart", "continue"], help="progressive: restart "
      "the optimizer and warm-up + cosine for stage 2, as the paper's two-job runs did; or one schedule")
    a("--objects", default=None, help="folder of RGBA object PNGs (PIN synthetic set); default: built-in shapes")
    a("--num-objects", type=int, default=2, help="objects per clip (Table 4f: 1 < 2 ~ 3)")
    a("--object-size", type=int, nargs=2, default=[32, 128], help="object side range in px at 224 (Sec. 4.1)")
    a("--masking", default="trajectory", choices=["trajectory", "tube"], help="Table 4g: trajectory +~1%%")
    a("--mask-ratio", type=float, default=0.8, help="Table 4e: 0.8 > 0.9 > 0.95")
    # model and target
    a("--model", default="base", choices=["tiny", "small", "base"], help="ViT size (small = ViT-S, base = ViT-B)")
    a("--patch-size", type=int, default=16)
    a("--tubelet", type=int, default=2)
    a("--target", default="clip", choices=["clip", "pixel"], help="Table 4b: CLIP features (default) or pixels")
    a("--teacher", default="ViT-B-16", help="open_clip model name (or a model-config JSON), or timm:<name> "
      "for a timm ViT (Table 4b): timm:vit_base_patch16_224.mae, timm:vit_base_patch16_224.dino, "
      "timm:vit_base_patch14_dinov2.lvd142m (run at the student's grid: 196 px under 224/16)")
    a("--teacher-weights", default="openai", help="open_clip: a pretrained tag (openai) or a local file "
      "(ViT-B-16.pt); timm: 'timm' = timm's own weights for the tag in the name, or a local file; "
      "none = random weights, for smoke tests")
    a("--teacher-norm", default="clip", choices=["clip", "imagenet"], help="clip: the teacher's own mean/std "
      "(CLIP's for open_clip, pretrained_cfg's for timm); imagenet: feed the ImageNet-normalised frames "
      "unchanged, as the reference code does")
    a("--norm-pix", action=argparse.BooleanOptionalAction, default=True, help="pixel target: per-tubelet normalisation (VideoMAE)")
    # optimisation (SPEC 5, Table 18)
    a("--epochs", type=int, default=600, help="effective epochs = passes x num-sample (K400 600, SSv2 800)")
    a("--warmup-epochs", type=float, default=40)
    a("--batch-size", type=int, default=256, help="total clips per step over all ranks (paper: 256)")
    a("--lr", type=float, default=1.5e-4, help="base lr for a total batch of 256 (actual = lr * batch / 256)")
    a("--min-lr", type=float, default=1e-5, help="cosine floor, scaled like --lr")
    a("--weight-decay", type=float, default=0.05)
    a("--betas", type=float, nargs=2, default=[0.9, 0.95])
    a("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"], help="auto: bf16 on GPUs that have it, fp16 + loss scaler on older GPUs, fp32 on CPU")
    a("--compile", action="store_true", help="torch.compile the student")
    a("--grad-checkpointing", action="store_true", help="recompute activations in backward: less memory, slower")
    # run
    a("--out-dir", default="out/pretrain", help="everything a run writes goes here")
    a("--resume", nargs="?", const="auto", default=None, help="continue from <out-dir>/checkpoint-latest.pth or a path")
    a("--steps", type=int, default=None, help="stop after this many optimizer steps (schedule unchanged)")
    a("--seed", type=int, default=0)
    a("--log-every", type=int, default=50)
    a("--ckpt-every", type=int, default=500, help="steps between writes of checkpoint-latest.pth")
    a("--save-every", type=int, default=50, help="effective epochs between kept checkpoints")
    a("--keep", type=int, default=3, help="periodic checkpoints kept")
    a("--max-nonfinite", type=int, default=3, help="stop after this many non-finite losses in a row")
    a("--device", default=None, help="cpu / cuda (default: cuda when available)")
    args = apply_presets(p, [("preset", PRESETS), ("dataset", DATASETS), ("preset", PRESETS)], argv)
    args.source = DATASETS[args.dataset]["source"]
    if not 0 < args.mask_ratio < 1:
        fail(f"--mask-ratio must lie in (0, 1), got {args.mask_ratio}")
    if args.num_frames % args.tubelet:
        fail(f"--num-frames {args.num_frames} is not divisible by --tubelet {args.tubelet}")
    import masking
    side = args.img_size // args.patch_size
    if masking.num_masked(1, side, side, args.mask_ratio) < 1:
        fail(f"--mask-ratio {args.mask_ratio} masks no token of a {side}x{side} patch grid")
    if args.img_size % args.patch_size:
        fail(f"--img-size {args.img_size} is not divisible by --patch-size {args.patch_size}")
    if args.batch_size % args.num_sample:
        fail(f"--batch-size {args.batch_size} is not divisible by --num-sample {args.num_sample}")
    if args.strategy == "mixed" and args.num_sample % 2:
        fail("--strategy mixed needs an even --num-sample (half the clips with motion, half without)")
    if args.strategy == "progressive" and not 0 < args.stage1_epochs < args.epochs:
        fail(f"--strategy progressive needs 0 < --stage1-epochs ({args.stage1_epochs}) < --epochs ({args.epochs})")
    if args.source in ("video", "frames") and args.train_list is None:
        args.train_list = os.path.join(args.data_root, "train.csv")
    if args.source == "images" and not (args.image_dir and os.path.isdir(args.image_dir)):
        fail(f"--dataset images needs --image-dir pointing at a folder of images, got {args.image_dir}")
    check_out_dir(args.out_dir)
    return args


def build_objects(args):
    """The object bank O (Sec. 3.3): a folder of RGBA PNGs, or built-in textured shapes as a stand-in."""
    import motion
    if args.objects:
        return motion.ObjectBank(args.objects)
    return motion.synthetic_objects(256, np.random.default_rng(args.seed), size=128)


def build_dataset(args):
    import data
    items = None
    if args.source in ("video", "frames"):
        items = data.read_list(args.train_list, args.data_root or None)
    elif args.source == "images":
        paths = sorted(str(p) for p in __import__("pathlib").Path(args.image_dir).rglob("*")
                       if p.suffix.lower() in data.IMAGE_EXTS)
        if not paths:
            raise ValueError(f"--image-dir {args.image_dir} holds no images ({', '.join(data.IMAGE_EXTS)})")
        items = [(p, 0) for p in paths]
    return data.PretrainDataset(
        args.source, items=items, length=args.synthetic_length, num_frames=args.num_frames, stride=args.stride,
        img_size=args.img_size, flip=args.flip, num_sample=args.num_sample,
        objects=build_objects(args) if args.strategy != "none" else None, num_objects=args.num_objects,
        motion=motion_for_stage(args.strategy, 1), masking=args.masking, mask_ratio=args.mask_ratio,
        tubelet=args.tubelet, patch=args.patch_size, seed=args.seed, object_size=tuple(args.object_size))


def motion_for_stage(strategy, stage):
    """Which clips get objects (Table 4d). Progressive: stage 1 motion-infused V', stage 2 plain V."""
    return {"progressive": "on" if stage == 1 else "off", "mixed": "mixed", "single": "on", "none": "off"}[strategy]


def build_target(args, device, dtype=None):
    """-> callable video (B, C, T, H, W) -> targets (B, N, Dt), and Dt. Eq. 2's regression targets.
    dtype: the run's amp dtype (None = fp32); the teacher's frozen weights are cast to it once."""
    import teacher as teacher_lib
    if args.target == "pixel":
        fn = lambda v: teacher_lib.pixel_targets(v, args.tubelet, args.patch_size, normalize=args.norm_pix)  # noqa: E731
        return fn, teacher_lib.target_dim("pixel", tubelet=args.tubelet, patch=args.patch_size)
    weights = None if args.teacher_weights.lower() == "none" else args.teacher_weights   # none: random (smoke runs)
    # built for the student's grid (a patch-14 teacher runs at grid*14 px); raises if it cannot match
    t = teacher_lib.Teacher(args.teacher, weights, input_norm=args.teacher_norm, tubelet=args.tubelet,
                            img_size=args.img_size, patch_size=args.patch_size, dtype=dtype)
    return t.to(device), teacher_lib.target_dim("clip", t)


def main(argv=None):
    # ------------------------------------------------------------------ args
    args = get_args(argv)

    # ------------------------------------------------------------------ dist
    rank, world, device = setup_dist()
    if args.device:
        device = torch.device(args.device)
    master = rank == 0
    if args.batch_size % (world * args.num_sample):
        fail(f"--batch-size {args.batch_size} does not split over {world} ranks x {args.num_sample} clips per video")
    clips_per_rank = args.batch_size // world
    videos_per_rank = clips_per_rank // args.num_sample
    torch.manual_seed(args.seed)   # same initial weights on every rank
    log = Log(args.out_dir, master)
    if master:
        with open(os.path.join(args.out_dir, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=1)

    # ------------------------------------------------------------------ data
    import data
    try:
        dataset = build_dataset(args)
    except (OSError, ValueError) as e:   # empty list, missing folder, malformed line: before any work
        fail(str(e))
    sampler = data.ResumableSampler(dataset, world, rank, seed=args.seed, shuffle=True, drop_last=True)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=videos_per_rank, sampler=sampler, num_workers=args.workers, collate_fn=data.collate,
        pin_memory=device.type == "cuda", drop_last=True, worker_init_fn=data.worker_init,
        persistent_workers=False, prefetch_factor=4 if args.workers else None)
    steps_per_pass = len(dataset) // world // videos_per_rank
    if steps_per_pass == 0:
        fail(f"{len(dataset)} items cannot fill one batch of {videos_per_rank} videos on each of {world} ranks")
    # one pass over the videos = num_sample effective epochs (SPEC 5 counts epochs x clips per video)
    steps_per_epoch = steps_per_pass / args.num_sample
    total_steps = int(round(args.epochs * steps_per_epoch))
    stage1_steps = int(round(args.stage1_epochs * steps_per_epoch)) if args.strategy == "progressive" else total_steps

    # ------------------------------------------------------------------ model + teacher
    from model import MODEL_SIZES, PretrainModel
    try:
        target_fn, target_dim = build_target(args, device)
    except (OSError, ValueError, RuntimeError) as e:
        fail(f"teacher: {e}")
    model = PretrainModel(img_size=args.img_size, patch_size=args.patch_size, num_frames=args.num_frames,
                          tubelet_size=args.tubelet, out_dim=target_dim, **MODEL_SIZES[args.model]).to(device)
    model.set_grad_checkpointing(args.grad_checkpointing)
    raw_model = model
    if args.compile:
        model = torch.compile(model)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast, scaler = amp_setup(device, args.amp)

    # ------------------------------------------------------------------ optimizer + schedule
    def make_optimizer():
        return torch.optim.AdamW(param_groups(raw_model, args.weight_decay), lr=0.0, betas=tuple(args.betas), eps=1e-8)
    optimizer = make_optimizer()
    lr, min_lr = args.lr * args.batch_size / 256, args.min_lr * args.batch_size / 256   # linear scaling rule
    warmup = int(args.warmup_epochs * steps_per_epoch)
    if args.strategy == "progressive" and args.stage2_schedule == "restart":
        lrs = np.concatenate([cosine_schedule(lr, min_lr, stage1_steps, warmup),
                              cosine_schedule(lr, min_lr, total_steps - stage1_steps, warmup)])
    else:
        lrs = cosine_schedule(lr, min_lr, total_steps, warmup)

    # ------------------------------------------------------------------ resume
    ckpt, latest = resume_from(args.resume, args.out_dir, master, raw_model, optimizer, scaler)
    step = ckpt["step"] if ckpt else 0
    if ckpt and master:
        print(f"resumed from {ckpt['path']} at step {step} (epoch {step / steps_per_epoch:.2f}, stage {ckpt['stage']})")

    def stage_of(s):
        return 1 if s < stage1_steps else 2

    def checkpoint_state():
        return {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {}, "step": step,
                "epoch": step / steps_per_epoch, "stage": stage_of(step), "rng": rng_state(), "args": vars(args)}

    # ------------------------------------------------------------------ loop
    end_step = min(total_steps, args.steps) if args.steps else total_steps
    if master:
        print(f"pretraining {args.model} on {args.dataset} ({len(dataset)} items, {args.strategy}, target {args.target}) | "
              f"{world} rank(s) on {device} | {total_steps} steps ({steps_per_pass} per pass of {args.num_sample} "
              f"clips per video), stage 2 from step {stage1_steps} | running to step {end_step}", flush=True)
    bad_seen, bad_total, seen_total, nonfinite = set(), 0, 0, 0
    window = {"t0": time.time(), "wait": 0.0, "clips": 0, "loss": 0.0, "zero": 0.0, "mean": 0.0, "n": 0}
    while step < end_step:
        stage = stage_of(step)
        if args.strategy == "progressive" and args.stage2_schedule == "restart" and stage1_steps > 0 and step == stage1_steps:
            optimizer = make_optimizer()   # stage 2 starts from stage 1's weights with a fresh optimizer
        pass_index, offset = divmod(step, steps_per_pass)
        dataset.set_state(pass_index, motion=motion_for_stage(args.strategy, stage))
        sampler.set_epoch(pass_index, start=offset * videos_per_rank)
        t_wait = time.time()
        for batch in loader:
            window["wait"] += time.time() - t_wait
            # ---- bad items: named once, counted, and fatal only past --max-bad-fraction
            for b in batch["bad"]:
                if b not in bad_seen:
                    bad_seen.add(b)
                    print(f"[rank {rank}] skipped bad item: {b}", flush=True)
            too_many = len(bad_seen) > args.max_bad_fraction * len(dataset)
            counts = all_reduce(torch.tensor([len(batch["bad"]), len(batch["mask"]), too_many], dtype=torch.float64))
            bad_total, seen_total = bad_total + int(counts[0]), seen_total + int(counts[1])
            if counts[2] > 0:   # decided together: one rank stopping alone would leave the others hanging
                raise SystemExit(f"error: {len(bad_seen)} of {len(dataset)} items unreadable on rank {rank} (past "
                                 f"--max-bad-fraction {args.max_bad_fraction}):\n  " + "\n  ".join(sorted(bad_seen)))

            # ---- one optimisation step (Eq. 2)
            set_lr(optimizer, lrs[step])
            video = batch["video"].to(device, non_blocking=True)   # (B, C, T, H, W), motion already infused
            mask = batch["mask"].to(device, non_blocking=True)     # (B, N), True = masked
            B = video.shape[0]
            with torch.no_grad(), autocast():
                targets = target_fn(video).float().clone()         # (B, N, Dt); teacher sees V' too (SPEC 2)
            tgt = targets[mask].reshape(B, -1, target_dim)         # (B, Nm, Dt)
            with autocast():
                pred = model(video, mask)                          # (B, Nm, Dt)
            loss = torch.nn.functional.mse_loss(pred.float(), tgt)  # Eq. 2: MSE on masked tokens only
            (scaler.scale(loss) if scaler else loss).backward()
            finite = all_reduce(torch.isfinite(loss.detach()).float().cpu(), dist.ReduceOp.MIN if world > 1 else None)
            if finite.item() < 1:   # a non-finite loss never reaches the weights
                optimizer.zero_grad(set_to_none=True)
                nonfinite += 1
                if master:
                    print(f"step {step}: non-finite loss {loss.item()}, step skipped ({nonfinite} in a row)", flush=True)
                if nonfinite >= args.max_nonfinite:
                    raise SystemExit(f"error: {nonfinite} non-finite losses in a row at step {step}; stopping. "
                                     f"The last good checkpoint is {latest} (untouched).")
                t_wait = time.time()
                continue
            nonfinite = 0
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            # ---- logging: loss beside its trivial floors (predict zero; predict the visible tokens' mean)
            with torch.no_grad():
                vis_mean = targets[~mask].reshape(B, -1, target_dim).mean(1, keepdim=True)
                window["zero"] += tgt.pow(2).mean().item()
                window["mean"] += (tgt - vis_mean).pow(2).mean().item()
            window["loss"] += loss.item()
            window["clips"] += B * world
            window["n"] += 1
            if step % args.log_every == 0 or step == end_step:
                dt = time.time() - window["t0"]
                n = window["n"]
                rec = {"step": step, "epoch": round(step / steps_per_epoch, 3), "stage": stage_of(step - 1),
                       "loss": window["loss"] / n, "floor_zero": window["zero"] / n, "floor_mean": window["mean"] / n,
                       "lr": float(lrs[step - 1]), "clips_per_s": window["clips"] / dt,
                       "data_wait": window["wait"] / dt, "bad": bad_total, "time": time.time()}
                eta = (end_step - step) * dt / n
                log(rec, f"step {step}/{end_step} | ep {rec['epoch']:.2f} | stage {rec['stage']} | loss {rec['loss']:.4f} "
                         f"(floors: zero {rec['floor_zero']:.4f}, mean {rec['floor_mean']:.4f}) | lr {rec['lr']:.2e} | "
                         f"{rec['clips_per_s']:.1f} clips/s | data wait {100 * rec['data_wait']:.0f}% | "
                         f"bad {bad_total} | eta {fmt_time(eta)}")
                window = {"t0": time.time(), "wait": 0.0, "clips": 0, "loss": 0.0, "zero": 0.0, "mean": 0.0, "n": 0}

            # ---- checkpoints: latest (for --resume), periodic ones (kept), end of stage 1
            if master:
                epoch_done = int(step / steps_per_epoch) > int((step - 1) / steps_per_epoch)
                if step % args.ckpt_every == 0 or step == end_step or epoch_done:
                    save_checkpoint(checkpoint_state(), latest)
                if epoch_done and args.save_every > 0 and int(step / steps_per_epoch) % args.save_every == 0:
                    save_checkpoint(checkpoint_state(), os.path.join(args.out_dir, f"checkpoint-{int(step / steps_per_epoch):04d}.pth"))
                    prune_checkpoints(args.out_dir, args.keep)
                if args.strategy == "progressive" and step == stage1_steps:
                    save_checkpoint(checkpoint_state(), os.path.join(args.out_dir, "checkpoint-stage1.pth"))
            if step >= end_step or stage_of(step) != stage:
                break
            t_wait = time.time()

    # ------------------------------------------------------------------ teardown
    if master:
        print(f"done: {step} steps, checkpoint {latest}", flush=True)
    teardown(world)


if __name__ == "__main__":
    main()
