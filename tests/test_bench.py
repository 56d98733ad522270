"""bench.py: `python bench.py --quick` runs end to end and prints its table (no speed assertions)."""
import os
import subprocess
import sys

import torch
from conftest import ROOT



def test_reference_student_matches_model():
    import bench
    ours, ref = bench.student("tiny", 32, out_dim=16, ref=True)   # asserts equal outputs itself
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    assert bench.step_flops("small", 224) > 3 * 2 * 12 * 320 * 12 * 384 ** 2   # at least the encoder's Linears
    video, mask, target = bench.batch(2, 32, out_dim=16)
    assert mask.shape == (2, 32) and (mask.sum(1) == 24).all() and target.shape == (2, 24, 16)
    before = ours.decoder.head.weight.clone()
    bench.make_step(ours, video, mask, target)()
    assert not torch.equal(before, ours.decoder.head.weight)   # the step trains


def test_bench_quick_prints_the_table(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)}
    # one thread and one round: no speed is asserted, and one thread stays quick on a busy machine
    cmd = [sys.executable, str(ROOT / "bench.py"), "--quick", "--no-compile", "--rounds", "1", "--threads", "1",
           "--only", "step,memory,teacher,data"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    out = run.stdout
    assert run.returncode == 0, out[-3000:] + run.stderr[-3000:]
    assert "cores" in out and "torch" in out and "threads" in out              # the machine line
    assert "what" in out and "baseline" in out and "met?" in out
    for what in ("explicit-attention reference", "achieved FLOP/s", "bf16 autocast vs fp32", "teacher",
                 "decode 16 frames", "overlay", "loader", "memory", "clips per 80 GB GPU"):
        assert what in out, what
