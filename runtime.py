"""Run plumbing shared by the entry scripts (train.py, probe.py, finetune.py, extract.py,
segment.py).

Only what at least two scripts use, each helper short: DDP setup and teardown, mixed precision, the
lr schedule, checkpoint IO and resume, RNG state, preemption signals, the log, one-line errors,
presets.
The method lives in model.py, motion.py, masking.py and teacher.py; this file knows nothing of it.
"""
import datetime
import glob
import json
import os
import re
import signal
import sys
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist

# ========================================================================= errors, folders, presets


def fail(msg):
    """Bad input: one line on stderr and exit code 2 before any work, no traceback."""
    print(f"error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def make_out_dir(out_dir):
    """Create --out-dir and check that it is writable (called from main, never while parsing)."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write_test{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        fail(f"--out-dir {out_dir} is not writable ({e.strerror})")


def apply_presets(parser, presets, argv=None):
    """Two-pass parse: a preset's dict becomes the parser's defaults, so flags given on the command
    line always win. presets: list of (flag dest, {name: overrides}), applied in order, later ones
    winning. The scripts list the dataset table first and `--preset` last, so a preset (tiny: a
    small grid) wins over the dataset's defaults (k400: 224 px), and a flag wins over both."""
    for dest, table in presets:
        known, _ = parser.parse_known_args(argv)
        name = getattr(known, dest)
        if name is not None and name in table:
            parser.set_defaults(**table[name])
    return parser.parse_args(argv)


# ============================================================================= distributed


def setup_dist():
    """nanoGPT-style DDP: under torchrun RANK is set; NCCL on GPU (every collective, flags included,
    is a small CUDA tensor), gloo on CPU. Without torchrun: one process.
    -> (rank, world, device)."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    # a bounded timeout: a rank stuck in a collective fails instead of hanging forever
    timeout = datetime.timedelta(minutes=int(os.environ.get("SMILE_DIST_TIMEOUT_MIN", 30)))
    rank, world, store = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), None
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchrun's agent hosts the store and keeps it across --max-restarts, so a restarted
        # attempt can read the dead attempt's addresses and fail to connect (pytorch#135712): one
        # key prefix per attempt.
        agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                              is_master=False, timeout=timeout)
        store = dist.PrefixStore(
            f"smile-attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", agent)
    kw = dict(device_id=device) if device.type == "cuda" else {}
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout,
                            **kw)
    return dist.get_rank(), dist.get_world_size(), device


def all_reduce(x, op=None):
    """Sum (or op) a tensor over ranks, in place; a no-op without DDP. x must live on the run's
    device (a CUDA tensor under NCCL)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x, op=op or dist.ReduceOp.SUM)
    return x


def wrap_ddp(model, device, world):
    """DDP when world > 1. The position tables are constant buffers: no need to re-broadcast them
    every forward (broadcast_buffers=False); gradients share the buckets' memory
    (gradient_as_bucket_view)."""
    if world == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False, gradient_as_bucket_view=True)


def teardown(world, device):
    """All ranks finish together, then the process group goes (nanoGPT's destroy_process_group)."""
    if world > 1:
        dist.barrier(device_ids=[device.index]) if device.type == "cuda" else dist.barrier()
        dist.destroy_process_group()


# ============================================================================= precision


def amp_dtype(device, amp):
    """--amp -> torch dtype or None (fp32). auto: bf16 on GPUs with native bf16 (compute capability
    >= 8.0, Ampere and newer), fp16 + loss scaling on older ones (V100, T4: there
    torch.cuda.is_bf16_supported() is true, but bf16 is emulated), fp32 on CPU. bf16 on CPU only
    when asked (--amp bf16)."""
    if amp == "auto":
        if device.type != "cuda":
            return None
        amp = "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def amp_setup(device, amp):
    """-> (autocast context factory, GradScaler or None, dtype or None). The scaler only for
    fp16."""
    dtype = amp_dtype(device, amp)
    if dtype is None:
        return nullcontext, None, None
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler, dtype


def fast_math(device, workers=0):
    """On GPU: cuDNN autotuning for the fixed clip shape, TF32 matmuls for fp32 runs (amp runs are
    bf16). On CPU: the loader's `workers` processes need cores too, so the step gets the others
    (torch's default takes every core and the two fight: on 2 cores the demo, 1 worker, runs 1.4x
    faster with one compute thread than with two; docs/performance.md). OMP_NUM_THREADS, when
    set, wins (torchrun sets it to 1 per rank)."""
    if device.type == "cpu" and workers and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, min(torch.get_num_threads(), cores - workers)))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


# ============================================================================= optimisation


def no_weight_decay(name, param, extra=()):
    """SPEC 5 / Table 17: no weight decay on biases, 1-D parameters (norms) and named tokens."""
    return param.ndim <= 1 or name.endswith(".bias") or any(n in name for n in extra)


def adamw(groups, betas, device):
    """AdamW with lr set per step by set_lr; the fused CUDA kernel on GPU (one launch for all
    params)."""
    return torch.optim.AdamW(groups, lr=0.0, betas=tuple(betas), eps=1e-8,
                             fused=device.type == "cuda")


def cosine_schedule(base, final, total_steps, warmup_steps=0):
    """Per-step lr: linear warm-up from 0 whose last step is base, then half-cosine from base to
    final (DINO-style array; the same numbers as the reference's utils_mae.cosine_scheduler)."""
    warmup_steps = min(warmup_steps, total_steps)
    warm = np.linspace(0, base, warmup_steps)   # endpoint included: the peak at the last step
    t = np.arange(total_steps - warmup_steps)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t / max(len(t), 1)))
    return np.concatenate([warm, cos])


def set_lr(optimizer, lr):
    for g in optimizer.param_groups:   # lr_scale: layer-wise decay in finetune.py, 1 elsewhere
        g["lr"] = float(lr) * g.get("lr_scale", 1.0)


def optimizer_step(optimizer, scaler):
    """Backward has run: step (through the fp16 loss scaler when there is one) and clear the
    gradients."""
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# ============================================================================= checkpoints


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
    def number(p):
        return int(re.findall(r"\d+", os.path.basename(p))[0])
    paths = sorted(glob.glob(os.path.join(out_dir, pattern)), key=number)
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


def find_resume(resume, out_dir, master):
    """--resume: "auto" takes <out_dir>/checkpoint-latest.pth when there is one (so
    `torchrun --max-restarts N ... --resume` also makes the first start), a path takes that
    checkpoint. -> checkpoint dict or None."""
    latest = os.path.join(out_dir, "checkpoint-latest.pth")
    if not resume:
        return None
    if resume == "auto" and not os.path.isfile(latest):
        if master:
            print(f"--resume: no checkpoint at {latest} yet, starting from scratch")
        return None
    path = latest if resume == "auto" else resume
    if not os.path.isfile(path):
        fail(f"--resume: no checkpoint at {path}")
    ckpt = load_checkpoint(path)
    ckpt["path"] = path
    return ckpt


def check_resume_args(saved, args, shape_keys, schedule_keys):
    """--resume with other flags than the checkpoint's run. A different shape (model, grid, target)
    cannot load: one-line error. A different schedule or data stream (batch, epochs, lr, dataset)
    would silently continue another run: an error unless --accept-changes, then each change is
    printed. The world size may change: --batch-size is the total over all ranks, so the schedule
    and data order stay the same."""
    def flag(k):
        return "--" + k.replace("_", "-")
    shape = [k for k in shape_keys if k in saved and saved[k] != getattr(args, k)]
    if shape:
        fail(f"--resume {saved.get('out_dir', '')}: the checkpoint has "
             + ", ".join(f"{flag(k)} {saved[k]} (this run: {getattr(args, k)})" for k in shape)
             + "; its weights cannot load")
    changed = [k for k in schedule_keys if k in saved and saved[k] != getattr(args, k)]
    lines = [f"{flag(k)} {saved[k]} -> {getattr(args, k)}" for k in changed]
    if changed and not args.accept_changes:
        fail("--resume with other flags than the checkpoint's run: " + "; ".join(lines)
             + " (pass --accept-changes to continue with them)")
    return lines


def resume_state(ckpt, model, optimizer, scaler):
    """Load model, optimizer, scaler and RNG states from a checkpoint dict (find_resume's)."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])


def resume(args, master, model, optimizer, scaler, shape_keys, schedule_keys, steps_per_epoch):
    """--resume in one call: find the checkpoint, refuse another shape or (unless --accept-changes)
    another schedule, restore model, optimizer, scaler and RNG states, say so.
    -> (the step to continue from, the checkpoint dict or None)."""
    ckpt = find_resume(args.resume, args.out_dir, master)
    if ckpt is None:
        return 0, None
    changes = check_resume_args(ckpt["args"], args, shape_keys, schedule_keys)
    resume_state(ckpt, model, optimizer, scaler)
    if master:
        stage = f", stage {ckpt['stage']}" if "stage" in ckpt else ""
        print(f"resumed from {ckpt['path']} at step {ckpt['step']} (epoch "
              f"{ckpt['step'] / steps_per_epoch:.2f}{stage})"
              + "".join(f"\n  changed: {c}" for c in changes), flush=True)
    return ckpt["step"], ckpt


class Preemption:
    """SIGTERM or SIGUSR1 (what SLURM sends before it kills a job, --signal=USR1@120; torchrun
    forwards SIGTERM to its workers): remember it, so the loop finishes its step, writes
    checkpoint-latest and exits."""

    def __init__(self):
        self.signum = 0
        for s in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(s, self.handler)

    def handler(self, signum, frame):
        self.signum = signum


# ============================================================================= logging


class Log:
    """Rank 0 prints one line per call and appends the same record to <out_dir>/log.jsonl; with
    tensorboard installed and --tensorboard given, the numbers go to <out_dir>/tb as well."""

    def __init__(self, out_dir, master, tensorboard=False):
        self.path, self.master, self.tb = os.path.join(out_dir, "log.jsonl"), master, None
        if master and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(out_dir, "tb"))
            except ImportError:
                print("--tensorboard: tensorboard is not installed (pip install tensorboard); "
                      "log.jsonl only")

    def __call__(self, record, line=None):
        if not self.master:
            return
        if line:
            print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None and "step" in record:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self.tb.add_scalar(k, v, record["step"])
            self.tb.flush()


def save_args(args, out_dir):
    with open(os.path.join(out_dir, "args.json"), "w") as f:
        json.dump(vars(args), f, indent=1)


def fmt_time(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
