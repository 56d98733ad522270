"""How fast is smile on this machine? One table; every row compares two things timed in
the same run.

    python bench.py               # full: ViT-S at 16x224, a ViT-B/16 teacher; a few minutes on
                                  # 2 CPU cores
    python bench.py --quick       # small shapes, under a minute (tests/test_bench.py runs it)
    python bench.py --only step,data --rounds 8 --workers 4
    python bench.py --gpu-check   # on a GPU: the gpu and data rows, then train.py eager and
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
  data     decode ms per clip before/after `python prepare.py encode` (one decoder thread, as in a
           loader worker), overlay and mask ms per clip on one core, uint8 against float32 clips,
           and loaders (decode + crop + overlay + mask) against the model's training speed: the CPU
           step's, and on a GPU the whole GPU step's (clips/s per GPU, workers per GPU)
  demo     `python train.py --preset tiny` end to end, clips/s read from its log.jsonl

Timing: the two sides of a row run alternately (A B A B ...) and each keeps its best round. Other
work on the machine only adds time, so the minimum is the steadiest estimate, and alternating
exposes both sides to the same load: trust the ratios more than the absolute numbers. With 2 threads
on 2 busy cores every parallel op waits for a descheduled thread; run it on a quiet machine (load is
printed).
docs/performance.md explains each row and holds the last numbers measured.
"""
import argparse
import gc
import json
import math
import os
import platform
import re
import shutil
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
from runtime import Parser, nonneg_int, positive_float, positive_int

# the teacher has random weights: never touch the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.dirname(os.path.abspath(__file__))
ROWS = []


# ----------------------------------------------------------------------------- timing and the table

def race(fns, rounds):
    """Run the callables alternately `rounds` times after one warm-up call each -> {name: best
    seconds}."""
    for f in fns.values():
        f()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, f in fns.items():
            t = time.perf_counter()
            f()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def row(what, ours, base, ratio, goal="-", met=None):
    """ours, base: strings with units; ratio: how many times better ours is (or a share
    of a peak)."""
    ROWS.append((what, ours, base, ratio, goal, "-" if met is None else "yes" if met else "NO"))


def print_table():
    head = ("what", "ours", "baseline", "ratio", "goal", "met?")
    widths = [max(len(r[i]) for r in ROWS + [head]) for i in range(6)]
    for r in [head, tuple("-" * w for w in widths)] + ROWS:
        print(" | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths))))


def machine():
    cpu = platform.processor() or "cpu"
    if os.path.exists("/proc/cpuinfo"):
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                    if ln.startswith("model name")), cpu)
    gpu = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"
    return (f"{cpu} | {os.cpu_count()} cores | torch {torch.__version__} | "
            f"{torch.get_num_threads()} threads | {gpu} | load average {os.getloadavg()[0]:.2f}")


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


def step_flops(size, img, out_dim=768, ratio=0.8):
    """Matmul FLOPs of one training step per clip at 16 frames, counted by hand (2 per
    multiply-add). Forward: patch embedding of the visible tubelets; per block qkv + proj + MLP
    (12 D^2 per token) and attention (q k^T and attn v: 2 N^2 D); encoder_to_decoder; decoder
    blocks over all N tokens; the head on the masked ones. Backward = 2x forward, but 1x for the
    patch embedding (pixels need no grad)."""
    c, hw = MODEL_SIZES[size], (img // 16) ** 2
    n, nm = 8 * hw, 8 * int(ratio * hw)
    D, Dd, nv = c["embed_dim"], c["decoder_embed_dim"], n - nm
    blocks = lambda n, d, depth: depth * (12 * n * d * d + 2 * n * n * d)   # noqa: E731
    macs = (blocks(nv, D, c["depth"]) + nv * D * Dd + blocks(n, Dd, c["decoder_depth"])
            + nm * Dd * out_dim)
    return 2 * (3 * macs + 2 * nv * 3 * 2 * 16 * 16 * D)


def matmul(n, dtype, device="cpu"):
    """An n x n x n torch.mm in dtype (its best time gives this machine's matmul peak)
    -> (callable, FLOPs)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype),
            torch.randn(n, n, device=device, dtype=dtype))
    return (lambda: (a @ b, torch.cuda.synchronize() if a.is_cuda else None)), 2 * n ** 3


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


# ----------------------------------------------------------------------- gpu: train.py's whole step

# Dense (no sparsity) tensor-core peaks in TFLOP/s from the vendors' data sheets, bf16 (fp16 where
# the GPU has no bf16 tensor cores: V100, T4; there --amp auto runs fp16), by a piece of
# torch.cuda.get_device_name(), matched as whole words ("A10" is not "A10G"). The first match wins:
# longer names before the names they contain.
GPU_PEAKS = [("GH200", 989), ("H200", 989), ("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989),
             ("H800", 989), ("B200", 2250), ("A100", 312), ("A800", 312), ("A30", 165),
             ("L40S", 362), ("L40", 181), ("L4", 121), ("A10G", 70), ("A10", 125),
             ("V100-PCIE", 112), ("V100", 125), ("T4", 65)]


def flop_s(x):
    """FLOP/s with a unit that suits the size: TFLOP/s on a GPU, GFLOP/s on a CPU."""
    return f"{x / 1e12:.1f} TFLOP/s" if x >= 1e12 else f"{x / 1e9:.1f} GFLOP/s"


def gpu_peak(name):
    """Dense bf16/fp16 tensor-core peak in FLOP/s of the GPU called `name`, or None for one not in
    GPU_PEAKS."""
    def words(s):
        return re.split(r"[\s_-]+", s.lower())
    have = words(name)
    for key, tf in GPU_PEAKS:
        k = words(key)
        if any(have[i:i + len(k)] == k for i in range(len(have))):
            return tf * 1e12
    return None


def teacher_flops(t):
    """Matmul FLOPs of the frozen teacher's forward per 16-frame clip (teacher.Teacher; 2 per
    multiply-add): one frame per tubelet, per frame the patch embedding and per block qkv + proj +
    MLP and attention over the grid plus the class/register tokens. CLIP ViT-B/16 at 224:
    ~281 GFLOP, about as much as the ViT-B student's forward and backward together
    (step_flops: ~291)."""
    t = getattr(t, "_orig_mod", t)   # under --compile
    v = t.visual
    if t.backend == "open_clip":
        D, blocks, prefix = v.transformer.width, v.transformer.resblocks, 1
        hidden = blocks[0].mlp.c_fc.out_features
    else:
        D, blocks, prefix, hidden = (v.embed_dim, v.blocks, v.num_prefix_tokens,
                                     v.blocks[0].mlp.fc1.out_features)
    g, n = t.grid ** 2, t.grid ** 2 + prefix
    macs = (len(blocks) * (n * (4 * D * D + 2 * D * hidden) + 2 * n * n * D)
            + g * 3 * t.patch_size ** 2 * D)
    return 2 * macs * (16 // t.tubelet)


def train_flags(cfg, amp, compile=False):
    """train.py's flags for a bench configuration (random teacher weights: nothing is
    downloaded)."""
    return ["--dataset", "black", "--model", cfg["model"], "--img-size", str(cfg["img"]),
            "--target", "clip", "--teacher", cfg["teacher"], "--teacher-weights", "none", "--amp",
            amp, "--batch-size", str(cfg["batch"])] + (["--compile"] if compile else [])


class WholeStep:
    """train.py's optimizer step, assembled from the library calls train.train_step makes (bench.py
    is an entry script and imports none: the two must be kept alike): the batch to the device
    (pinned, non-blocking), data.normalize on the device, the teacher under no_grad (cast once to
    the amp dtype, as train.build_target does), the student on index masks, MSE, backward, the
    step's one flag read (train.py's host sync) and runtime.optimizer_step (fused AdamW on a GPU).
    Called with a batch as data.collate makes it; teacher=False uses targets computed once (the
    student alone). argv: train.py's flags (train_flags). peak_base: the device memory in use before
    it was built."""

    def __init__(self, argv, device):
        import runtime
        import teacher as teacher_lib
        self.runtime, self.device = runtime, device
        self.peak_base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
        compile = "--compile" in argv
        flags = dict(zip(argv[0:-1:2], argv[1::2])) if not compile else \
            dict(zip(argv[0:-2:2], argv[1:-1:2]))
        args = self.args = argparse.Namespace(   # train.py's defaults for what the flags leave
            model=flags["--model"], img_size=int(flags["--img-size"]), num_frames=16,
            patch_size=16, tubelet=2, mask_ratio=0.8, amp=flags["--amp"], weight_decay=0.05,
            betas=(0.9, 0.95), compile=compile)
        self.autocast, self.scaler, self.dtype = runtime.amp_setup(device, args.amp)
        teacher = teacher_lib.Teacher(flags["--teacher"], None, tubelet=args.tubelet,
                                      img_size=args.img_size, patch_size=args.patch_size,
                                      dtype=self.dtype).to(device)
        out_dim = teacher.out_dim
        self.teacher = torch.compile(teacher) if compile else teacher
        model = PretrainModel(img_size=args.img_size, patch_size=args.patch_size,
                              num_frames=args.num_frames, tubelet_size=args.tubelet,
                              out_dim=out_dim, **MODEL_SIZES[args.model]).to(device)
        self.model = torch.compile(model) if compile else model
        self.opt = runtime.adamw([{"params": list(model.parameters()),
                                   "weight_decay": args.weight_decay}],
                                 args.betas, device)
        runtime.set_lr(self.opt, 1e-4)
        self.student_flops = step_flops(args.model, args.img_size, out_dim, args.mask_ratio)
        self.teacher_flops = teacher_flops(teacher)
        self.cached = None

    def batch(self, B):
        """B random uint8 clips with tube masks, as data.collate makes them (pinned on a GPU)."""
        import masking
        a, rng = self.args, np.random.default_rng(0)
        side, t = a.img_size // a.patch_size, a.num_frames // a.tubelet
        mask = torch.from_numpy(np.stack([masking.tube_mask(t, side, side, a.mask_ratio, rng)
                                          .reshape(-1) for _ in range(B)]))
        video = torch.randint(0, 256, (B, 3, a.num_frames, a.img_size, a.img_size),
                              dtype=torch.uint8)
        visible_idx, masked_idx = mask_indices(mask)
        out = {"video": video, "mask": mask, "visible_idx": visible_idx, "masked_idx": masked_idx}
        if self.device.type == "cuda":
            out = {k: v.pin_memory() for k, v in out.items()}
        return {**out, "bad": []}

    def __call__(self, batch, teacher=True):
        import data
        from model import gather_tokens
        b = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
             for k, v in batch.items()}
        video = data.normalize(b["video"])                       # uint8 -> float, on the device
        if teacher or self.cached is None:
            with torch.no_grad(), self.autocast():
                targets = self.teacher(video).float()            # (B, N, Dt)
            self.cached = targets if not teacher else self.cached
        targets = targets if teacher else self.cached
        tgt = gather_tokens(targets, b["masked_idx"])
        with self.autocast():
            pred = self.model(video, (b["visible_idx"], b["masked_idx"]))
            loss = F.mse_loss(pred.float(), tgt)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        # as train.py builds and reads its flags (the step's all-reduce; a no-op on one process)
        flags = torch.cat([(~torch.isfinite(loss.detach()[None])).float(),
                           torch.zeros(3, device=self.device)])
        self.runtime.all_reduce(flags).tolist()
        self.runtime.optimizer_step(self.opt, self.scaler)

    def peak(self, batch):
        """Peak device memory of one step (torch.cuda.max_memory_allocated), less what was
        there before."""
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self(batch)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - self.peak_base


def device_race(fns, steps, rounds, device):
    """race() for device work: per round each callable runs `steps` times back to back, timed from
    its first launch to its last kernel's end (CUDA events; perf_counter on a CPU) -> {name: best s
    per call}. Two warm-up calls each first (compilation, cuDNN autotuning, the
    allocator's pools)."""
    for f in fns.values():
        f()
        f()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, f in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
                start, end = (torch.cuda.Event(enable_timing=True),
                              torch.cuda.Event(enable_timing=True))
                start.record()
                for _ in range(steps):
                    f()
                end.record()
                end.synchronize()
                dt = start.elapsed_time(end) / 1000
            else:
                t = time.perf_counter()
                for _ in range(steps):
                    f()
                dt = time.perf_counter() - t
            best[name] = min(best[name], dt / steps)
    return best


def gpu_config(a):
    """What the gpu section runs: ViT-B at 16x224 with CLIP ViT-B/16, 32 clips per GPU (the
    paper's 256 on 8 GPUs); --quick: ViT-S, 8 clips; --dry-run: the tiny model and a small CLIP
    on the CPU."""
    if a.dry_run:
        return dict(model="tiny", img=64, batch=4, teacher=small_clip_config(),
                    label="tiny + small CLIP", device=torch.device("cpu"), amp="bf16", steps=1,
                    rounds=1, mm=512)
    cfg = dict(model="small" if a.quick else "base", img=224, batch=8 if a.quick else 32,
               teacher="ViT-B-16", device=torch.device("cuda"), amp="auto",
               steps=3 if a.quick else 10, rounds=min(a.rounds, 5), mm=8192)
    cfg["label"] = f"{'ViT-S' if a.quick else 'ViT-B'} + CLIP ViT-B/16"
    return cfg


def bench_gpu(a, rate):
    """Section gpu: train.py's whole step on the GPU (or, with --dry-run, the same code on the CPU).
    Fills rate["gpu"] (clips/s of the faster of eager and --compile), which the data section's
    loaders are judged against, and rate["gpu_results"] for --gpu-check's markdown table."""
    import runtime
    if not (torch.cuda.is_available() or a.dry_run):
        print("  gpu: no CUDA device, section skipped", file=sys.stderr)
        return
    cfg = gpu_config(a)
    device, B, cuda = cfg["device"], cfg["batch"], cfg["device"].type == "cuda"
    runtime.fast_math(device)   # as train.py: cuDNN autotuning, TF32 for the fp32 row
    gpu = torch.cuda.get_device_name() if cuda else "CPU (dry run)"
    peak_flops = gpu_peak(gpu) if cuda else None
    total_mem = torch.cuda.get_device_properties(device).total_memory if cuda else None

    # each configuration is built, warmed up and its memory measured before the next one is built
    steps, peaks = {}, {}
    eager = steps["eager"] = WholeStep(train_flags(cfg, cfg["amp"]), device)
    dt = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[eager.dtype]
    name = f"{cfg['label']} 16x{cfg['img']} B{B} {dt}"
    batch, half = eager.batch(B), eager.batch(max(B // 2, 1))
    if cuda:   # after a warm-up of each shape (cuDNN autotuning, AdamW's state)
        eager(batch), eager(half)
        peaks["eager"], peaks["half"] = eager.peak(batch), eager.peak(half)
    if cuda and not a.quick:
        steps["fp32"] = WholeStep(train_flags(cfg, "none"), device)
    if not a.no_compile:
        t0 = time.time()
        steps["compile"] = WholeStep(train_flags(cfg, cfg["amp"], compile=True), device)
        steps["compile"](batch)
        compile_s = time.time() - t0
        if cuda:
            peaks["compile"] = steps["compile"].peak(batch)
    mm, flops_mm = matmul(cfg["mm"], eager.dtype or torch.float32, device.type)
    fns = {k: (lambda s=s: s(batch)) for k, s in steps.items()}
    fns["student"], fns["mm"] = lambda: eager(batch, teacher=False), mm
    t = device_race(fns, cfg["steps"], cfg["rounds"], device)

    flops = eager.student_flops + eager.teacher_flops   # per clip
    row(f"gpu step {name}: whole step (uint8 batch -> teacher -> student -> AdamW) vs student "
        f"alone", f"{B / t['eager']:.1f} clips/s", f"{B / t['student']:.1f} clips/s",
        f"teacher {100 * (1 - t['student'] / t['eager']):.0f}%")
    got = flops * B / t["eager"]
    row(f"gpu step {name}: FLOP/s (student {eager.student_flops / 1e9:.0f} + teacher "
        f"{eager.teacher_flops / 1e9:.0f} GFLOP/clip) vs {gpu} {dt} dense peak", flop_s(got),
        flop_s(peak_flops) if peak_flops else "peak unknown",
        f"MFU {100 * got / peak_flops:.0f}%" if peak_flops else "MFU -")
    row(f"gpu step {name}: FLOP/s vs {cfg['mm']}^3 torch.mm ({dt})", flop_s(got),
        flop_s(flops_mm / t["mm"]), f"{100 * got * t['mm'] / flops_mm:.0f}%")
    if "fp32" in t:
        row(f"gpu step {name}: {dt} vs fp32 (TF32 matmuls)", f"{B / t['eager']:.1f} clips/s",
            f"{B / t['fp32']:.1f} clips/s", f"{t['fp32'] / t['eager']:.2f}x")
    if cuda:
        per = (peaks["eager"] - peaks["half"]) / (B - max(B // 2, 1))
        fits = int((0.95 * total_mem - (peaks["eager"] - B * per)) / per) if per > 0 else 0
        row(f"gpu step {name}: peak memory (max_memory_allocated) vs this GPU's",
            f"{peaks['eager'] / 2**30:.1f} GiB", f"{total_mem / 2**30:.0f} GiB",
            f"{per / 2**20:.0f} MiB/clip: batch ~{fits}")
    if "compile" in t:
        row(f"gpu step {name}: --compile (student and teacher) vs eager (compiling took "
            f"{compile_s:.0f} s)", f"{B / t['compile']:.1f} clips/s",
            f"{B / t['eager']:.1f} clips/s", f"{t['eager'] / t['compile']:.2f}x")

    rate["gpu"], rate["gpu_img"] = max(B / t[k] for k in ("eager", "compile") if k in t), cfg["img"]
    results = rate["gpu_results"] = {"gpu": gpu, "flops": flops, "peak_flops": peak_flops,
                                     "rows": [], "commands": []}
    for k in ("eager", "compile"):
        if k in t:
            results["rows"].append(dict(run=f"bench.py whole step, "
                                        f"{name}{', --compile' if k == 'compile' else ''}",
                                        step_s=t[k], clips=B / t[k], peak=peaks.get(k), wait=None,
                                        speedup=t["eager"] / t[k] if k == "compile" else None))
    # free the GPU for the sections and the train.py runs that follow
    steps.clear(), fns.clear(), peaks.clear()
    eager = batch = half = None   # noqa: F841 -- the student-alone lambda held them
    torch._dynamo.reset()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def small_clip_config():
    """A small open_clip config (ViT of width 192, 4 blocks, 64 px) written to a temporary
    JSON file."""
    path = os.path.join(tempfile.mkdtemp(), "bench_small_clip.json")
    with open(path, "w") as f:
        json.dump({"embed_dim": 64,
                   "text_cfg": dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
                   "vision_cfg": dict(image_size=64, patch_size=16, width=192, layers=4,
                                      head_width=64)}, f)
    return path


# ------------------------------------------------------------------------- gpu check: train.py runs

TRAIN_RUN = """import sys, torch, train
train.main(sys.argv[1:])
print("bench peak memory", torch.cuda.max_memory_allocated() if torch.cuda.is_available() else -1)
"""


def train_run(flags, timeout):
    """train.py in its own process (the -c wrapper reads its peak memory at the end) -> the median
    clips/s and data wait of its log windows after the first (start-up, compilation), and the
    peak memory."""
    out = tempfile.mkdtemp()
    run = subprocess.run([sys.executable, "-c", TRAIN_RUN, *flags, "--out-dir", out],
                         capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    if run.returncode:
        raise RuntimeError(f"train.py {' '.join(flags)} failed: "
                           f"{(run.stderr or run.stdout).strip()[-600:]}")
    with open(os.path.join(out, "log.jsonl")) as f:
        recs = [json.loads(ln) for ln in f if "clips_per_s" in ln]
    shutil.rmtree(out, ignore_errors=True)   # its checkpoint: a ViT-B's is over a GB
    steady = recs[1:] or recs
    peak = int(run.stdout.strip().splitlines()[-1].split()[-1])
    return (float(np.median([r["clips_per_s"] for r in steady])),
            float(np.median([r["data_wait"] for r in steady])), peak if peak >= 0 else None)


def gpu_check(a, rate):
    """--gpu-check's second half: `train.py --model base --target clip --teacher-weights none
    --amp auto --dataset black --steps 30 --batch-size 32 --workers 8`, eager and --compile
    (--dry-run: the tiny CPU variant, eager only), added to rate["gpu_results"]."""
    results = rate.get("gpu_results")
    if results is None:
        raise RuntimeError("the gpu section did not run (no CUDA device?): nothing to compare "
                           "train.py with")
    cfg = gpu_config(a)
    steps, workers, every = (4, 0, 2) if a.dry_run else (30, 8, 10)
    base = train_flags(cfg, cfg["amp"]) + ["--steps", str(steps), "--workers", str(workers),
                                       "--log-every", str(every)]
    eager_clips = None
    for compile in (False, True):
        left = a.budget_s - (time.time() - a.t0)   # the check must fit a 10-minute slot
        if (compile and a.no_compile) or left < 60:
            print(f"  train.py{' --compile' if compile else ''}: skipped ({left:.0f} s of --budget "
                  f"left)", file=sys.stderr)
            continue
        flags = base + (["--compile"] if compile else [])
        clips, wait, peak = train_run(flags, timeout=left)
        eager_clips = eager_clips or clips
        results["commands"].append("python train.py " + " ".join(flags))
        results["rows"].append(dict(run=f"train.py, {steps} steps, "
                                    f"{workers} workers{', --compile' if compile else ''}",
                                    step_s=cfg["batch"] / clips, clips=clips, peak=peak, wait=wait,
                                    speedup=clips / eager_clips if compile else None))


def markdown_table(results):
    """--gpu-check's table: one line per run, MFU against the GPU's dense peak ('-' for an
    unknown GPU)."""
    def fmt(x, f):
        return "-" if x is None else f(x)
    lines = ["| GPU | run | step ms | clips/s | MFU | peak memory | data wait | compile speedup |",
             "|---|---|---|---|---|---|---|---|"]
    peak = results["peak_flops"]
    for r in results["rows"]:
        cells = [results["gpu"], r["run"], f"{1000 * r['step_s']:.0f}", f"{r['clips']:.1f}",
                 fmt(peak, lambda p: f"{100 * r['clips'] * results['flops'] / p:.0f}%"),
                 fmt(r["peak"], lambda b: f"{b / 2**30:.1f} GiB"),
                 fmt(r["wait"], lambda w: f"{100 * w:.0f}%"),
                 fmt(r["speedup"], lambda x: f"{x:.2f}x")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"    {c}" for c in results.get("commands", [])]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- data

def write_mp4(path, num_frames, height=360, width=640, fps=25):
    """A stand-in for a downloaded video: moving colour waves plus film grain, libx264 defaults
    (long GOP)."""
    import av
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    grain = np.random.default_rng(0).normal(0, 8, (height, width, 3)).astype(np.float32)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            f = np.stack([np.sin(xx / 23 + i / 6) * np.cos(yy / 31 - i / 9),
                          np.sin((xx + yy) / 41 + i / 11),
                          np.cos(np.hypot(xx - width / 2 - 80 * np.sin(i / 10),
                                          yy - height / 2) / 19)], -1)
            f = (128 + 70 * f + np.roll(grain, 2 * i, axis=1)).clip(0, 255).astype(np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())


class FloatClips(torch.utils.data.Dataset):
    """The loader before clips stayed uint8: each worker normalises its clips to float32
    (data.normalize, now run on the device), and 4x the bytes go through shared memory, pinning and
    the copy."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        import data
        sample = self.dataset[index]
        return {**sample, "video": data.normalize(sample["video"])}


def loader_rate(dataset, workers, batches):
    """Clips/s a DataLoader delivers once running (the first batch, with worker start-up, not
    counted). workers=0: in this process on one thread, i.e. what one loader worker delivers."""
    import data
    threads = torch.get_num_threads()
    if not workers:
        torch.set_num_threads(1)   # as data.worker_init does in a worker
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=workers,
                                         collate_fn=data.collate, worker_init_fn=data.worker_init,
                                         prefetch_factor=4 if workers else None)
    it, clips = iter(loader), 0
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        clips += len(next(it)["mask"])
    rate = clips / (time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return rate


def bench_data(a, model_rate):
    """Section data: decode before/after prepare, overlay and masks on one core, loaders vs
    the model."""
    import data
    import prepare
    import masking
    import motion
    tmp = tempfile.mkdtemp()
    os.makedirs(os.path.join(tmp, "src"))
    write_mp4(os.path.join(tmp, "src", "clip.mp4"), 64 if a.quick else 150)
    with open(os.path.join(tmp, "src", "train.csv"), "w") as f:
        f.write("clip.mp4 0\n")
    short = 160 if a.quick else 320
    prepare.encode(os.path.join(tmp, "src", "train.csv"), os.path.join(tmp, "prepared"), short,
                   workers=1, quiet=True)
    src, dst = os.path.join(tmp, "src", "clip.mp4"), os.path.join(tmp, "prepared", "clip.mp4")
    # 4 clips: 16 frames at stride 4
    starts = [s * (data.video_info(src)[0] - 61) // 3 for s in range(4)]

    def decode(path):
        return lambda: [data.decode_frames(path, s + 4 * np.arange(16)) for s in starts]
    r = race({"after": decode(dst), "before": decode(src)}, a.rounds)
    row(f"decode 16 frames at stride 4, one thread: `prepare.py encode` (short side {short}) "
        f"vs 640x360 source", f"{250 * r['after']:.1f} ms/clip", f"{250 * r['before']:.1f} ms/clip",
        f"{r['before'] / r['after']:.2f}x")

    threads = torch.get_num_threads()   # one core, as in a loader worker
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    objects = motion.synthetic_objects(16, rng, size=128)
    frames, out = rng.integers(0, 256, (16, 224, 224, 3), dtype=np.uint8), {}

    def paste():
        out["footprints"] = motion.overlay(frames, objects, rng, num_objects=2)[1]

    def mask():
        masking.trajectory_mask(masking.object_tokens(out["footprints"]), 0.8, rng)
    crop = torch.from_numpy(rng.integers(0, 256, (16, 320, 320, 3),
                                         dtype=np.uint8)).permute(0, 3, 1, 2)

    def resize_float():
        # the float round trip data.resize used before (uint8 -> float -> interpolate -> uint8)
        x = F.interpolate(crop.float(), size=(224, 224), mode="bilinear", antialias=True,
                          align_corners=False)
        x.round_().clamp_(0, 255).byte()
    img = 64 if a.quick else 224   # the loader rows' larger clips
    # uint8 (3, 16, img, img), as the loader now ships it
    clip = data.to_tensor(frames[:, :img, :img])
    r = race({"overlay": paste, "mask": mask,
              "resize": lambda: data.resize(crop.permute(0, 2, 3, 1).numpy(), 224),
              "resize_float": resize_float, "normalize": lambda: data.normalize(clip)},
             4 * a.rounds)
    torch.set_num_threads(threads)
    norm = r["normalize"]
    row("overlay of 2 objects on 16x224, one core (motion.overlay)",
        f"{1000 * r['overlay']:.1f} ms/clip", "10 ms budget", f"{0.010 / r['overlay']:.2f}x",
        "<= 10 ms", r["overlay"] <= 0.010)
    row("trajectory mask of 16x224, one core (masking)", f"{1000 * r['mask']:.2f} ms/clip",
        "-", "-")
    row("crop resize 16x320x320 -> 224, one core: data.resize (uint8) vs float round trip",
        f"{1000 * r['resize']:.1f} ms/clip", f"{1000 * r['resize_float']:.1f} ms/clip",
        f"{r['resize_float'] / r['resize']:.2f}x")

    # enough batches that every worker delivers several: the rate is the steady one, not
    # the start-up's
    batches = 3 if a.quick else max(12, 4 * a.workers)

    def dataset(source, img):
        return data.PretrainDataset(
            source, items=[(dst, 0)] * 4 * (batches + 2) if source == "video" else None,
            length=4 * (batches + 2), num_frames=16, stride=4, img_size=img, num_sample=2,
            objects=objects, object_size=(64, 160) if img == 64 else (32, 128))
    # the CPU rows: loaders against the CPU step measured in this run (section step)
    for img_, size, source in ((64, "tiny", "black"), (64, "tiny", "video"),
                               (img, "small", "video")):
        if size not in model_rate:
            continue
        clips, goal = (loader_rate(dataset(source, img_), a.workers, batches),
                       2 if size == "tiny" else 1)
        what = "mp4 (prepared)" if source == "video" else "black (the tiny demo's data)"
        row(f"loader {what} 16x{img_}, {a.workers} workers vs {size} model step",
            f"{clips:.1f} clips/s", f"{model_rate[size]:.1f} clips/s",
            f"{clips / model_rate[size]:.2f}x", f">= {goal}x", clips >= goal * model_rate[size])

    # uint8 clips: what the loader ships, and what a worker no longer computes
    video = dataset("video", img)
    clip_bytes = 3 * 16 * 224 * 224 * video[0]["video"].element_size()
    row("bytes per 16x224 clip through the loader: uint8 (now) vs float32",
        f"{clip_bytes / 1e6:.2f} MB", f"{3 * 16 * 224 * 224 * 4 / 1e6:.2f} MB",
        f"{3 * 16 * 224 * 224 * 4 / clip_bytes:.2f}x")
    r = {"uint8": loader_rate(video, a.workers, batches),
         "float32": loader_rate(FloatClips(video), a.workers, batches),
         "worker": loader_rate(video, 0, 3 if a.quick else 12)}
    row(f"loader mp4 (prepared) 16x{img}, {a.workers} workers: uint8 clips vs float32 normalised "
        f"in the workers", f"{r['uint8']:.1f} clips/s", f"{r['float32']:.1f} clips/s",
        f"{r['uint8'] / r['float32']:.2f}x")
    row(f"data.normalize of a 16x{img} clip, one core (moved to the device) vs a worker's whole "
        f"clip", f"{1000 * norm:.1f} ms/clip", f"{1000 / r['worker']:.1f} ms/clip",
        f"{100 * norm * r['worker']:.0f}% of it")

    # a GPU: the loader against the whole GPU step (section gpu), per GPU and per worker
    if "gpu" in model_rate and model_rate["gpu_img"] == img:
        need, cores = model_rate["gpu"], os.cpu_count() // max(torch.cuda.device_count(), 1)
        row(f"loader mp4 (prepared) 16x{img}, {a.workers} workers vs the GPU step (clips/s one GPU "
            f"needs)", f"{r['uint8']:.1f} clips/s", f"{need:.1f} clips/s",
            f"{r['uint8'] / need:.2f}x", ">= 1x", r["uint8"] >= need)
        row(f"loader workers per GPU at 16x{img}: one worker's clips/s vs the GPU step",
            f"{r['worker']:.1f} clips/s", f"{need:.1f} clips/s",
            f"{math.ceil(need / r['worker'])} workers", f"<= {cores} cores/GPU",
            need / r["worker"] <= cores)


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

SECTIONS = ("step", "memory", "teacher", "gpu", "data", "demo")


def get_args(argv=None):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    a.rounds = a.rounds or (2 if a.quick else 7)
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
    print(f"smile bench{' --quick' if a.quick else ''}{' --gpu-check' if a.gpu_check else ''}"
          f"{' --dry-run' if a.dry_run else ''} | {machine()}", flush=True)
    t0 = a.t0 = time.time()
    failed, rate = [], {}
    sections = [(name, globals()[f"bench_{name}"]) for name in SECTIONS if name in only]
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
