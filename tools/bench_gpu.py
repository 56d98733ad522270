"""Section gpu of tools/bench.py (train.py's whole step on a GPU: MFU, memory, --compile) and
--gpu-check (train.py runs, one markdown table for docs/performance.md). Run through
`python -m tools.bench --gpu-check` or `--only gpu`; docs/performance.md explains each row."""
import argparse
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from model import MODEL_SIZES, PretrainModel
from tools.benchkit import ROOT, device_race, flop_s, matmul, row, small_clip_config, step_flops

# ----------------------------------------------------------------------- gpu: train.py's whole step

# Dense (no sparsity) tensor-core peaks in TFLOP/s from the vendors' data sheets, bf16 (fp16 where
# the GPU has no bf16 tensor cores: V100, T4; there --amp auto runs fp16), by a piece of
# torch.cuda.get_device_name(), matched as whole words ("A10" is not "A10G"). The first match wins:
# longer names before the names they contain.
GPU_PEAKS = [("GH200", 989), ("H200", 989), ("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989),
             ("H800", 989), ("B200", 2250), ("A100", 312), ("A800", 312), ("A30", 165),
             ("L40S", 362), ("L40", 181), ("L4", 121), ("A10G", 70), ("A10", 125),
             ("V100-PCIE", 112), ("V100", 125), ("T4", 65)]


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
    """train.py's optimizer step, made of the library calls train.py makes: the batch to the device
    (runtime.to_device: pinned, non-blocking), runtime.train_step (data.normalize on the device, the
    teacher under no_grad, cast once to the amp dtype as teacher.build_target does, the student's
    forward_loss on index masks, backward), the step's one flag read (StepGuard's all_reduce_flags,
    the host sync) and runtime.optimizer_step (fused AdamW on a GPU). Called with a batch as
    data.collate makes it; teacher=False uses targets computed once (the student alone). argv:
    train.py's flags (train_flags). peak_base: the device memory in use before it was built."""

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
        """B clips as train.py's loader makes them from a video: data.PretrainDataset (a synthetic
        video of a prepared video's sides, two built-in objects per clip, trajectory masks; the
        timed step converts and resizes the YUV crops, augment.yuv_to_rgb, and pastes the objects,
        motion.render) and data.collate (pinned on a GPU)."""
        import augment
        import data
        import motion
        from tools.bench_data import write_mp4
        a = self.args
        if not hasattr(self, "video"):   # one video for every batch, deleted with this object
            self.video = tempfile.TemporaryDirectory()
            side = augment.planes_cap(a.img_size)   # 320 at 224: a prepared video's short side
            write_mp4(os.path.join(self.video.name, "clip.mp4"), 4 * a.num_frames, side,
                      2 * round(side * 16 / 9 / 2))
        items = [(os.path.join(self.video.name, "clip.mp4"), 0)] * B
        ds = data.PretrainDataset("video", items=items, num_frames=a.num_frames,
                                  img_size=a.img_size, num_sample=1, objects=motion.synthetic_objects(
                                      8, np.random.default_rng(0)), mask_ratio=a.mask_ratio,
                                  tubelet=a.tubelet, patch=a.patch_size)
        out = data.collate([ds[i] for i in range(B)])
        if self.device.type == "cuda":
            out = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in out.items()}
        return out

    def __call__(self, batch, teacher=True):
        import data
        rt = self.runtime
        b = rt.to_device(batch, self.device)
        if not teacher and self.cached is None:
            with torch.no_grad(), self.autocast():
                self.cached = self.teacher(data.normalize(data.infuse(b))).float()   # (B, N, Dt)
        target_fn = self.teacher if teacher else (lambda video: self.cached)
        sums = rt.train_step(self.model, target_fn, [b], self.autocast, self.scaler, 1)
        # StepGuard.check's one collective and host sync (a no-op all-reduce on one process)
        rt.all_reduce_flags(~torch.isfinite(sums[:1]), [0, False, False])
        rt.optimizer_step(self.opt, self.scaler)

    def peak(self, batch):
        """Peak device memory of one step (torch.cuda.max_memory_allocated), less what was
        there before."""
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self(batch)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - self.peak_base


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
            results["rows"].append(dict(run=f"tools/bench.py whole step, "
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
