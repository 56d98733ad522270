"""Checkpoints of the training scripts (train.py, finetune.py, probe.py) and the tools: atomic
writes, weights_only reads, the periodic ones pruned, RNG state, and --resume in one call (the
checkpoint found, its flags compared with the run's, every state restored); CheckpointClock says
when checkpoint-latest is due. A checkpoint holds model, optimizer, scaler, step, RNG states and the
run's args, plain tensors and builtins only, so it loads with weights_only=True."""
import glob
import os
import re
import time

import torch

from runtime import fail


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


class CheckpointClock:
    """When checkpoint-latest is due: every `minutes` of wall time, and every `steps` steps when
    steps > 0 (a ViT-B + AdamW checkpoint is ~1.1 GB that every rank waits for: by time, not by
    step count). The caller also writes it at stage ends, the run's end and preemption."""

    def __init__(self, minutes, steps=0):
        self.minutes, self.steps, self.last = minutes, steps, time.time()

    def due(self, step):
        return (self.steps > 0 and step % self.steps == 0) or \
            time.time() - self.last >= 60 * self.minutes

    def done(self):
        self.last = time.time()
