"""Run plumbing shared by the entry scripts (train.py, probe.py, finetune.py, tools/): one-line
errors, presets and flag checks, DDP setup and teardown, mixed precision, the lr schedule,
checkpoint IO and resume, the pretraining step (train.py's, which tools/bench.py times), what can
go wrong in a step (StepGuard), preemption signals, the log. The method lives in model.py,
motion.py, masking.py and teacher.py; this file only runs it."""
import argparse
import datetime
import glob
import inspect
import json
import math
import os
import re
import shutil
import signal
import sys
import time
import zlib
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist

import data
from model import gather_tokens

# ========================================================================= errors, folders, presets


def fail(msg):
    """Bad input: one line on stderr and exit code 2 before any work, no traceback."""
    print(f"error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def make_out_dir(out_dir):
    """Create --out-dir and check that it is writable (called from main, never while parsing)."""
    check_paths(("--out-dir", out_dir, "out-dir"))
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write_test{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        fail(f"--out-dir {out_dir} is not writable ({e.strerror})")


def apply_presets(parser, presets, argv=None):
    """Two-pass parse: a preset's dict becomes the parser's defaults, so a flag typed on the command
    line always wins. presets: [(flag dest, {name: overrides})], later ones winning (the scripts
    list the dataset table first and --preset last: tiny's small grid beats k400's 224 px).
    args.flags_given: the dests typed (a checkpoint's own shape wins over a preset's, never over a
    flag: evaluation.read_checkpoint)."""
    unset = object()
    typed = argparse.Namespace(**{a.dest: unset for a in parser._actions})
    typed = vars(parser.parse_known_args(argv, typed)[0])
    for dest, table in presets:
        known, _ = parser.parse_known_args(argv)
        name = getattr(known, dest)
        if name is not None and name in table:
            parser.set_defaults(**table[name])
    args = parser.parse_args(argv)
    args.flags_given = sorted(k for k, v in typed.items() if v is not unset and k != "help")
    return args


# ============================================================================= flags

class Parser(argparse.ArgumentParser):
    """argparse with one-line errors ('error: argument --epochs: ...', exit code 2, no usage block:
    a page for train.py), and every metavar ("LO", "HI") pair checked for LO <= HI. Subcommands
    (prepare.py) inherit both."""

    def error(self, message):
        fail(f"{message} (-h lists the flags)")

    def parse_known_args(self, args=None, namespace=None):
        args, rest = super().parse_known_args(args, namespace)
        for action in self._actions:
            pair = getattr(args, action.dest, None)
            if action.metavar == ("LO", "HI") and isinstance(pair, (list, tuple)) \
                    and len(pair) == 2 and pair[0] > pair[1]:
                fail(f"argument {action.option_strings[0]}: LO {pair[0]} > HI {pair[1]}; give "
                     f"the smaller value first")
        return args, rest


def bounded(kind, lo=None, hi=None, open_lo=False, open_hi=False):
    """An argparse type: `kind` (int or float) in [lo, hi] (an end open where asked), never NaN or
    infinity; else argparse's one-line error naming the flag, the value and the range."""
    word = "an integer" if kind is int else "a number"
    if lo is not None and hi is not None:
        allowed = f"in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
    elif lo is not None:
        allowed = f"{'>' if open_lo else '>='} {lo:g}"
    elif hi is not None:
        allowed = f"{'<' if open_hi else '<='} {hi:g}"
    else:
        allowed = "(finite)"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) \
                or (lo is not None and (value < lo or (open_lo and value == lo))) \
                or (hi is not None and (value > hi or (open_hi and value == hi))):
            raise argparse.ArgumentTypeError(f"{text}: must be {word} {allowed}")
        return value
    parse.__name__ = f"{word} {allowed}"
    return parse


positive_int = bounded(int, 1)
nonneg_int = bounded(int, 0)
positive_float = bounded(float, 0, open_lo=True)
nonneg_float = bounded(float, 0)
finite_float = bounded(float)
fraction = bounded(float, 0, 1)                   # a probability, a share, an area fraction
below_one = bounded(float, 0, 1, open_hi=True)    # Adam's betas, drop path


def path_problem(path, want):
    """What is wrong with a path flag's value ('' when nothing): want "file" or "folder" (to read),
    "out-file" or "out-dir" (to write: not the other kind, its folder there or creatable)."""
    if want == "out-file" and os.path.isdir(path):
        return "is a folder, not a file"
    if want == "out-dir" and os.path.exists(path) and not os.path.isdir(path):
        return "is a file, not a folder"
    if want.startswith("out-"):
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        return "" if os.path.isdir(parent) else f"cannot be created: {parent} is a file"
    if not os.path.exists(path):
        return "does not exist"
    if want == "file" and os.path.isdir(path):
        return "is a folder, not a file"
    if want == "folder" and not os.path.isdir(path):
        return "is a file, not a folder"
    if not os.access(path, os.R_OK):
        return "is not readable (permissions)"
    return ""


def check_paths(*checks):
    """(flag, path, want) triples (path_problem's want; a None or empty path is skipped): the first
    problem is a one-line error, before any work."""
    for flag, path, want in checks:
        why = path_problem(path, want) if path else ""
        if why:
            fail(f"{flag} {path} {why}")


# ============================================================================= distributed


def nvidia_devices():
    """Why this machine looks like it has NVIDIA GPUs ('' when it does not): a device node, the
    driver's nvidia-smi, or CUDA_VISIBLE_DEVICES naming devices."""
    if os.path.exists("/dev/nvidia0"):
        return "/dev/nvidia0 exists"
    if shutil.which("nvidia-smi"):
        return "nvidia-smi is installed"
    if os.environ.get("CUDA_VISIBLE_DEVICES", "") not in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}"
    return ""


def pick_device(name=None):
    """--device -> torch.device in every entry script. None or "cuda": the GPU when torch can use
    one, cuda:LOCAL_RANK under torchrun (an explicit index there would put every rank on one GPU:
    refused). NVIDIA GPUs this torch cannot use (a wheel for a newer driver or without the GPU's
    kernels, e.g. CUDA 13 on a V100) stop with one line, not a silent CPU run (--device cpu: the
    CPU)."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0)) if "RANK" in os.environ else None
    build = f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none: a CPU-only build'})"
    fix = ("install the torch wheel for this machine's driver (pip install torch --index-url "
           "https://download.pytorch.org/whl/cu126 for a V100; docs/performance.md, 'torch "
           "wheels'), or pass --device cpu")
    if name is None or name == "cuda":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank or 0)
        if name == "cuda":
            fail(f"--device cuda: {build} sees no usable GPU; {fix}")
        why = nvidia_devices()
        if why:
            fail(f"this machine has NVIDIA GPUs ({why}) but {build} cannot use them; {fix}")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        fail(f"--device {name}: not a torch device (cpu, cuda, cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device {name}: {build} sees no usable GPU; {fix}")
    if device.type == "cuda" and local_rank is not None:
        fail(f"--device {name} under torchrun would put every rank on one GPU; pass --device cuda "
             f"(rank r takes cuda:LOCAL_RANK) and choose GPUs with CUDA_VISIBLE_DEVICES")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    return device


def setup_dist(device_name=None):
    """nanoGPT-style DDP when torchrun sets RANK: NCCL on GPU (every collective, flags included, is
    a small CUDA tensor), gloo on CPU; else one process. device_name: --device. -> (rank, world,
    device)."""
    device = pick_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if "RANK" not in os.environ:
        return 0, 1, device
    backend = "nccl" if device.type == "cuda" else "gloo"
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
    """Sum (or op) x over ranks in place, on the run's device (CUDA under NCCL); no-op alone."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x, op=op or dist.ReduceOp.SUM)
    return x


def all_reduce_flags(device_flags, host_values):
    """The training step's one collective and its one host sync: flags computed on the device (a
    non-finite loss) and counts known on the host, summed over ranks, so that every rank decides
    alike. The host values travel through pinned memory, asynchronously: no sync of their own.
    -> list of floats, device flags first."""
    device = device_flags.device
    host = torch.tensor([float(v) for v in host_values])
    if device.type == "cuda":
        host = host.pin_memory()
    flags = torch.cat([device_flags.float(), host.to(device, non_blocking=True)])
    return all_reduce(flags).tolist()


def check_ranks_agree(step, shape, device, what="--resume"):
    """Every rank must start from the same step with the same shape flags: with a node-local
    --out-dir only rank 0 finds checkpoint-latest, the others start at step 0, and the run diverges
    silently, then hangs at the end. One all-reduce (max of x and of -x) at start-up; a one-line
    error on every rank when they differ. shape: a dict of the run's shape flags."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    h = zlib.crc32(json.dumps(shape, sort_keys=True, default=str).encode())
    t = all_reduce(torch.tensor([step, -step, h, -h], dtype=torch.int64, device=device),
                   dist.ReduceOp.MAX).tolist()
    if t[0] != -t[1]:
        fail(f"{what}: the ranks start from different steps ({-t[1]} to {t[0]}): some rank did not "
             f"find the checkpoint; put --out-dir on a filesystem every node shares, or pass "
             f"--resume PATH to a checkpoint every node can read")
    if t[2] != -t[3]:
        fail(f"{what}: the ranks were given different shape flags "
             f"({', '.join('--' + k.replace('_', '-') for k in shape)}); launch every node with "
             f"the same command")


def wrap_model(model, device, world, compile=False):
    """DDP when world > 1, then torch.compile when asked. In this order Dynamo splits the graph at
    DDP's buckets (DDPOptimizer), so the gradient all-reduce overlaps the backward; DDP around a
    compiled module gets every gradient only at the end of the backward (PyTorch's DDP + compile
    notes). The position tables are constant buffers: not synced each forward (forward_sync_buffers;
    torch < 2.14 calls it broadcast_buffers, 2.14 warns on it); gradients share the buckets' memory."""
    if world > 1:
        ddp, keep = torch.nn.parallel.DistributedDataParallel, "forward_sync_buffers"
        keep = keep if keep in inspect.signature(ddp).parameters else "broadcast_buffers"
        model = ddp(model, device_ids=[device.index] if device.type == "cuda" else None,
                    gradient_as_bucket_view=True, **{keep: False})
    return torch.compile(model) if compile else model


def teardown(world, device):
    """All ranks finish together, then the process group goes (nanoGPT's destroy_process_group)."""
    if world > 1:
        if device.type == "cuda":
            dist.barrier(device_ids=[device.index if device.index is not None
                                     else torch.cuda.current_device()])
        else:
            dist.barrier()
        dist.destroy_process_group()


# ============================================================================= precision


def amp_dtype(device, amp):
    """--amp -> torch dtype or None (fp32). auto: bf16 on GPUs with native bf16 (compute capability
    >= 8.0), fp16 + loss scaling on older ones (V100, T4: is_bf16_supported() is true there, but
    bf16 is emulated), fp32 on CPU (bf16 there only when asked)."""
    if amp == "auto":
        if device.type != "cuda":
            return None
        amp = "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def amp_setup(device, amp):
    """-> (autocast context factory, GradScaler (fp16 only) or None, dtype or None)."""
    dtype = amp_dtype(device, amp)
    if dtype is None:
        return nullcontext, None, None
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler, dtype


def fast_math(device, workers=0):
    """GPU: cuDNN autotuning for the fixed clip shape, TF32 matmuls for fp32 runs. CPU: the step
    gets the cores the loader's `workers` leave (with every core the two fight: the 2-core demo,
    1 worker, runs 1.4x faster on one compute thread than on two; docs/performance.md);
    OMP_NUM_THREADS, when set, wins (torchrun sets 1 per rank)."""
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
    """AdamW, its lr set per step by set_lr; on GPU the fused kernel (one launch for all params)."""
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


def schedule_summary(lrs, stage1_steps, peak, name):
    """The lr schedule in one line per stage: steps, the step its warm-up first reaches the peak,
    where it ends, and the share of the run at >= 0.9x the peak."""
    stages = ([lrs[:stage1_steps], lrs[stage1_steps:]] if 0 < stage1_steps < len(lrs)
              else [lrs])
    lines = [f"lr schedule ({name}): {len(lrs):,} steps, peak {peak:.4g}, "
             f"{100 * np.mean(lrs >= 0.9 * peak):.1f}% of the steps at >= 0.9x the peak"]
    for i, part in enumerate(stages, 1):
        top = np.flatnonzero(part >= peak * (1 - 1e-9))
        warm = f"at the peak from step {top[0]:,}" if len(top) else "never at the peak"
        lines.append(f"  stage {i}: {len(part):,} steps, {warm}, last lr {part[-1]:.4g}"
                     if len(part) else f"  stage {i}: no steps")
    return "\n".join(lines)


def set_lr(optimizer, lr):
    for g in optimizer.param_groups:   # lr_scale: layer-wise decay in finetune.py, 1 elsewhere
        g["lr"] = float(lr) * g.get("lr_scale", 1.0)


def optimizer_step(optimizer, scaler):
    """After backward: step (through the fp16 loss scaler if any), clear the gradients."""
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


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or used; the message is one line naming the file."""


def load_checkpoint(path):
    """The one way a checkpoint is read: torch.load(weights_only=True) on the CPU -> dict. Every
    failure (missing, a folder, empty, truncated, not a torch file, objects weights_only refuses,
    no dict inside) raises CheckpointError('<path> <what it found>')."""
    why = path_problem(path, "file")
    if not why:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(ckpt, dict):
                return ckpt
            why = f"holds a {type(ckpt).__name__}, not a checkpoint (a dict of weights)"
        except Exception as e:   # noqa: BLE001 -- every way torch.load fails becomes one line
            with open(path, "rb") as f:
                head, size = f.read(8), os.path.getsize(path)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0][:90]
            if size == 0:
                why = "is empty (0 bytes)"
            elif not (head.startswith(b"PK") or head[:1] == b"\x80"):   # torch's zip, old pickle
                why = f"is not a torch checkpoint (it starts with {head!r})"
            elif "Weights only load failed" in str(e):
                why = ("holds Python objects beyond tensors (weights_only loading refuses them): "
                       "not a checkpoint these scripts wrote")
            else:
                why = f"is truncated or damaged ({size} bytes; torch.load: {first})"
    raise CheckpointError(f"{path} {why}")


def checkpoint_script(ckpt):
    """Which script wrote a checkpoint (or whose flags an args dict holds): "train.py",
    "finetune.py", "probe.py" or "" (another's, e.g. a released VideoMAE one)."""
    a = ckpt.get("args") or {}
    if "head_type" in ckpt or "attn_depth" in a:
        return "probe.py"
    if "count_stats" in ckpt or "layer_decay" in a:
        return "finetune.py"
    if "stage" in ckpt or "strategy" in a:
        return "train.py"
    return ""


def describe_checkpoint(ckpt):
    """What a checkpoint holds, in words, from its own args: "a train.py checkpoint (--model tiny
    --patch-size 8 ..., step 64)". For one-line errors that say what was found."""
    a, script = ckpt.get("args") or {}, checkpoint_script(ckpt)
    flags = [f"--{k.replace('_', '-')} {a[k]}" for k in ("model", "patch_size", "tubelet",
             "img_size", "num_frames", "target", "task", "num_classes") if a.get(k) is not None]
    text = " ".join(flags) + (f"{'; ' if flags else ''}step {ckpt['step']}" if "step" in ckpt
                              else "")
    what = {"probe.py": "probe.py's head file", "": "a checkpoint" + ("" if a else " without args")
            }.get(script, f"a {script} checkpoint")
    return what + (f" ({text})" if text else "")


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
    """--resume "auto": <out_dir>/checkpoint-latest.pth when there is one (so `torchrun
    --max-restarts N ... --resume` also makes the first start), else (missing, truncated, damaged)
    the newest readable checkpoint-NNNN.pth / checkpoint-stage1.pth there, said so; a path: that
    checkpoint. Nothing readable to fall back on, or an unreadable path: a one-line error.
    -> checkpoint dict (its "path" added) or None."""
    if not resume:
        return None
    if resume != "auto":
        try:
            return {**load_checkpoint(resume), "path": resume}
        except CheckpointError as e:
            fail(f"--resume {e}")
    latest, problem = os.path.join(out_dir, "checkpoint-latest.pth"), None
    if os.path.exists(latest):
        try:
            return {**load_checkpoint(latest), "path": latest}
        except CheckpointError as e:
            problem = str(e)
    others = [p for p in glob.glob(os.path.join(out_dir, "checkpoint-*.pth")) if p != latest]
    for path in sorted(others, key=os.path.getmtime, reverse=True):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            if master:
                print(f"--resume: {e}; skipped", flush=True)
            continue
        if master:
            print(f"--resume: {problem or f'no checkpoint at {latest}'}; resuming from {path}, "
                  f"the newest readable checkpoint there", flush=True)
        return {**ckpt, "path": path}
    if problem:
        fail(f"--resume: {problem}, and {out_dir} holds no readable checkpoint-NNNN.pth to fall "
             f"back on; rerun without --resume (from scratch) or into another --out-dir")
    if master:
        print(f"--resume: no checkpoint at {latest} yet, starting from scratch")
    return None


def open_resume(resume, out_dir, master, script, shape, schedule, accept_changes=False):
    """find_resume's checkpoint, checked before any work against this run: script ("train.py"),
    shape and schedule ({dest: value} of the flags whose change makes the checkpoint unloadable /
    the run another). Another script or shape: a one-line error; another schedule or data stream
    would silently continue another run: an error unless accept_changes (each change printed). The
    world size may change (--batch-size is the total over all ranks: same schedule, same data).
    -> the checkpoint dict (its accepted "changes" added) or None (nothing to resume)."""
    ckpt = find_resume(resume, out_dir, master)
    if ckpt is None:
        return None
    theirs, path, saved = checkpoint_script(ckpt), ckpt["path"], ckpt.get("args") or {}
    if theirs != script or not {"model", "optimizer", "step", "rng"} <= set(ckpt):
        fix = {("train.py", "finetune.py"): f"to finetune its encoder pass --checkpoint {path} "
                                            f"instead of --resume",
               ("finetune.py", "train.py"): f"to test it: python finetune.py --eval-only "
                                            f"--checkpoint {path}"}.get(
            (theirs, script), f"--resume continues an earlier {script} run from its "
                              f"<out-dir>/checkpoint-latest.pth")
        fail(f"--resume {path} is {describe_checkpoint(ckpt)}, not a {script} checkpoint to "
             f"continue; {fix}")

    def flag(k):
        return "--" + k.replace("_", "-")
    other = [k for k, v in shape.items() if k in saved and saved[k] != v]
    if other:
        fail(f"--resume {path}: the checkpoint has "
             + ", ".join(f"{flag(k)} {saved[k]} (this run: {shape[k]})" for k in other)
             + "; its weights cannot load: pass " + " ".join(f"{flag(k)} {saved[k]}" for k in other)
             + ", or start afresh in another --out-dir")
    ckpt["changes"] = [f"{flag(k)} {saved[k]} -> {v}" for k, v in schedule.items()
                       if k in saved and saved[k] != v]
    if ckpt["changes"] and not accept_changes:
        fail("--resume with other flags than the checkpoint's run: " + "; ".join(ckpt["changes"])
             + " (pass --accept-changes to continue with them)")
    return ckpt


def resume(ckpt, master, model, optimizer, scaler, steps_per_epoch):
    """Restore model, optimizer, scaler and RNG states from open_resume's checkpoint (None: a
    fresh start), say so. -> (the step to continue from, the checkpoint dict or None)."""
    if ckpt is None:
        return 0, None
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        fail(f"--resume {ckpt['path']} is {describe_checkpoint(ckpt)}; it does not load into this "
             f"run's model: {(str(e).strip().splitlines()[:2])[-1].strip()[:120]}")
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    if master:
        stage = f", stage {ckpt['stage']}" if "stage" in ckpt else ""
        print(f"resumed from {ckpt['path']} at step {ckpt['step']} (epoch "
              f"{ckpt['step'] / steps_per_epoch:.2f}{stage})"
              + "".join(f"\n  changed: {c}" for c in ckpt["changes"]), flush=True)
    return ckpt["step"], ckpt


class CheckpointClock:
    """When checkpoint-latest is due: every `minutes` of wall time (a ViT-B + AdamW checkpoint is
    ~1.1 GB that every rank waits for), and every `steps` steps when steps > 0. The caller also
    writes it at stage ends, the run's end and preemption."""

    def __init__(self, minutes, steps=0):
        self.minutes, self.steps, self.last = minutes, steps, time.time()

    def due(self, step):
        return (self.steps > 0 and step % self.steps == 0) or \
            time.time() - self.last >= 60 * self.minutes

    def done(self):
        self.last = time.time()


# ============================================================================= the pretraining step


def to_device(batch, device):
    """A loader batch on the device, asynchronously from pinned memory: a uint8 16x224 batch of 32
    clips is 77 MB, ~3 ms over PCIe 4, next to a step of hundreds of ms, so no side stream is spent
    on overlapping it (docs/performance.md)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}


def train_step(model, target_fn, micro_batches, autocast, scaler, accum):
    """One optimizer step's forward and backward, Eq. 2 over `accum` micro-batches: the uint8 clips
    normalised on the device, the targets under no_grad, the loss on the masked tokens
    (PretrainModel.forward_loss), backward (DDP all-reduces the gradients on the last micro-step
    only). The caller steps the optimizer. -> (loss, floor zero, floor mean) summed over the
    micro-batches / accum, on the device: the floors predict zero and the visible tokens' mean."""
    total = torch.zeros(3, device=micro_batches[0]["video"].device)
    for i, batch in enumerate(micro_batches):
        video = data.normalize(data.infuse(batch))            # objects rendered: V', float
        idx = vis_idx, mask_idx = batch["visible_idx"], batch["masked_idx"]   # (B, Nv), (B, Nm)
        with torch.no_grad(), autocast():
            targets = target_fn(video).float()                # (B, N, Dt); teacher sees V' (SPEC 2)
        sync = i == len(micro_batches) - 1 or not hasattr(model, "no_sync")
        with (nullcontext() if sync else model.no_sync()), autocast():
            loss = model(video, idx, targets)                 # Eq. 2: MSE on masked tokens only
        (scaler.scale(loss / accum) if scaler else loss / accum).backward()
        with torch.no_grad():
            tgt = gather_tokens(targets, mask_idx)            # (B, Nm, Dt)
            vis_mean = gather_tokens(targets, vis_idx).mean(1, keepdim=True)
            total += torch.stack([loss.detach(), tgt.pow(2).mean(), (tgt - vis_mean).pow(2).mean()])
    return total / accum


class StepGuard:
    """What can go wrong in a step, decided alike on every rank by the step's one collective and
    host sync (all_reduce_flags; a rank stopping alone would leave the others hanging):
    - a bad item (unreadable video, image or object) is named once and counted; past
      max_bad_fraction of the num_items the run stops and lists them;
    - a non-finite loss never reaches the weights: the step is skipped; after max_nonfinite in a row
      the run stops, the last good checkpoint (`latest`) untouched;
    - SIGTERM / SIGUSR1 (Preemption) set `stop`: the loop checkpoints, then exit_if_preempted."""

    def __init__(self, num_items, max_bad_fraction, max_nonfinite, rank, latest):
        self.num_items, self.max_bad_fraction, self.max_nonfinite = (num_items, max_bad_fraction,
                                                                     max_nonfinite)
        self.rank, self.latest, self.preempt = rank, latest, Preemption()
        self.bad_seen, self.bad_total, self.nonfinite, self.stop = set(), 0, 0, False

    def check(self, loss, bad, step):
        """loss: a (1,) device tensor; bad: this rank's bad items of the step. -> True when the
        step may update the weights (False: skip it, the gradients are the caller's to clear)."""
        for b in bad:
            if b not in self.bad_seen:
                self.bad_seen.add(b)
                print(f"[rank {self.rank}] skipped bad item: {b}", flush=True)
        too_many = len(self.bad_seen) > self.max_bad_fraction * self.num_items
        nan_loss, n_bad, stop_bad, self.stop = all_reduce_flags(
            ~torch.isfinite(loss), [len(bad), too_many, self.preempt.signum > 0])
        self.bad_total += int(n_bad)
        if stop_bad:
            raise SystemExit(f"error: {len(self.bad_seen)} of {self.num_items} items unreadable on "
                             f"rank {self.rank} (past --max-bad-fraction {self.max_bad_fraction}):"
                             f"\n  " + "\n  ".join(sorted(self.bad_seen)))
        if not nan_loss:
            self.nonfinite = 0
            return True
        self.nonfinite += 1
        if self.rank == 0:
            print(f"step {step}: non-finite loss, step skipped ({self.nonfinite} in a row)",
                  flush=True)
        if self.nonfinite >= self.max_nonfinite:
            raise SystemExit(f"error: {self.nonfinite} non-finite losses in a row at step {step}; "
                             f"stopping. The last good checkpoint is {self.latest} (untouched).")
        return False

    def exit_if_preempted(self, step, world, device):
        """After the step's checkpoint: on a preemption signal every rank leaves together."""
        if not self.stop:
            return
        if self.rank == 0:
            print(f"preempted: step {step} saved to {self.latest}; continue with --resume",
                  flush=True)
        teardown(world, device)
        raise SystemExit(0)


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


def add_wandb_args(a):
    """--wandb and its two settings, for the entry scripts (beside --tensorboard)."""
    a("--wandb", action="store_true", help="also log to Weights & Biases (pip install wandb): the "
      "same numbers as log.jsonl, the args, the checkpoint path at the end; WANDB_MODE=offline "
      "writes <out-dir>/wandb only")
    a("--wandb-project", default="smile", help="the wandb project")
    a("--wandb-run-name", default=None, help="the wandb run name (default: the --out-dir's name)")


def add_run_args(a, out_dir, log_every):
    """The flags of a training run itself (train.py, finetune.py): output, resume, logging,
    checkpoints, the non-finite guard. a: parser.add_argument."""
    a("--out-dir", default=out_dir, help="everything a run writes goes here")
    a("--resume", nargs="?", const="auto", default=None,
      help="continue from <out-dir>/checkpoint-latest.pth or a path")
    a("--accept-changes", action="store_true",
      help="--resume: continue although schedule or data flags differ from the checkpoint's run "
      "(each change is printed)")
    a("--steps", type=positive_int, default=None,
      help="stop after this many optimizer steps (schedule unchanged)")
    a("--log-every", type=positive_int, default=log_every)
    a("--tensorboard", action="store_true",
      help="also write <out-dir>/tb (needs tensorboard installed)")
    add_wandb_args(a)
    a("--ckpt-minutes", type=nonneg_float, default=30,
      help="minutes between writes of checkpoint-latest.pth (also written at the end of each stage "
      "and of the run, and on preemption); ViT-B + AdamW is ~1.1 GB that every rank waits for")
    a("--ckpt-every", type=nonneg_int, default=0,
      help="also write checkpoint-latest.pth every this many steps (0: by time only)")
    a("--max-nonfinite", type=positive_int, default=3,
      help="stop after this many non-finite losses in a row")


class Log:
    """Rank 0 prints one line per call and appends the same record to <out_dir>/log.jsonl; with
    tensorboard installed and --tensorboard given, the numbers go to <out_dir>/tb as well; with
    --wandb (args given), to a Weights & Biases run in <out_dir>/wandb (imported only then)."""

    def __init__(self, out_dir, master, tensorboard=False, args=None):
        self.path, self.master = os.path.join(out_dir, "log.jsonl"), master
        self.tb = self.wb = None
        if master and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(out_dir, "tb"))
            except ImportError:
                print("--tensorboard: tensorboard is not installed (pip install tensorboard); "
                      "log.jsonl only")
        if master and getattr(args, "wandb", False):
            try:
                import wandb
            except ImportError:
                fail("--wandb: wandb is not installed (pip install wandb)")
            # the mode comes from the environment: WANDB_MODE=offline (or disabled) is honoured
            name = args.wandb_run_name or os.path.basename(os.path.abspath(out_dir))
            try:
                self.wb = wandb.init(project=args.wandb_project, name=name, dir=out_dir,
                                     config=vars(args))
            except Exception as e:   # no API key, no network: say so in one line, before any work
                fail(f"--wandb: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                     "(wandb login, or WANDB_MODE=offline to log locally)")

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
        if self.wb is not None:   # every number, step and epoch included (pick either as x-axis)
            flat = {f"{k}/{j}" if isinstance(v, dict) else k: x for k, v in record.items()
                    for j, x in (v.items() if isinstance(v, dict) else [(None, v)])}
            self.wb.log({k: v for k, v in flat.items() if isinstance(v, (int, float))})

    def finish(self, checkpoint=None):
        """End of the run: the checkpoint's path into the wandb run's summary, the run closed."""
        if self.wb is not None:
            if checkpoint and os.path.isfile(checkpoint):
                self.wb.summary["checkpoint"] = os.path.abspath(checkpoint)
            self.wb.finish()
            self.wb = None


def save_args(args, out_dir):   # written aside, then renamed: no reader ever sees half of it
    with open(os.path.join(out_dir, f"args.json.tmp{os.getpid()}"), "w") as f:
        json.dump(vars(args), f, indent=1)
    os.replace(f.name, os.path.join(out_dir, "args.json"))


def print_table(rows, title):
    """rows: list of dicts with the same keys -> a plain aligned table."""
    keys = list(rows[0])
    cells = [[f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print(title)
    print("  ".join(k.rjust(w) for k, w in zip(keys, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))


def fmt_time(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class LogWindow:
    """One --log-every window of train.py: the loss and its floors summed on the device (read at
    log time only), clips, the wait for data; log() writes their means, then starts the next."""

    def __init__(self, device):
        self.device, self.t0, self.wait, self.clips, self.n = device, time.time(), 0.0, 0, 0
        self.sums = torch.zeros(3, device=device)

    def add(self, sums, clips):
        self.sums, self.n, self.clips = self.sums + sums, self.n + 1, self.clips + clips

    def log(self, log, step, end_step, stage, lr, epoch, bad_total):
        dt, n = time.time() - self.t0, self.n
        loss, zero, mean = (self.sums / n).tolist()
        rec = dict(step=step, epoch=round(epoch, 3), stage=stage, loss=loss, floor_zero=zero,
                   floor_mean=mean, lr=float(lr), clips_per_s=self.clips / dt,
                   data_wait=self.wait / dt, bad=bad_total, time=time.time())
        log(rec, f"step {step}/{end_step} | ep {rec['epoch']:.2f} | stage {stage} | loss "
                 f"{loss:.4f} (floors: zero {zero:.4f}, mean {mean:.4f}) | lr {lr:.2e} | "
                 f"{rec['clips_per_s']:.1f} clips/s | data wait {100 * rec['data_wait']:.0f}% | "
                 f"bad {bad_total} | eta {fmt_time((end_step - step) * dt / n)}")
        self.__init__(self.device)   # the next window
