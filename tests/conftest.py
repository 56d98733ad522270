"""Shared fixtures: tiny videos written with PyAV, so no test needs data from outside the
repository.

How to check that a test can fail: a test that cannot go red guards nothing. Before trusting a new
test (or when a test looks too easy), plant the bug it is meant to catch, alone, in the product code
(e.g. the loss averaged over all N tokens instead of the masked ones in runtime.train_step (PretrainModel.forward_loss), the
warm-up dropped from train.lr_schedule, SSv2's preset given `flip=True`, set_rng_state removed from
runtime.resume), run the test file, and watch the test go red with a message that names the
paper's value; then revert the plant (`git diff` must show nothing of it) and watch it go green
again. If nothing goes red, the test is missing an assertion, or checks the code against itself
(the expected value computed by the function under test) instead of against the paper's number or
definition written in the test. test_paper_numbers.py was checked this way against the seven
planted bugs of issue 30."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # never let open_clip wait on the network
# pytest.ini runs the tests on 2 processes (pytest-xdist): one thread each, and in the scripts the
# tests start, so that 2 cores are not oversubscribed (many small matmuls slow down 10x then)
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_sessionstart(session):
    """Stop at once, saying why, where the temporary folder's disk cannot hold the run: a full disk
    otherwise fails dozens of unrelated tests mid-run (a passed test's files are deleted as it ends,
    pytest.ini, but checkpoints of the tests in flight and the failed ones' stay)."""
    import shutil
    import tempfile
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < NEEDS_FREE_BYTES:
        pytest.exit(f"only {free / 2**30:.1f} GiB free under {tempfile.gettempdir()}; the tests need "
                    f"{NEEDS_FREE_BYTES / 2**30:.0f} GiB: free some space or point TMPDIR at a disk "
                    f"that has it", returncode=1)


NEEDS_FREE_BYTES = 1 << 30


def write_video(path, num_frames=40, height=48, width=64, fps=25, codec="libx264"):
    """Frame i is a uniform grey of level 5*i (so decoded frames can be identified), with a white
    square in the top-left corner that moves one pixel right per frame."""
    import av
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            f = np.full((height, width, 3), (5 * i) % 250, np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return str(path)


@pytest.fixture
def video_list(tmp_path):
    """A list file of 6 small mp4s with labels 0..2, paths relative to the list's folder."""
    lines = []
    for i in range(6):
        write_video(tmp_path / f"clip {i}.mp4", num_frames=40 + 4 * i)
        lines.append(f"clip {i}.mp4 {i % 3}")
    (tmp_path / "train.csv").write_text("# path label\n" + "\n".join(lines) + "\n")
    return tmp_path / "train.csv"


# ---------------------------------------------------------------------- helpers shared by the tests

ROOT = Path(__file__).resolve().parents[1]
# train.py at 32 px, 4 frames: 8 tokens per clip. 16 videos per pass, 4 videos (8 clips) per step
# -> 4 steps per pass, 2 steps per effective epoch, 8 steps in all.
TINY = ["--dataset", "black", "--model", "tiny", "--img-size", "32", "--num-frames", "4",
        "--target", "pixel", "--batch-size", "8", "--synthetic-length", "16", "--epochs", "4",
        "--warmup-epochs", "1", "--workers", "0", "--log-every", "1", "--object-size", "64", "160",
        "--mask-ratio", "0.5"]


def run(args, cwd=ROOT, **kw):
    """python ARGS... in the repository; it must exit 0. -> the CompletedProcess (text
    stdout/stderr)."""
    r = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                       timeout=300, **kw)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def fails_cleanly(args, match, script="train.py", **kw):
    """Exit code 2, one error line on stderr naming the problem, no traceback."""
    r = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, **kw)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and match in r.stderr, r.stderr
    # (a library may warn first, e.g. open_clip on random weights)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and match in last, r.stderr
    return r


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def weights(out_dir, name="checkpoint-latest.pth"):
    return torch.load(os.path.join(out_dir, name), weights_only=True)["model"]


def assert_same_weights(a, b, exact=True):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)
