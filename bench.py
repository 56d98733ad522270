"""How fast is smile on this machine? One table; every row compares two things timed in the same run.

    python bench.py               # full: ViT-S at 16x224, a ViT-B/16 teacher; a few minutes on 2 CPU cores
    python bench.py --quick       # small shapes, under a minute (tests/test_bench.py runs it)
    python bench.py --only step,data --rounds 8 --workers 4

Sections (rows: what | ours | baseline | ratio | goal | met?):
  step     a student pretraining step (forward + backward + AdamW) of model.py against RefStudent below,
           the VideoMAE-style code with explicit softmax(q k^T) v attention: same weights, same dtype.
           Also: achieved FLOP/s (counted by hand in step_flops) against a large torch.mm, bf16 autocast
           against fp32, fused AdamW, and train.py's --grad-checkpointing and --compile against eager
  memory   activations per clip, measured as the bytes autograd saves for backward (saved-tensor hooks;
           torch.cuda.max_memory_allocated on a GPU), and the batch per 80 GB GPU they imply
  teacher  CLIP ViT-B/16 with RANDOM weights (never downloaded): frames ::2 against all, bf16 against fp32
  data     decode ms per clip before/after `python prepare.py encode`, overlay and mask ms per clip on one
           core, and loaders (decode + crop + overlay + mask) against the model's training speed
  demo     `python train.py --preset tiny` end to end, clips/s read from its log.jsonl

Timing: the two sides of a row run alternately (A B A B ...) and each keeps its best round. Other work
on the machine only adds time, so the minimum is the steadiest estimate, and alternating exposes both
sides to the same load: trust the ratios more than the absolute numbers. With 2 threads on 2 busy
cores every parallel op waits for a descheduled thread; run it on a quiet machine (load is printed).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from model import MODEL_SIZES, PretrainModel, sinusoid_table

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # the teacher has random weights: never touch the network
ROOT = os.path.dirname(os.path.abspath(__file__))
ROWS = []


# ----------------------------------------------------------------------------- timing and the table

def race(fns, rounds):
    """Run the callables alternately `rounds` times after one warm-up call each -> {name: best seconds}."""
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
    """ours, base: strings with units; ratio: how many times better ours is (or a share of a peak)."""
    ROWS.append((what, ours, base, ratio, goal, "-" if met is None else "yes" if met else "NO"))


def print_table():
    head = ("what", "ours", "baseline", "ratio", "goal", "met?")
    widths = [max(len(r[i]) for r in ROWS + [head]) for i in range(6)]
    for r in [head, tuple("-" * w for w in widths)] + ROWS:
        print(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def machine():
    cpu = platform.processor() or "cpu"
    if os.path.exists("/proc/cpuinfo"):
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), cpu)
    gpu = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"
    return (f"{cpu} | {os.cpu_count()} cores | torch {torch.__version__} | {torch.get_num_threads()} threads | "
            f"{gpu} | load average {os.getloadavg()[0]:.2f}")


# ----------------------------------------------------------------------------- the reference student
# Written the way the VideoMAE reference code is: explicit softmax(q k^T) v attention, the tubelet conv
# over all N tokens and masking after it. Same parameter names as model.py, so model.py's state_dict
# loads with strict=True and both compute the same function (checked in student()).

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
        qkv = F.linear(x, self.qkv.weight, bias).reshape(B, N, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = ((qkv[0] * self.scale) @ qkv[1].transpose(-2, -1)).softmax(dim=-1)   # (B, nh, N, N) in memory
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
    def __init__(self, img_size, num_frames, out_dim, embed_dim, depth, num_heads, decoder_embed_dim,
                 decoder_depth, decoder_num_heads):
        super().__init__()
        n, D, Dd = num_frames // 2 * (img_size // 16) ** 2, embed_dim, decoder_embed_dim
        self.encoder, self.decoder = nn.Module(), nn.Module()
        self.encoder.patch_embed = nn.Module()
        self.encoder.patch_embed.proj = nn.Conv3d(3, D, (2, 16, 16), (2, 16, 16))
        self.encoder.blocks = nn.ModuleList(RefBlock(D, num_heads) for _ in range(depth))
        self.encoder.norm = nn.LayerNorm(D, eps=1e-6)
        self.encoder_to_decoder = nn.Linear(D, Dd, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        self.decoder.blocks = nn.ModuleList(RefBlock(Dd, decoder_num_heads) for _ in range(decoder_depth))
        self.decoder.norm, self.decoder.head = nn.LayerNorm(Dd, eps=1e-6), nn.Linear(Dd, out_dim)
        self.register_buffer("enc_pos", sinusoid_table(n, D), persistent=False)
        self.register_buffer("dec_pos", sinusoid_table(n, Dd), persistent=False)

    def forward(self, video, mask):
        x = self.encoder.patch_embed.proj(video).flatten(2).transpose(1, 2) + self.enc_pos.type_as(video)
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
    """model.py's PretrainModel (16 frames), and with ref=True a RefStudent holding the same weights."""
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
    """Random clips (B, 3, 16, img, img), tube masks (B, N) (True = masked) and targets (B, Nm, out_dim)."""
    g = torch.Generator().manual_seed(0)
    hw = (img // 16) ** 2
    mask = (torch.rand(B, hw, generator=g).argsort(1) < int(ratio * hw)).repeat(1, 8)   # same patches, 8 slices
    target = torch.randn(B, int(mask[0].sum()), out_dim, generator=g)
    return [x.to(device) for x in (torch.randn(B, 3, 16, img, img, generator=g), mask, target)]


def make_step(model, video, mask, target, amp=None, fused=True):
    """One step as train.py takes it: forward (under autocast when amp), MSE on the masked tokens,
    backward, AdamW (betas 0.9/0.95). fused=False: torch's default AdamW (a per-tensor loop on CPU)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=fused or None)

    def step():
        with torch.autocast(video.device.type, dtype=amp) if amp else nullcontext():
            pred = model(video, mask)
        F.mse_loss(pred.float(), target).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if video.is_cuda:
            torch.cuda.synchronize()
    return step


def step_flops(size, img, out_dim=768, ratio=0.8):
    """Matmul FLOPs of one training step per clip at 16 frames, counted by hand (2 per multiply-add).
    Forward: patch embedding of the visible tubelets; per block qkv + proj + MLP (12 D^2 per token) and
    attention (q k^T and attn v: 2 N^2 D); encoder_to_decoder; decoder blocks over all N tokens; the
    head on the masked ones. Backward = 2x forward, but 1x for the patch embedding (pixels need no grad)."""
    c, hw = MODEL_SIZES[size], (img // 16) ** 2
    n, nm = 8 * hw, 8 * int(ratio * hw)
    D, Dd, nv = c["embed_dim"], c["decoder_embed_dim"], n - nm
    blocks = lambda n, d, depth: depth * (12 * n * d * d + 2 * n * n * d)   # noqa: E731
    macs = blocks(nv, D, c["depth"]) + nv * D * Dd + blocks(n, Dd, c["decoder_depth"]) + nm * Dd * out_dim
    return 2 * (3 * macs + 2 * nv * 3 * 2 * 16 * 16 * D)


def matmul(n, dtype, device="cpu"):
    """An n x n x n torch.mm in dtype (its best time gives this machine's matmul peak) -> (callable, FLOPs)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return (lambda: (a @ b, torch.cuda.synchronize() if a.is_cuda else None)), 2 * n ** 3


def versus(what, B, ours, base, rounds):
    """A row racing two step callables on B clips: clips/s of each, and the speed-up of ours."""
    t = race({"ours": ours, "base": base}, rounds)
    row(what, f"{B / t['ours']:.2f} clips/s", f"{B / t['base']:.2f} clips/s", f"{t['base'] / t['ours']:.2f}x")


def bench_step(a, rate):
    """Section step. Fills rate {model size: fp32 clips/s}, which data and demo compare against."""
    n = 1024 if a.quick else 2048
    (mm32, flops_mm), (mm16, _) = matmul(n, torch.float32), matmul(n, torch.bfloat16)
    for size, img, B, out_dim in (("tiny", 64, 8 if a.quick else 32, 1536), ("small", 64 if a.quick else 224, 2, 768)):
        name = f"{'ViT-S' if size == 'small' else size} 16x{img} B{B}"
        ours, ref = student(size, img, out_dim, ref=True)
        video, mask, target = batch(B, img, out_dim)
        eager = make_step(ours, video, mask, target)
        # the matmuls race with the steps, so that the peaks see the same load
        t = race({"fp32": eager, "ref": make_step(ref, video, mask, target), "mm32": mm32, "mm16": mm16,
                  "bf16": make_step(ours, video, mask, target, amp=torch.bfloat16)}, a.rounds)
        rate[size] = B / t["fp32"]
        row(f"step {name} fp32: model.py vs explicit-attention reference", f"{B / t['fp32']:.2f} clips/s",
            f"{B / t['ref']:.2f} clips/s", f"{t['ref'] / t['fp32']:.2f}x", ">= 1.5x", t["ref"] / t["fp32"] >= 1.5)
        for key, mm in (("fp32", "mm32"), ("bf16", "mm16")):
            got, peak = step_flops(size, img, out_dim) * B / t[key], flops_mm / t[mm]
            row(f"step {name} {key}: achieved FLOP/s vs {n}^3 torch.mm", f"{got / 1e9:.0f} GFLOP/s",
                f"{peak / 1e9:.0f} GFLOP/s", f"{100 * got / peak:.0f}%",
                *((">= 70%", got / peak >= 0.7) if key == "fp32" else ()))
        row(f"step {name}: bf16 autocast vs fp32 (CPU)", f"{B / t['bf16']:.2f} clips/s",
            f"{B / t['fp32']:.2f} clips/s", f"{t['fp32'] / t['bf16']:.2f}x")
        # the attention alone, at the decoder's shape (N largest): SDPA against softmax(q k^T) v
        x = torch.randn(B, mask.shape[1], MODEL_SIZES[size]["decoder_embed_dim"], requires_grad=True)
        attn, ref_attn = ours.decoder.blocks[0].attn, ref.decoder.blocks[0].attn
        t = race({"sdpa": lambda: attn(x).sum().backward(), "ref": lambda: ref_attn(x).sum().backward()}, a.rounds)
        row(f"attention fwd+bwd {name} decoder ({x.shape[1]} tokens): SDPA vs explicit",
            f"{1000 * t['sdpa']:.1f} ms", f"{1000 * t['ref']:.1f} ms", f"{t['ref'] / t['sdpa']:.2f}x")
        if size == "tiny":   # train.py builds torch's default AdamW: on CPU a loop over the tensors
            versus(f"step {name}: AdamW(fused=True) vs torch's default AdamW", B, eager,
                   make_step(ours, video, mask, target, fused=False), a.rounds)
        if size == "small":  # train.py --grad-checkpointing: recompute each block in backward
            ck = student(size, img, out_dim)
            ck.set_grad_checkpointing(True)
            versus(f"step {name}: --grad-checkpointing vs without", B, make_step(ck, video, mask, target), eager,
                   a.rounds)
        if size == "tiny" and not (a.quick or a.no_compile):   # train.py --compile
            t0, compiled = time.time(), make_step(torch.compile(student(size, img, out_dim)), video, mask, target)
            compiled()
            versus(f"step {name}: --compile vs eager (compiling took {time.time() - t0:.0f} s)", B, compiled, eager,
                   a.rounds)
    if torch.cuda.is_available():   # the GPU path: ViT-S at 224, bf16 autocast vs fp32
        model, (video, mask, target) = student("small", 224).cuda(), batch(16, 224, device="cuda")
        mm, flops_mm = matmul(8192, torch.bfloat16, "cuda")
        t = race({"bf16": make_step(model, video, mask, target, amp=torch.bfloat16),
                  "fp32": make_step(model, video, mask, target), "mm": mm}, a.rounds)
        got, peak = step_flops("small", 224) * 16 / t["bf16"], flops_mm / t["mm"]
        row("step ViT-S 16x224 B16 GPU: bf16 autocast vs fp32", f"{16 / t['bf16']:.1f} clips/s",
            f"{16 / t['fp32']:.1f} clips/s", f"{t['fp32'] / t['bf16']:.2f}x")
        row("step ViT-S 16x224 B16 GPU bf16: achieved FLOP/s vs torch.mm", f"{got / 1e12:.0f} TFLOP/s",
            f"{peak / 1e12:.0f} TFLOP/s", f"{100 * got / peak:.0f}%")


# ----------------------------------------------------------------------------- memory

def saved_bytes(model, video, mask, amp=None):
    """Bytes autograd keeps for backward during one forward (each storage once, parameters excluded;
    with checkpointing, the block inputs it keeps instead). The activation memory of a step, measured."""
    params, seen = {p.untyped_storage().data_ptr() for p in model.parameters()}, {}

    def keep(t):
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    def keep_input(module, args):   # returns None: the block's input goes on unchanged
        keep(args[0])
    blocks = [*model.encoder.blocks, *model.decoder.blocks] if isinstance(model, PretrainModel) else []
    hooks = [b.register_forward_pre_hook(keep_input) for b in blocks]
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), torch.autocast("cpu", enabled=bool(amp)):
        model(video, mask)
    for h in hooks:
        h.remove()
    return sum(seen.values())


def bench_memory(a, rate):
    """Section memory: activations per clip (batch 2 minus batch 1), ours vs reference, bf16 with and
    without checkpointing, and the batch per 80 GB GPU: (80 GB - weights, grads, AdamW state, CLIP
    teacher) / (activations + the clip and its targets)."""
    img = 64 if a.quick else 224
    for size in ("small", "base"):
        name = f"{'ViT-S' if size == 'small' else 'ViT-B'} 16x{img}"
        ours, ref = student(size, img, ref=True)
        fp32, ref_bytes = (saved_bytes(m, *batch(2, img)[:2]) - saved_bytes(m, *batch(1, img)[:2]) for m in (ours, ref))
        row(f"memory {name} fp32: activations per clip, ours vs reference", f"{fp32 / 2**20:.0f} MiB",
            f"{ref_bytes / 2**20:.0f} MiB", f"{ref_bytes / fp32:.2f}x")
        static = 16 * sum(p.numel() for p in ours.parameters()) + 4 * 86e6   # fp32 w+grad+2 Adam; CLIP ViT-B/16
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
            else:   # saved activations in bf16 + the fp32 clip and targets; transient buffers not counted
                ours.set_grad_checkpointing(ck)
                per = saved_bytes(ours, *batch(2, img)[:2], True) - saved_bytes(ours, *batch(1, img)[:2], True)
                per, how = per + 4 * (3 * 16 * img * img + 8 * (img // 16) ** 2 * 768), "estimate from CPU"
            row(f"memory {name} bf16{' --grad-checkpointing' if ck else ''}: clips per 80 GB GPU ({how})",
                f"{per / 2**20:.0f} MiB/clip", "80 GB", f"batch {int((80e9 - static) / per)}")


# ----------------------------------------------------------------------------- teacher

def bench_teacher(a, rate):
    """Section teacher: CLIP ViT-B/16 (random weights; a small config in --quick): frames ::2 against all,
    bf16 against fp32."""
    import teacher as teacher_lib
    name, img, label = "ViT-B-16", 224, "ViT-B/16"
    if a.quick:
        name, img, label = os.path.join(tempfile.mkdtemp(), "bench_small_clip.json"), 64, "small CLIP"
        with open(name, "w") as f:
            json.dump({"embed_dim": 64, "text_cfg": dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
                       "vision_cfg": dict(image_size=64, patch_size=16, width=192, layers=4, head_width=64)}, f)
    t, video = teacher_lib.Teacher(name, pretrained=None), torch.randn(1, 3, 16, img, img)
    t_bf16 = teacher_lib.Teacher(name, pretrained=None).to(torch.bfloat16)   # weights cast once

    def run(tubelet, amp):
        def f():
            t.tubelet = tubelet   # 2: the first frame of each tubelet (SMILE, 8 frames); 1: all 16 frames
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                t(video)
        return f
    r = race({"half": run(2, False), "all": run(1, False), "autocast": run(2, True),
              "bf16": lambda: t_bf16(video.to(torch.bfloat16))}, max(1, a.rounds // 2))
    t.tubelet = 2
    row(f"teacher {label} 16x{img}: frames ::2 vs all frames (fp32)", f"{1 / r['half']:.2f} clips/s",
        f"{1 / r['all']:.2f} clips/s", f"{r['all'] / r['half']:.2f}x", ">= 1.8x", r["all"] / r["half"] >= 1.8)
    for key, what in (("autocast", "bf16 autocast"), ("bf16", "bf16 weights (cast once, no autocast)")):
        row(f"teacher {label} 16x{img} frames ::2: {what} vs fp32 (CPU)", f"{1 / r[key]:.2f} clips/s",
            f"{1 / r['half']:.2f} clips/s", f"{r['half'] / r[key]:.2f}x")


# ----------------------------------------------------------------------------- data

def write_mp4(path, num_frames, height=360, width=640, fps=25):
    """A stand-in for a downloaded video: moving colour waves plus film grain, libx264 defaults (long GOP)."""
    import av
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    grain = np.random.default_rng(0).normal(0, 8, (height, width, 3)).astype(np.float32)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            f = np.stack([np.sin(xx / 23 + i / 6) * np.cos(yy / 31 - i / 9), np.sin((xx + yy) / 41 + i / 11),
                          np.cos(np.hypot(xx - width / 2 - 80 * np.sin(i / 10), yy - height / 2) / 19)], -1)
            f = (128 + 70 * f + np.roll(grain, 2 * i, axis=1)).clip(0, 255).astype(np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())


def loader_rate(dataset, workers, batches):
    """Clips/s a DataLoader delivers once running (the first batch, with worker start-up, not counted)."""
    import data
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=data.collate,
                                         worker_init_fn=data.worker_init, prefetch_factor=4 if workers else None)
    it, clips = iter(loader), 0
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        clips += len(next(it)["mask"])
    return clips / (time.perf_counter() - t0)


def bench_data(a, model_rate):
    """Section data: decode before/after prepare, overlay and masks on one core, loaders vs the model."""
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
    prepare.encode(os.path.join(tmp, "src", "train.csv"), os.path.join(tmp, "prepared"), short, workers=1,
                   quiet=True)
    src, dst = os.path.join(tmp, "src", "clip.mp4"), os.path.join(tmp, "prepared", "clip.mp4")
    starts = [s * (data.video_info(src)[0] - 61) // 3 for s in range(4)]   # 4 clips: 16 frames at stride 4

    def decode(path):
        return lambda: [data.decode_frames(path, s + 4 * np.arange(16)) for s in starts]
    r = race({"after": decode(dst), "before": decode(src)}, a.rounds)
    row(f"decode 16 frames at stride 4: prepared (short side {short}) vs 640x360 source",
        f"{250 * r['after']:.1f} ms/clip", f"{250 * r['before']:.1f} ms/clip", f"{r['before'] / r['after']:.2f}x")

    threads = torch.get_num_threads()   # one core, as in a loader worker
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    objects = motion.synthetic_objects(16, rng, size=128)
    frames, out = rng.integers(0, 256, (16, 224, 224, 3), dtype=np.uint8), {}

    def paste():
        out["footprints"] = motion.overlay(frames, objects, rng, num_objects=2)[1]

    def mask():
        masking.trajectory_mask(masking.object_tokens(out["footprints"]), 0.8, rng)
    crop = torch.from_numpy(rng.integers(0, 256, (16, 320, 320, 3), dtype=np.uint8)).permute(0, 3, 1, 2)

    def resize_float():   # the float round trip data.resize used before (uint8 -> float -> interpolate -> uint8)
        x = F.interpolate(crop.float(), size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        x.round_().clamp_(0, 255).byte()
    r = race({"overlay": paste, "mask": mask, "resize": lambda: data.resize(crop.permute(0, 2, 3, 1).numpy(), 224),
              "resize_float": resize_float}, 4 * a.rounds)
    torch.set_num_threads(threads)
    row("overlay of 2 objects on 16x224, one core (motion.overlay)", f"{1000 * r['overlay']:.1f} ms/clip",
        "10 ms budget", f"{0.010 / r['overlay']:.2f}x", "<= 10 ms", r["overlay"] <= 0.010)
    row("trajectory mask of 16x224, one core (masking)", f"{1000 * r['mask']:.2f} ms/clip", "-", "-")
    row("crop resize 16x320x320 -> 224, one core: data.resize (uint8) vs float round trip", f"{1000 * r['resize']:.1f} ms/clip",
        f"{1000 * r['resize_float']:.1f} ms/clip", f"{r['resize_float'] / r['resize']:.2f}x")

    batches = 3 if a.quick else 12
    for img, size, source in ((64, "tiny", "black"), (64, "tiny", "video"), (64 if a.quick else 224, "small", "video")):
        ds = data.PretrainDataset(source, items=[(dst, 0)] * 4 * (batches + 2) if source == "video" else None,
                                  length=4 * (batches + 2), num_frames=16, stride=4, img_size=img, num_sample=2,
                                  objects=objects, object_size=(64, 160) if img == 64 else (32, 128))
        clips, goal = loader_rate(ds, a.workers, batches), 2 if size == "tiny" else 1
        what = "mp4 (prepared)" if source == "video" else "black (the tiny demo's data)"
        row(f"loader {what} 16x{img}, {a.workers} workers vs {size} model step", f"{clips:.1f} clips/s",
            f"{model_rate[size]:.1f} clips/s", f"{clips / model_rate[size]:.2f}x", f">= {goal}x",
            clips >= goal * model_rate[size])


# ----------------------------------------------------------------------------- demo

def bench_demo(a, model_rate):
    """Section demo: `train.py --preset tiny` end to end; clips/s from its log.jsonl, without the first
    window (start-up)."""
    out = tempfile.mkdtemp()
    steps, every = (6, 3) if a.quick else (60, 10)
    run = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--preset", "tiny", "--steps", str(steps),
                          "--log-every", str(every), "--out-dir", out], capture_output=True, text=True, cwd=ROOT)
    if run.returncode:
        raise RuntimeError(f"train.py failed: {run.stderr.strip().splitlines()[-1:]}")
    with open(os.path.join(out, "log.jsonl")) as f:
        demo = float(np.median([json.loads(ln)["clips_per_s"] for ln in f if "clips_per_s" in ln][1:]))
    row(f"demo train.py --preset tiny ({steps} steps) vs tiny model step alone", f"{demo:.1f} clips/s",
        f"{model_rate['tiny']:.1f} clips/s", f"{demo / model_rate['tiny']:.2f}x", ">= 40 clips/s", demo >= 40)


# ----------------------------------------------------------------------------- main

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes and few rounds: under a minute")
    p.add_argument("--only", default="step,memory,teacher,data,demo", help="comma-separated sections")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds per row (default 7, --quick 2)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="loader processes (default: one per core)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-compile", action="store_true", help="skip the --compile row (compiling takes a minute)")
    a = p.parse_args()
    a.rounds = a.rounds or (2 if a.quick else 7)
    if a.threads:
        torch.set_num_threads(a.threads)
    only = set(a.only.split(","))
    print(f"smile bench{' --quick' if a.quick else ''} | {machine()}", flush=True)
    t0, failed, rate = time.time(), [], {}
    for name, fn in (("step", bench_step), ("memory", bench_memory), ("teacher", bench_teacher),
                     ("data", bench_data), ("demo", bench_demo)):
        if name in only or (name == "step" and only & {"data", "demo"}):   # data and demo need the step's clips/s
            try:
                t = time.time()
                fn(a, rate)
                print(f"  {name}: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
            except Exception as e:   # noqa: BLE001 -- one broken section must not hide the others
                failed.append(name)
                row(f"{name}: FAILED {type(e).__name__}: {str(e)[:120]}", "-", "-", "-")
    print_table()
    print(f"{time.time() - t0:.0f} s | load average now {os.getloadavg()[0]:.2f}"
          + (f" | FAILED: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)
