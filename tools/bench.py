"""How fast is smile on this machine? One table; every row compares two things timed in
the same run.

    python -m tools.bench               # full: ViT-S at 16x224, a ViT-B/16 teacher; a few minutes on
                                  # 2 CPU cores
    python -m tools.bench --quick       # small shapes, under a minute (tests/test_bench.py runs it)
    python -m tools.bench --only step,data --rounds 8 --workers 4
    python -m tools.bench data --list L --data-root R --objects DIR
                                  # before renting GPUs, on your data (synthetic without the
                                  # flags): one loader worker's CPU per 16x224 clip, the step
                                  # rendering the objects vs today's overlay in the worker, and
                                  # the workers an H100 needs; ends 'worker CPU per clip: ...'
    python -m tools.bench --gpu-check   # on a GPU: the gpu and data rows, then train.py eager and
                                  # --compile, and one markdown table for docs/performance.md
                                  # (under 10 minutes)

Sections (rows: what | ours | baseline | ratio | goal | met?):
  step     a student pretraining step (forward + backward + AdamW) of model.py against RefStudent
           below, the VideoMAE-style code with explicit softmax(q k^T) v attention: same weights,
           same dtype. Also: achieved FLOP/s (counted by hand in step_flops) against a large
           torch.mm, bf16 autocast against fp32, fused AdamW, and train.py's --grad-checkpointing
           and --compile against eager
  memory   activations per clip, measured as the bytes autograd saves for backward (saved-tensor
           hooks; torch.cuda.max_memory_allocated on a GPU), and the batch per 80 GB GPU they imply
  teacher  CLIP ViT-B/16 with RANDOM weights (never downloaded): frames ::2 against all, bf16
           against fp32
  gpu      (CUDA only) train.py's WHOLE step, built from train.py's own functions: a uint8 batch in
           pinned memory -> device -> data.normalize -> CLIP teacher (weights cast once to the amp
           dtype) -> student forward/backward on index masks -> fused AdamW, timed with CUDA events.
           FLOP/s count the teacher's forward too (about half of a ViT-B step); MFU against the
           GPU's dense bf16 peak (GPU_PEAKS), peak memory, against the student alone, fp32/TF32 and
           --compile
  data     decode ms per clip before/after `python -m tools.prepare encode` (one decoder thread, as in a
           loader worker), overlay and mask ms per clip on one core, uint8 against float32 clips,
           and loaders (decode + crop + overlay + mask) against the model's training speed: the CPU
           step's, and on a GPU the whole GPU step's (clips/s per GPU, workers per GPU)
  decode   (issue 26) CPU ms per clip for each `prepare encode --gop` x decoder and MB per video;
           the packed object bank against its PNGs; finetune.py's loader per clip, by part
  demo     `python train.py --preset tiny` end to end, clips/s read from its log.jsonl

Timing: the two sides of a row run alternately (A B A B ...) and each keeps its best round. Other
work on the machine only adds time, so the minimum is the steadiest estimate, and alternating
exposes both sides to the same load: trust the ratios more than the absolute numbers. With 2 threads
on 2 busy cores every parallel op waits for a descheduled thread; run it on a quiet machine (load is
printed).
docs/performance.md explains each row and holds the last numbers measured. This file holds the
sections step, memory, teacher and demo; tools/bench_gpu.py the gpu section and --gpu-check,
tools/bench_data.py the data section, tools/benchkit.py the timing and the table they share.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from model import MODEL_SIZES, PretrainModel, mask_indices, sinusoid_table
from runtime import Parser, check_paths, nonneg_int, positive_float, positive_int
from tools.bench_data import bench_data, bench_decode, worker_check
from tools.bench_gpu import bench_gpu, gpu_check, markdown_table
from tools.benchkit import (ROOT, machine, matmul, print_table, race, row, small_clip_config,
                            step_flops)

# the teacher has random weights: never touch the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---------------------------------------------------------------------------- the reference student
# Written the way the VideoMAE reference code is: explicit softmax(q k^T) v attention, the tubelet
# conv over all N tokens and masking after it. Same parameter names as model.py, so model.py's
# state_dict loads with strict=True and both compute the same function (checked in student()).

class RefAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = (F.linear(x, self.qkv.weight, bias).reshape(B, N, 3, self.heads, -1)
               .permute(2, 0, 3, 1, 4))
        # (B, nh, N, N) in memory
        attn = ((qkv[0] * self.scale) @ qkv[1].transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ qkv[2]).transpose(1, 2).reshape(B, N, C))


class RefBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), RefAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class RefStudent(nn.Module):
    def __init__(self, img_size, num_frames, out_dim, embed_dim, depth, num_heads,
                 decoder_embed_dim, decoder_depth, decoder_num_heads):
        super().__init__()
        n, D, Dd = num_frames // 2 * (img_size // 16) ** 2, embed_dim, decoder_embed_dim
        self.encoder, self.decoder = nn.Module(), nn.Module()
        self.encoder.patch_embed = nn.Module()
        self.encoder.patch_embed.proj = nn.Conv3d(3, D, (2, 16, 16), (2, 16, 16))
        self.encoder.blocks = nn.ModuleList(RefBlock(D, num_heads) for _ in range(depth))
        self.encoder.norm = nn.LayerNorm(D, eps=1e-6)
        self.encoder_to_decoder = nn.Linear(D, Dd, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        self.decoder.blocks = nn.ModuleList(RefBlock(Dd, decoder_num_heads)
                                            for _ in range(decoder_depth))
        self.decoder.norm, self.decoder.head = nn.LayerNorm(Dd, eps=1e-6), nn.Linear(Dd, out_dim)
        self.register_buffer("enc_pos", sinusoid_table(n, D), persistent=False)
        self.register_buffer("dec_pos", sinusoid_table(n, Dd), persistent=False)

    def forward(self, video, mask):
        x = (self.encoder.patch_embed.proj(video).flatten(2).transpose(1, 2)
             + self.enc_pos.type_as(video))
        B, _, C = x.shape
        x = x[~mask].reshape(B, -1, C)
        for blk in self.encoder.blocks:
            x = blk(x)
        x = self.encoder_to_decoder(self.encoder.norm(x))
        pos = self.dec_pos.type_as(x).expand(B, -1, -1)
        vis, msk = pos[~mask].reshape(B, -1, x.shape[-1]), pos[mask].reshape(B, -1, x.shape[-1])
        x = torch.cat([x + vis, self.mask_token.type_as(x) + msk], dim=1)
        for blk in self.decoder.blocks:
            x = blk(x)
        return self.decoder.head(self.decoder.norm(x[:, -msk.shape[1]:]))


# ----------------------------------------------------------------------------- the student step

def student(size, img, out_dim=768, ref=False):
    """model.py's PretrainModel (16 frames), and with ref=True a RefStudent holding the
    same weights."""
    torch.manual_seed(0)
    model = PretrainModel(img_size=img, num_frames=16, out_dim=out_dim, **MODEL_SIZES[size])
    if not ref:
        return model
    reference = RefStudent(img, 16, out_dim, **MODEL_SIZES[size])
    reference.load_state_dict(model.state_dict(), strict=True)
    video, mask, _ = batch(1, img, out_dim)
    with torch.no_grad():
        torch.testing.assert_close(model(video, mask), reference(video, mask), atol=1e-4, rtol=1e-4)
    return model, reference


def batch(B, img, out_dim=768, ratio=0.8, device="cpu"):
    """Random clips (B, 3, 16, img, img), tube masks (B, N) (True = masked) and targets (B, Nm,
    out_dim)."""
    g = torch.Generator().manual_seed(0)
    hw = (img // 16) ** 2
    # same patches, 8 slices
    mask = (torch.rand(B, hw, generator=g).argsort(1) < int(ratio * hw)).repeat(1, 8)
    target = torch.randn(B, int(mask[0].sum()), out_dim, generator=g)
    return [x.to(device) for x in (torch.randn(B, 3, 16, img, img, generator=g), mask, target)]


def make_step(model, video, mask, target, amp=None, fused=True):
    """One step as train.py takes it: forward (under autocast when amp), MSE on the masked tokens,
    backward, AdamW (betas 0.9/0.95). fused=False: torch's default AdamW (a per-tensor
    loop on CPU)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=fused or None)
    # model.py takes the index pair made once on the CPU, as the loader does; the
    # reference a bool mask
    idx = mask if isinstance(model, RefStudent) else mask_indices(mask.cpu())
    idx = idx if isinstance(model, RefStudent) else tuple(i.to(video.device) for i in idx)

    def step():
        with torch.autocast(video.device.type, dtype=amp) if amp else nullcontext():
            pred = model(video, idx)
        F.mse_loss(pred.float(), target).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if video.is_cuda:
            torch.cuda.synchronize()
    return step

def versus(what, B, ours, base, rounds):
    """A row racing two step callables on B clips: clips/s of each, and the speed-up of ours."""
    t = race({"ours": ours, "base": base}, rounds)
    row(what, f"{B / t['ours']:.2f} clips/s", f"{B / t['base']:.2f} clips/s",
        f"{t['base'] / t['ours']:.2f}x")


def bench_step(a, rate):
    """Section step. Fills rate {model size: fp32 clips/s}, which data and demo compare against."""
    n = 1024 if a.quick else 2048
    (mm32, flops_mm), (mm16, _) = matmul(n, torch.float32), matmul(n, torch.bfloat16)
    for size, img, B, out_dim in (("tiny", 64, 8 if a.quick else 32, 1536),
                                  ("small", 64 if a.quick else 224, 2, 768)):
        name = f"{'ViT-S' if size == 'small' else size} 16x{img} B{B}"
        ours, ref = student(size, img, out_dim, ref=True)
        video, mask, target = batch(B, img, out_dim)
        eager = make_step(ours, video, mask, target)
        # the matmuls race with the steps, so that the peaks see the same load
        t = race({"fp32": eager, "ref": make_step(ref, video, mask, target), "mm32": mm32,
                  "mm16": mm16, "bf16": make_step(ours, video, mask, target, amp=torch.bfloat16)},
                 a.rounds)
        rate[size] = B / t["fp32"]
        row(f"step {name} fp32: model.py vs explicit-attention reference",
            f"{B / t['fp32']:.2f} clips/s", f"{B / t['ref']:.2f} clips/s",
            f"{t['ref'] / t['fp32']:.2f}x", ">= 1.5x", t["ref"] / t["fp32"] >= 1.5)
        for key, mm in (("fp32", "mm32"), ("bf16", "mm16")):
            got, peak = step_flops(size, img, out_dim) * B / t[key], flops_mm / t[mm]
            row(f"step {name} {key}: achieved FLOP/s vs {n}^3 torch.mm", f"{got / 1e9:.0f} GFLOP/s",
                f"{peak / 1e9:.0f} GFLOP/s", f"{100 * got / peak:.0f}%",
                *((">= 70%", got / peak >= 0.7) if key == "fp32" else ()))
        row(f"step {name}: bf16 autocast vs fp32 (CPU)", f"{B / t['bf16']:.2f} clips/s",
            f"{B / t['fp32']:.2f} clips/s", f"{t['fp32'] / t['bf16']:.2f}x")
        # the attention alone, at the decoder's shape (N largest): SDPA against softmax(q k^T) v
        x = torch.randn(B, mask.shape[1], MODEL_SIZES[size]["decoder_embed_dim"],
                        requires_grad=True)
        attn, ref_attn = ours.decoder.blocks[0].attn, ref.decoder.blocks[0].attn
        t = race({"sdpa": lambda: attn(x).sum().backward(),
                  "ref": lambda: ref_attn(x).sum().backward()}, a.rounds)
        row(f"attention fwd+bwd {name} decoder ({x.shape[1]} tokens): SDPA vs explicit",
            f"{1000 * t['sdpa']:.1f} ms", f"{1000 * t['ref']:.1f} ms",
            f"{t['ref'] / t['sdpa']:.2f}x")
        if size == "tiny":   # train.py builds torch's default AdamW: on CPU a loop over the tensors
            versus(f"step {name}: AdamW(fused=True) vs torch's default AdamW", B, eager,
                   make_step(ours, video, mask, target, fused=False), a.rounds)
        if size == "small":  # train.py --grad-checkpointing: recompute each block in backward
            ck = student(size, img, out_dim)
            ck.set_grad_checkpointing(True)
            versus(f"step {name}: --grad-checkpointing vs without", B,
                   make_step(ck, video, mask, target), eager, a.rounds)
        if size == "tiny" and not (a.quick or a.no_compile):   # train.py --compile
            t0, compiled = time.time(), make_step(torch.compile(student(size, img, out_dim)), video,
                                                  mask, target)
            compiled()
            versus(f"step {name}: --compile vs eager (compiling took {time.time() - t0:.0f} s)", B,
                   compiled, eager, a.rounds)


# ----------------------------------------------------------------------------- memory

def saved_bytes(model, video, mask, amp=None):
    """Bytes autograd keeps for backward during one forward (each storage once, parameters excluded;
    with checkpointing, the block inputs it keeps instead). The activation memory of a step,
    measured."""
    params, seen = {p.untyped_storage().data_ptr() for p in model.parameters()}, {}

    def keep(t):
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    def keep_input(module, args):   # returns None: the block's input goes on unchanged
        keep(args[0])
    blocks = ([*model.encoder.blocks, *model.decoder.blocks] if isinstance(model, PretrainModel)
              else [])
    hooks = [b.register_forward_pre_hook(keep_input) for b in blocks]
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), \
            torch.autocast("cpu", enabled=bool(amp)):
        model(video, mask)
    for h in hooks:
        h.remove()
    return sum(seen.values())


def bench_memory(a, rate):
    """Section memory: activations per clip (batch 2 minus batch 1), ours vs reference, bf16 with
    and without checkpointing, and the batch per 80 GB GPU: (80 GB - weights, grads, AdamW state,
    CLIP teacher) / (activations + the clip and its targets)."""
    img = 64 if a.quick else 224
    for size in ("small", "base"):
        name = f"{'ViT-S' if size == 'small' else 'ViT-B'} 16x{img}"
        ours, ref = student(size, img, ref=True)
        fp32, ref_bytes = (saved_bytes(m, *batch(2, img)[:2]) - saved_bytes(m, *batch(1, img)[:2])
                           for m in (ours, ref))
        row(f"memory {name} fp32: activations per clip, ours vs reference",
            f"{fp32 / 2**20:.0f} MiB", f"{ref_bytes / 2**20:.0f} MiB", f"{ref_bytes / fp32:.2f}x")
        # fp32 w+grad+2 Adam; CLIP ViT-B/16
        static = 16 * sum(p.numel() for p in ours.parameters()) + 4 * 86e6
        for ck in (False, True):
            if torch.cuda.is_available():   # the real peak of a bf16 step on this GPU
                model, peaks, how = student(size, img).cuda(), [], "measured on this GPU"
                model.set_grad_checkpointing(ck)
                for B in (1, 2):
                    step = make_step(model, *batch(B, img, device="cuda"), amp=torch.bfloat16)
                    step()
                    torch.cuda.reset_peak_memory_stats()
                    step()
                    peaks.append(torch.cuda.max_memory_allocated())
                per = peaks[1] - peaks[0]
            else:
                # saved activations in bf16 + the fp32 clip and targets; transient
                # buffers not counted
                ours.set_grad_checkpointing(ck)
                per = (saved_bytes(ours, *batch(2, img)[:2], True)
                       - saved_bytes(ours, *batch(1, img)[:2], True))
                per, how = (per + 4 * (3 * 16 * img * img + 8 * (img // 16) ** 2 * 768),
                            "estimate from CPU")
            row(f"memory {name} bf16{' --grad-checkpointing' if ck else ''}: clips per 80 GB GPU "
                f"({how})", f"{per / 2**20:.0f} MiB/clip", "80 GB",
                f"batch {int((80e9 - static) / per)}")


# ----------------------------------------------------------------------------- teacher

def bench_teacher(a, rate):
    """Section teacher: CLIP ViT-B/16 (random weights; a small config in --quick): frames ::2
    against all, bf16 against fp32."""
    import teacher as teacher_lib
    name, img, label = "ViT-B-16", 224, "ViT-B/16"
    if a.quick:
        name, img, label = small_clip_config(), 64, "small CLIP"
    t, video = teacher_lib.Teacher(name, pretrained=None), torch.randn(1, 3, 16, img, img)
    t_bf16 = teacher_lib.Teacher(name, pretrained=None).to(torch.bfloat16)   # weights cast once

    def run(tubelet, amp):
        def f():
            # 2: the first frame of each tubelet (SMILE, 8 frames); 1: all 16 frames
            t.tubelet = tubelet
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                t(video)
        return f
    r = race({"half": run(2, False), "all": run(1, False), "autocast": run(2, True),
              "bf16": lambda: t_bf16(video.to(torch.bfloat16))}, max(1, a.rounds // 2))
    t.tubelet = 2
    row(f"teacher {label} 16x{img}: frames ::2 vs all frames (fp32)",
        f"{1 / r['half']:.2f} clips/s", f"{1 / r['all']:.2f} clips/s",
        f"{r['all'] / r['half']:.2f}x", ">= 1.8x", r["all"] / r["half"] >= 1.8)
    for key, what in (("autocast", "bf16 autocast"),
                      ("bf16", "bf16 weights (cast once, no autocast)")):
        row(f"teacher {label} 16x{img} frames ::2: {what} vs fp32 (CPU)",
            f"{1 / r[key]:.2f} clips/s", f"{1 / r['half']:.2f} clips/s",
            f"{r['half'] / r[key]:.2f}x")

# ----------------------------------------------------------------------------- demo

def bench_demo(a, model_rate):
    """Section demo: `train.py --preset tiny` end to end; clips/s from its log.jsonl, without the
    first window (start-up)."""
    out = tempfile.mkdtemp()
    steps, every = (6, 3) if a.quick else (60, 10)
    run = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--preset", "tiny",
                          "--steps", str(steps), "--log-every", str(every), "--out-dir", out],
                         capture_output=True, text=True, cwd=ROOT)
    if run.returncode:
        raise RuntimeError(f"train.py failed: {run.stderr.strip().splitlines()[-1:]}")
    with open(os.path.join(out, "log.jsonl")) as f:
        demo = float(np.median([json.loads(ln)["clips_per_s"] for ln in f
                                if "clips_per_s" in ln][1:]))
    row(f"demo train.py --preset tiny ({steps} steps) vs tiny model step alone",
        f"{demo:.1f} clips/s", f"{model_rate['tiny']:.1f} clips/s",
        f"{demo / model_rate['tiny']:.2f}x", ">= 40 clips/s", demo >= 40)


# ----------------------------------------------------------------------------- main

SECTIONS = ("step", "memory", "teacher", "gpu", "data", "decode", "demo")


def get_args(argv=None):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("check", nargs="?", choices=["data"],
                   help="data: the loader check to run on your own data before renting GPUs "
                   "(--list, --data-root, --objects; synthetic prepared videos and packed objects "
                   "without them): one worker's CPU per 16x224 clip, the step rendering the objects "
                   "against today's overlay in the worker, and the workers an H100 needs")
    p.add_argument("--list", default=None, help="data check: your video list ('<path> <label>')")
    p.add_argument("--data-root", default="", help="data check: the folder the list is relative to")
    p.add_argument("--objects", default=None,
                   help="data check: your object bank (RGBA PNG folder, or prepare objects' file)")
    p.add_argument("--object-list", default=None, help="data check: PNGs of --objects to draw from")
    p.add_argument("--clips", type=positive_int, default=None,
                   help="data check: clips per path and round (default 64, --quick 8)")
    p.add_argument("--quick", action="store_true",
                   help="small shapes and few rounds: under a minute")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    p.add_argument("--rounds", type=positive_int, default=None,
                   help="timing rounds per row (default 7, --quick 2)")
    p.add_argument("--workers", type=nonneg_int, default=os.cpu_count(),
                   help="loader processes (default: one per core)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads (default: torch's choice)")
    p.add_argument("--no-compile", action="store_true",
                   help="skip the --compile rows (compiling takes a minute)")
    p.add_argument("--gpu-check", action="store_true",
                   help="on a GPU: sections gpu and data at full size, then train.py (ViT-B, CLIP "
                   "teacher with random weights, bf16, 30 steps of 32 clips, 8 workers) eager and "
                   "--compile; ends with one markdown table for docs/performance.md")
    p.add_argument("--budget", dest="budget_s", type=positive_float, default=570,
                   help="--gpu-check: seconds for the whole check; a train.py run that would start "
                   "with less than a minute left is skipped")
    p.add_argument("--dry-run", action="store_true",
                   help="with --gpu-check: the same code on the CPU at tiny shapes (tiny model, "
                   "small CLIP, 4 train.py steps, no --compile), to check it runs and formats")
    a = p.parse_args(argv)
    if a.dry_run and not a.gpu_check:
        p.error("--dry-run goes with --gpu-check")
    a.rounds = a.rounds or (2 if a.quick else 7 if not a.check else 3)
    a.clips = a.clips or (8 if a.quick else 64)
    check_paths(("--list", a.list, "file"), ("--data-root", a.data_root, "folder"),
                ("--objects", a.objects, "folder" if a.objects and os.path.isdir(a.objects)
                 else "file"), ("--object-list", a.object_list, "file"))
    if a.gpu_check:   # full size; the sections the check needs and nothing else
        a.quick, a.only = False, "gpu" if a.dry_run else "gpu,data"
        a.no_compile = a.no_compile or a.dry_run
    unknown = set(a.only.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"--only: unknown section(s) {', '.join(sorted(unknown))} (known: "
                f"{', '.join(SECTIONS)})")
    return a


def main(argv=None):
    a = get_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    only = set(a.only.split(","))
    if not a.gpu_check and only & {"data", "demo"}:
        # data and demo are judged against the CPU step's clips/s
        only.add("step")
    print(f"smile bench{' data' if a.check else ''}{' --quick' if a.quick else ''}"
          f"{' --gpu-check' if a.gpu_check else ''}{' --dry-run' if a.dry_run else ''} | "
          f"{machine()}", flush=True)
    if a.check == "data":
        return worker_check(a)
    t0 = a.t0 = time.time()
    failed, rate = [], {}
    run = dict(step=bench_step, memory=bench_memory, teacher=bench_teacher, gpu=bench_gpu,
               data=bench_data, decode=bench_decode, demo=bench_demo)
    sections = [(name, run[name]) for name in SECTIONS if name in only]
    for name, fn in sections + ([("train.py", gpu_check)] if a.gpu_check else []):
        try:
            t = time.time()
            fn(a, rate)
            print(f"  {name}: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
        except Exception as e:   # noqa: BLE001 -- one broken section must not hide the others
            failed.append(name)
            row(f"{name}: FAILED {type(e).__name__}: {str(e)[:300]}", "-", "-", "-")
    print_table()
    if a.gpu_check and rate.get("gpu_results"):
        print("\n" + markdown_table(rate["gpu_results"]))
    print(f"{time.time() - t0:.0f} s | load average now {os.getloadavg()[0]:.2f}"
          + (f" | FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
