"""Faults injected on purpose. Nothing crashes late, nothing already done is lost."""
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import torch

import runtime
import train
from conftest import (ROOT, TINY, assert_same_weights, fails_cleanly, read_log, run, weights,
                      write_video)


def test_kill_9_then_resume_is_bit_identical(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    run(["train.py", *TINY, "--out-dir", str(ref), "--steps", "7"])
    p = subprocess.Popen([sys.executable, "train.py", *TINY, "--out-dir", str(killed),
                          "--steps", "7", "--ckpt-every", "2"],
                         cwd=ROOT, stdout=subprocess.PIPE, text=True)
    for line in p.stdout:
        # kill -9 as soon as step 5 is done (latest holds step 4)
        if line.startswith("step 5/"):
            p.send_signal(signal.SIGKILL)
            break
    p.wait()
    assert p.returncode == -signal.SIGKILL
    assert torch.load(killed / "checkpoint-latest.pth", weights_only=True)["step"] == 4
    r = run(["train.py", *TINY, "--out-dir", str(killed), "--steps", "7", "--resume"])
    assert "resumed from" in r.stdout and "at step 4" in r.stdout
    assert_same_weights(weights(ref), weights(killed))


def bad_video_list(tmp_path):
    lines = []
    for i in range(4):
        write_video(tmp_path / f"good{i}.mp4", num_frames=20)
        lines.append(f"good{i}.mp4 0")
    (tmp_path / "empty.mp4").write_bytes(b"")
    full = (tmp_path / "good0.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(full[: len(full) // 2])
    write_video(tmp_path / "short.mp4", num_frames=2)          # fewer frames than a clip
    lines += ["missing.mp4 0", "empty.mp4 0", "truncated.mp4 0", "short.mp4 0"]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "train.csv"


LIST_ARGS = ["--dataset", "list", "--model", "tiny", "--img-size", "32", "--num-frames", "4",
             "--stride", "2", "--target", "pixel", "--batch-size", "8", "--workers", "0",
             "--epochs", "4", "--stage1-epochs", "2", "--warmup-epochs", "0", "--log-every", "1"]


def test_bad_videos_are_skipped_counted_and_named_once(tmp_path):
    lst = bad_video_list(tmp_path)
    r = run(["train.py", *LIST_ARGS, "--train-list", str(lst), "--max-bad-fraction", "0.9",
             "--steps", "4", "--out-dir", str(tmp_path / "run")])
    named = [line for line in r.stdout.splitlines() if "skipped bad item" in line]
    assert named and len(named) == len(set(named))            # each bad item named once
    for line in named:
        assert any(b in line
                   for b in ("missing.mp4", "empty.mp4", "truncated.mp4", "short.mp4")), line
    log = read_log(tmp_path / "run")
    assert log[-1]["step"] == 4 and log[-1]["bad"] >= len(named)


def test_too_many_bad_items_stop_with_a_list(tmp_path):
    lst = bad_video_list(tmp_path)
    r = subprocess.run([sys.executable, "train.py", *LIST_ARGS, "--train-list", str(lst),
                        "--steps", "8", "--out-dir", str(tmp_path / "run")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "unreadable" in r.stderr and "--max-bad-fraction" in r.stderr
    assert any(b in r.stderr for b in ("missing.mp4", "empty.mp4", "truncated.mp4", "short.mp4"))
    assert "Traceback" not in r.stderr


def test_unreadable_image_and_rgb_object_are_skipped(tmp_path):
    from PIL import Image
    imgs, objs = tmp_path / "images", tmp_path / "objects" / "cat"
    imgs.mkdir()
    objs.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
        Image.fromarray(np.full((20, 20, 4), 200, np.uint8)).save(objs / f"{i}.png")
    (imgs / "broken.jpg").write_bytes(b"not an image")
    Image.fromarray(np.full((20, 20, 3), 9, np.uint8)).save(objs / "rgb.png")   # no alpha channel
    r = run(["train.py", "--dataset", "images", "--image-dir", str(imgs),
             "--objects", str(tmp_path / "objects"), "--model", "tiny", "--img-size", "32",
             "--num-frames", "4", "--target", "pixel", "--batch-size", "4", "--workers", "0",
             "--epochs", "40", "--warmup-epochs", "0", "--log-every", "1", "--steps", "10",
             "--max-bad-fraction", "0.9", "--num-objects", "2", "--out-dir", str(tmp_path / "run")])
    assert "broken.jpg" in r.stdout and "rgb.png" in r.stdout and "no alpha" in r.stdout
    assert read_log(tmp_path / "run")[-1]["step"] == 10


def tiny_clip_config(tmp_path):
    import json
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                           "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2,
                        "layers": 1}}
    path = tmp_path / "tiny-clip.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("args,match", [
    (["--mask-ratio", "1.2"], "--mask-ratio"),
    (["--mask-ratio", "0.1"], "masks no token"),
    (["--num-frames", "5"], "--num-frames 5 is not divisible"),
    (["--img-size", "40"], "--img-size 40 is not divisible"),
    (["--batch-size", "7"], "--batch-size 7"),
    (["--dataset", "list", "--strategy", "single", "--train-list", "nowhere.csv"], "nowhere.csv"),
    (["--objects", "EMPTY"], "EMPTY"),
    (["--out-dir", "AFILE"], "AFILE"),
    (["--target", "clip", "--teacher", "TEACHER", "--teacher-weights", "none", "--img-size", "64"],
     "grid"),
])
def test_bad_arguments_fail_in_one_line(tmp_path, args, match):
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "AFILE").write_text("")
    teacher = tiny_clip_config(tmp_path)
    args = [str(tmp_path / a) if a in ("EMPTY", "AFILE") else str(teacher) if a == "TEACHER" else a
            for a in args]
    out = [] if "--out-dir" in args else ["--out-dir", str(tmp_path / "run")]
    fails_cleanly([*TINY, *out, *args], match)
    assert not (tmp_path / "run" / "log.jsonl").exists()       # no work was done


def test_malformed_list_names_file_and_line(tmp_path):
    (tmp_path / "train.csv").write_text("a.mp4 0\nb.mp4\n")
    fails_cleanly([*LIST_ARGS, "--train-list", str(tmp_path / "train.csv"),
                   "--out-dir", str(tmp_path / "r")], "train.csv:2")
    (tmp_path / "empty.csv").write_text("# nothing here\n")
    fails_cleanly([*LIST_ARGS, "--train-list", str(tmp_path / "empty.csv"),
                   "--out-dir", str(tmp_path / "r")], "no entries")


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import teacher
    out = tmp_path / "run"
    train.main([*TINY, "--out-dir", str(out), "--steps", "2"])
    before = (out / "checkpoint-latest.pth").read_bytes()
    monkeypatch.setattr(teacher, "pixel_targets",
                        lambda v, *a, **k: torch.full((v.shape[0], 8, 1536), float("nan")))
    with pytest.raises(SystemExit, match="3 non-finite losses in a row at step 2"):
        train.main([*TINY, "--out-dir", str(out), "--steps", "6", "--resume"])
    assert (out / "checkpoint-latest.pth").read_bytes() == before


def test_nonfinite_step_is_not_applied(tmp_path, monkeypatch):
    """One NaN batch is skipped: the weights after it equal the weights before it."""
    import teacher
    out = tmp_path / "run"
    train.main([*TINY, "--out-dir", str(out), "--steps", "1"])
    w1 = weights(out)
    monkeypatch.setattr(teacher, "pixel_targets",
                        lambda v, *a, **k: torch.full((v.shape[0], 8, 1536), float("nan")))
    with pytest.raises(SystemExit):
        train.main([*TINY, "--out-dir", str(out), "--steps", "6", "--resume",
                    "--max-nonfinite", "1"])
    assert_same_weights(w1, weights(out))


def test_crash_mid_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint-latest.pth"
    runtime.save_checkpoint({"step": 1, "w": torch.ones(3)}, str(path))

    def crashing_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half a checkp")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        runtime.save_checkpoint({"step": 2, "w": torch.zeros(3)}, str(path))
    assert runtime.load_checkpoint(str(path))["step"] == 1


def test_args_json_is_never_seen_half_written(tmp_path, monkeypatch):
    """save_args writes aside and renames: a crash mid-write, or another rank reading meanwhile
    (tools/extract.py checks every rank's flags against it), finds the whole previous file."""
    import argparse
    import json
    runtime.save_args(argparse.Namespace(model="tiny"), str(tmp_path))

    def crashing_dump(obj, f, **kw):
        f.write('{"model": "ba')
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", crashing_dump)
    with pytest.raises(KeyboardInterrupt):
        runtime.save_args(argparse.Namespace(model="base"), str(tmp_path))
    assert json.loads((tmp_path / "args.json").read_text()) == {"model": "tiny"}


def test_checkpoints_load_weights_only_and_last_k_kept(tmp_path):
    out = tmp_path / "run"
    run(["train.py", *TINY, "--out-dir", str(out), "--save-every", "1", "--keep", "2"])
    kept = sorted(p.name for p in out.glob("checkpoint-[0-9]*.pth"))
    assert kept == ["checkpoint-0003.pth", "checkpoint-0004.pth"]
    for p in out.glob("*.pth"):
        ckpt = torch.load(p, weights_only=True)
        assert {"model", "optimizer", "step", "rng", "args"} <= set(ckpt)


def find_rank_process(tag, rank):
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if f"SMILE_TEST_TAG={tag}".encode() in env and f"RANK={rank}".encode() in env \
                and b"train.py" in cmd and b"torch.distributed.run" not in cmd:
            ppid = open(f"/proc/{pid}/status").read().split("PPid:")[1].split()[0]
            if b"torch.distributed.run" in open(f"/proc/{ppid}/cmdline", "rb").read():
                # the rank, not a worker
                return int(pid)
    return None


def test_ddp_rank_death_restarts_and_resumes(tmp_path):
    """One rank is killed mid-run: torchrun tears the job down instead of hanging, restarts it
    (--max-restarts 1), and --resume continues from the latest checkpoint to the end."""
    tag, out = uuid.uuid4().hex, tmp_path / "run"
    env = {**os.environ, "SMILE_TEST_TAG": tag, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "--max-restarts=1", "train.py", *TINY,
                          "--out-dir", str(out), "--steps", "8", "--ckpt-every", "1", "--resume"],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    t0, killed, lines = time.time(), False, []
    for line in p.stdout:
        lines.append(line)
        if not killed and line.startswith("step 3/"):
            pid = find_rank_process(tag, 1)
            assert pid, "rank 1 not found"
            os.kill(pid, signal.SIGKILL)
            killed = True
    p.wait(timeout=180)
    text = "".join(lines)
    assert killed and p.returncode == 0, text
    assert "resumed from" in text and time.time() - t0 < 180
    assert torch.load(out / "checkpoint-latest.pth", weights_only=True)["step"] == 8
