"""bench.py: `python -m tools.bench --quick` and `--gpu-check --dry-run` run end to end and print their
tables (no speed assertions); the GPU rows' arithmetic (peaks, teacher FLOPs, the markdown table)
checked by hand."""
import math
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import ROOT


def run_bench(tmp_path, *flags):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "tools.bench", *flags], capture_output=True,
                         text=True, timeout=400, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # the machine line
    assert "cores" in run.stdout and "torch" in run.stdout and "threads" in run.stdout
    assert "what" in run.stdout and "baseline" in run.stdout and "met?" in run.stdout
    return run.stdout


def test_reference_student_matches_model():
    from tools import bench, benchkit
    ours, ref = bench.student("tiny", 32, out_dim=16, ref=True)   # asserts equal outputs itself
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    # at least the encoder's Linears
    assert benchkit.step_flops("small", 224) > 3 * 2 * 12 * 320 * 12 * 384 ** 2
    video, mask, target = bench.batch(2, 32, out_dim=16)
    assert mask.shape == (2, 32) and (mask.sum(1) == 24).all() and target.shape == (2, 24, 16)
    before = ours.decoder.head.weight.clone()
    bench.make_step(ours, video, mask, target)()
    assert not torch.equal(before, ours.decoder.head.weight)   # the step trains


def test_bench_quick_prints_the_table(tmp_path):
    # one thread and one round: no speed is asserted, and one thread stays quick on a busy machine
    out = run_bench(tmp_path, "--quick", "--no-compile", "--rounds", "1", "--threads", "1",
                    "--only", "step,memory,teacher,gpu,data")
    for what in ("explicit-attention reference", "achieved FLOP/s", "bf16 autocast vs fp32",
                 "teacher", "decode 16 frames", "prepare.py encode", "overlay", "loader", "memory",
                 "clips per 80 GB GPU", "bytes per 16x224 clip", "uint8 clips vs float32",
                 "data.normalize"):
        assert what in out, what
    # 16 frames of 320 x 320 luma and 2 x 161 x 161 chroma (YUV crops); float32 RGB 3 x 16 x 224 x 224 x 4
    assert "2.47 MB" in out and "9.63 MB" in out
    assert "gpu step" not in out or torch.cuda.is_available()


def test_gpu_check_dry_run_runs_the_check_on_the_cpu(tmp_path):
    out = run_bench(tmp_path, "--gpu-check", "--dry-run", "--threads", "1")
    # no peak for a CPU
    assert "whole step" in out and "vs student alone" in out and "MFU -" in out
    table = [ln for ln in out.splitlines() if ln.startswith("| ")]
    assert table[0].startswith("| GPU | run | step ms | clips/s | MFU | peak memory")
    assert [ln.split(" | ")[1] for ln in table[1:]] == [
        "tools/bench.py whole step, tiny + small CLIP 16x64 B4 bf16", "train.py, 4 steps, 0 workers"]
    assert "python train.py --dataset black --model tiny" in out and "--teacher-weights none" in out


def test_gpu_check_command_line():
    from tools import bench, bench_gpu
    a = bench.get_args(["--gpu-check"])
    assert a.only == "gpu,data" and not a.quick and not a.no_compile and not a.dry_run
    a = bench.get_args(["--gpu-check", "--dry-run", "--quick"])
    assert a.only == "gpu" and a.no_compile and not a.quick
    for bad in (["--dry-run"], ["--only", "step,gpus"]):
        with pytest.raises(SystemExit):
            bench.get_args(bad)
    cfg = bench_gpu.gpu_config(SimpleNamespace(dry_run=False, quick=False, rounds=7))
    flags = bench_gpu.train_flags(cfg, "bf16", compile=True)
    assert " ".join(flags) == ("--dataset black --model base --img-size 224 --target clip "
                               "--teacher ViT-B-16 --teacher-weights none --amp bf16 "
                               "--batch-size 32 --compile")
    import train
    args = train.get_args(flags)   # train.py accepts them
    assert args.compile and args.model == "base" and args.batch_size == 32


def test_gpu_peaks_and_teacher_flops_by_hand():
    from tools import bench_gpu, benchkit
    for name, tflops in (("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756),
                         ("NVIDIA H200", 989), ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA L40S", 362),
                         ("NVIDIA L4", 121), ("Tesla V100-SXM2-32GB", 125), ("NVIDIA A10", 125),
                         ("NVIDIA A10G", 70), ("Tesla V100-PCIE-16GB", 112), ("NVIDIA GH200 480GB", 989),
                         ("Tesla T4", 65)):
        assert bench_gpu.gpu_peak(name) == tflops * 1e12, name
    assert bench_gpu.gpu_peak("NVIDIA GeForce GTX 1080") is None
    # CLIP ViT-B/16 at 224 as open_clip builds it: 12 blocks of width 768, MLP 3072, 196
    # patches + CLS
    block = SimpleNamespace(mlp=SimpleNamespace(c_fc=torch.nn.Linear(1, 3072)))
    clip = SimpleNamespace(backend="open_clip", grid=14, patch_size=16, tubelet=2,
                           visual=SimpleNamespace(
                               transformer=SimpleNamespace(width=768, resblocks=[block] * 12)))
    per_frame = 12 * (197 * 12 * 768 ** 2 + 2 * 197 ** 2 * 768) + 196 * 3 * 16 * 16 * 768
    assert bench_gpu.teacher_flops(clip) == 2 * 8 * per_frame
    assert (280e9 < bench_gpu.teacher_flops(clip) < 282e9
            and 290e9 < benchkit.step_flops("base", 224) < 292e9)


def test_markdown_table_by_hand():
    from tools import bench_gpu
    rows = [dict(run="eager", step_s=0.05, clips=640.0, peak=30 * 2**30, wait=None, speedup=None),
            dict(run="train.py, --compile", step_s=0.04, clips=800.0, peak=None, wait=0.125,
                 speedup=1.25)]
    results = {"gpu": "NVIDIA H200", "flops": 572e9, "peak_flops": 989e12, "rows": rows,
               "commands": ["python train.py --compile"]}
    lines = bench_gpu.markdown_table(results).splitlines()
    assert lines[2] == "| NVIDIA H200 | eager | 50 | 640.0 | 37% | 30.0 GiB | - | - |"
    assert lines[3] == "| NVIDIA H200 | train.py, --compile | 40 | 800.0 | 46% | - | 12% | 1.25x |"
    assert lines[-1] == "    python train.py --compile"
    # unknown GPU
    assert "| - |" in bench_gpu.markdown_table({**results, "peak_flops": None}).splitlines()[2]


CHECK_LINE = re.compile(r"worker CPU per clip: (\d+\.\d) ms \(today's path: (\d+\.\d) ms, "
                        r"(\d+\.\d\d)x\)")


def run_check(tmp_path, *flags):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "tools.bench", "data", *flags], capture_output=True,
                         text=True, timeout=400, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    last = run.stdout.strip().splitlines()[-1]
    m = CHECK_LINE.fullmatch(last)
    assert m, last   # the line, exactly, last
    new, old, ratio = (float(x) for x in m.groups())
    assert new > 0 and abs(old / new - ratio) < 0.01 + 0.06 * ratio / new
    # the workers an H100 needs, from bench's FLOP count (572 GFLOP per ViT-B clip with its CLIP
    # teacher, issue 26) and GPU_PEAKS
    assert "572 GFLOP per clip" in run.stdout and "989 TFLOP/s" in run.stdout
    for mfu, rate in ((40, 692), (60, 1038)):
        assert f"H100 at {mfu}% MFU: {rate} clips/s -> {math.ceil(rate * new / 1000)} workers" \
            in run.stdout
    return run.stdout


def test_loader_check_on_a_users_data(tmp_path):
    """`python -m tools.bench data --list L --data-root R --objects DIR`: a user's videos and PNG
    objects, one worker per path, ending with the issue's line."""
    import motion
    from conftest import write_video
    from PIL import Image
    for i in range(2):
        write_video(tmp_path / f"v {i}.mp4", num_frames=70)
    (tmp_path / "list.csv").write_text("v 0.mp4 0\nv 1.mp4 1\n")
    (tmp_path / "objects").mkdir()
    for i, obj in enumerate(motion.synthetic_objects(3, np.random.default_rng(0), size=48)):
        Image.fromarray(obj, "RGBA").save(tmp_path / "objects" / f"{i}.png")
    out = run_check(tmp_path, "--list", str(tmp_path / "list.csv"), "--data-root", str(tmp_path),
                    "--objects", str(tmp_path / "objects"), "--clips", "4", "--rounds", "1")
    assert "list.csv (2 videos)" in out and "4 clips per path in batches of 2" in out
    # PNGs are read each time an object is drawn: the check names the command that packs them
    assert f"pack them once (python -m tools.prepare objects {tmp_path / 'objects'} OUT" in out


def test_loader_check_on_synthetic_data(tmp_path):
    """Without --list and --objects: prepared synthetic mp4s and 512 px PNG objects, packed as the
    README has a run read them."""
    out = run_check(tmp_path, "--quick", "--rounds", "1")
    assert "prepared/train.csv" in out and "8 clips per path in batches of 4" in out
    assert "objects.npy;" in out and "objects read from PNGs" not in out


def test_loader_check_names_a_missing_list():
    from conftest import fails_cleanly
    fails_cleanly(["tools.bench", "data", "--list", "no_such.csv"], "--list no_such.csv does not "
                  "exist", script="-m")


def test_finetune_loader_cost_times_the_draw_and_keeps_pil_apart(tmp_path):
    """bench's finetune row: the worker's parts now (the flip and RandAugment left to the step) and
    before (flip, PIL RandAugment and a transposing copy in the worker), the same decode in both."""
    from conftest import write_video
    from tools.bench_data import finetune_clip_cost
    write_video(tmp_path / "v.mp4", num_frames=70)
    now, before = finetune_clip_cost(str(tmp_path / "v.mp4"), clips=2)
    assert list(now) == ["decode", "crop (flip in the step)", "RandAugment draw",
                         "to tensor (a view)"]
    assert list(before) == ["decode", "crop + flip", "PIL RandAugment", "to tensor (a copy)"]
    assert now["decode"] == before["decode"] > 0 and all(v >= 0 for v in now.values())
