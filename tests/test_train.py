"""train.py end to end on tiny configurations: the demo learns, resume is exact, DDP matches one process,
progressive training switches stage at the right step, list datasets of mp4s train."""
import json
import os
import subprocess
import sys

import pytest
import torch

import data
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 32 px, 4 frames: 8 tokens per clip. 16 videos per pass, 4 videos (8 clips) per step -> 4 steps per pass,
# 2 steps per effective epoch, 8 steps in all.
TINY = ["--dataset", "black", "--model", "tiny", "--img-size", "32", "--num-frames", "4", "--target", "pixel",
        "--batch-size", "8", "--synthetic-length", "16", "--epochs", "4", "--warmup-epochs", "1", "--workers", "0",
        "--log-every", "1", "--object-size", "64", "160", "--mask-ratio", "0.5"]


def run(args, cwd=ROOT, **kw):
    r = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, r.stdout + r.stderr
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


def test_demo_preset_learns(tmp_path):
    """The README's first command, shortened: the loss falls and goes below the predict-zero floor."""
    out = tmp_path / "demo"
    r = run(["train.py", "--preset", "tiny", "--steps", "30", "--out-dir", str(out)])
    assert "clips/s" in r.stdout and "eta" in r.stdout
    log = read_log(out)
    assert log[-1]["step"] == 30 and log[-1]["loss"] < 0.7 * log[0]["loss"]
    assert log[-1]["loss"] < log[-1]["floor_zero"]
    assert (out / "checkpoint-latest.pth").exists() and (out / "args.json").exists()
    ckpt = torch.load(out / "checkpoint-latest.pth", weights_only=True)   # only plain types inside
    assert ckpt["step"] == 30 and ckpt["args"]["preset"] == "tiny"


def test_resume_is_exact(tmp_path):
    """2N steps in one go == N steps, stop, --resume, N more steps: identical weights."""
    a, b = tmp_path / "a", tmp_path / "b"
    run(["train.py", *TINY, "--out-dir", str(a), "--steps", "6"])
    run(["train.py", *TINY, "--out-dir", str(b), "--steps", "3"])
    run(["train.py", *TINY, "--out-dir", str(b), "--steps", "6", "--resume"])
    assert_same_weights(weights(a), weights(b))
    assert [r["loss"] for r in read_log(a)][3:] == [r["loss"] for r in read_log(b)][3:]


def test_ddp_two_ranks_match_one_process(tmp_path):
    """torchrun with 2 gloo ranks and the same global batch gives the same weights as 1 process."""
    one, two = tmp_path / "one", tmp_path / "two"
    run(["train.py", *TINY, "--out-dir", str(one), "--steps", "2"])
    run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *TINY,
         "--out-dir", str(two), "--steps", "2"], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert_same_weights(weights(one), weights(two), exact=False)
    w0 = weights(tmp_path / "one")
    assert not torch.equal(w0["decoder.head.weight"], train_initial_head())   # the step did change weights


def train_initial_head():
    torch.manual_seed(0)
    from model import MODEL_SIZES, PretrainModel
    return PretrainModel(img_size=32, num_frames=4, out_dim=1536, **MODEL_SIZES["tiny"]).state_dict()["decoder.head.weight"]


def test_list_dataset_of_mp4s_trains(tmp_path, video_list):
    out = tmp_path / "run"
    run(["train.py", "--dataset", "list", "--train-list", str(video_list), "--model", "tiny", "--img-size", "32",
         "--num-frames", "4", "--stride", "2", "--target", "pixel", "--batch-size", "4", "--workers", "1",
         "--steps", "3", "--epochs", "2", "--stage1-epochs", "1", "--warmup-epochs", "0", "--log-every", "1", "--out-dir", str(out)])
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3] and all(r["bad"] == 0 for r in log)


def test_progressive_switches_stage(tmp_path, monkeypatch):
    """Stage 1: every clip has objects and trajectory masks; from step stage1_steps on: none, tube masks."""
    seen, collate = [], data.collate

    def recording_collate(samples):
        batch = collate(samples)
        for v, m in zip(batch["video"], batch["mask"]):
            has_objects = bool(v.flatten(1).std(1).max() > 1e-4)                     # black: only objects vary
            tube = bool((m.view(2, -1) == m.view(2, -1)[0]).all())  # (t=2, h*w): every slice the same
            seen.append((has_objects, tube))
        return batch

    monkeypatch.setattr(data, "collate", recording_collate)
    train.main([*TINY, "--strategy", "progressive", "--stage1-epochs", "1", "--out-dir", str(tmp_path / "p"),
                "--steps", "4"])
    clips_per_step = 8
    stage1, stage2 = seen[: 2 * clips_per_step], seen[2 * clips_per_step:]
    assert len(stage2) == 2 * clips_per_step
    assert all(obj for obj, _ in stage1) and not all(tube for _, tube in stage1)
    assert all(not obj and tube for obj, tube in stage2)
    log = read_log(tmp_path / "p")
    assert [r["stage"] for r in log] == [1, 1, 2, 2]
    assert os.path.exists(tmp_path / "p" / "checkpoint-stage1.pth")
    # restart schedule: warm-up again from the start of stage 2
    assert log[2]["lr"] < log[1]["lr"]


def test_cosine_schedule_shape():
    s = train.cosine_schedule(1.0, 0.1, 100, 10)
    assert len(s) == 100 and s[0] == 0 and s[10] == pytest.approx(1.0) and s[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a <= b for a, b in zip(s[:10], s[1:11])) and all(a >= b for a, b in zip(s[10:], s[11:]))


def test_param_groups_exclude_norms_biases_and_mask_token():
    from model import PretrainModel
    m = PretrainModel(img_size=32, num_frames=4, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                      decoder_depth=1, decoder_num_heads=2, out_dim=8)
    decay, no_decay = train.param_groups(m, 0.05)
    names = {id(p): n for n, p in m.named_parameters()}
    assert "mask_token" in {names[id(p)] for p in no_decay["params"]}
    assert all(p.ndim > 1 for p in decay["params"]) and decay["weight_decay"] == 0.05
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))


def test_save_every_zero_keeps_only_latest(tmp_path):
    """--save-every 0 turns periodic checkpoints off (it used to divide by zero at the first epoch end)."""
    out = tmp_path / "run"
    train.main([*TINY, "--out-dir", str(out), "--steps", "4", "--save-every", "0"])
    assert (out / "checkpoint-latest.pth").exists() and not list(out.glob("checkpoint-[0-9]*.pth"))
