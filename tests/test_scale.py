"""Running at scale: gradient accumulation, preemption signals, resuming with other flags, the amp
choice per GPU generation, NCCL-only collectives on GPU (CPU twins of the GPU paths)."""
import signal
import subprocess
import sys

import pytest
import torch

import runtime
from conftest import ROOT, TINY, assert_same_weights, fails_cleanly, read_log, run, weights


def test_accumulation_matches_the_full_batch(tmp_path):
    """Batch 8 in 2 micro-steps of 4 == batch 8 in one step: same clips, same lr, same weights."""
    full, accum = tmp_path / "full", tmp_path / "accum"
    run(["train.py", *TINY, "--out-dir", str(full), "--steps", "3"])
    run(["train.py", *TINY, "--accum-iter", "2", "--out-dir", str(accum), "--steps", "3"])
    assert_same_weights(weights(full), weights(accum), exact=False)
    torch.testing.assert_close(read_log(full)[-1]["loss"], read_log(accum)[-1]["loss"], rtol=1e-5,
                               atol=1e-7)


def test_accumulation_resumes_mid_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run(["train.py", *TINY, "--accum-iter", "2", "--out-dir", str(a), "--steps", "5"])
    run(["train.py", *TINY, "--accum-iter", "2", "--out-dir", str(b), "--steps", "3"])
    run(["train.py", *TINY, "--accum-iter", "2", "--out-dir", str(b), "--steps", "5", "--resume"])
    assert_same_weights(weights(a), weights(b))


def test_finetune_accumulation_matches_the_full_batch(tmp_path):
    small = ["--preset", "tiny", "--img-size", "32", "--num-frames", "8", "--motion-train", "32",
             "--motion-val", "16", "--batch-size", "8", "--epochs", "1", "--workers", "0",
             "--steps", "2"]
    run(["finetune.py", *small, "--out-dir", str(tmp_path / "full")])
    run(["finetune.py", *small, "--accum-iter", "2", "--out-dir", str(tmp_path / "accum")])
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "accum"), exact=False)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_preemption_signal_saves_and_resume_is_exact(tmp_path, sig):
    """SLURM's warning signal mid-run: the step finishes, checkpoint-latest is written, exit 0;
    --resume then ends bit-identical to a run that was never interrupted."""
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run(["train.py", *TINY, "--out-dir", str(ref)])
    p = subprocess.Popen([sys.executable, "train.py", *TINY, "--out-dir", str(cut),
                          "--ckpt-every", "1000"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in p.stdout:
        lines.append(line)
        if line.startswith("step 2/"):
            p.send_signal(sig)
    assert p.wait(timeout=120) == 0, "".join(lines)
    text = "".join(lines)
    assert "preempted" in text and "done:" not in text, text
    saved = torch.load(cut / "checkpoint-latest.pth", weights_only=True)["step"]
    assert 2 <= saved < 8
    run(["train.py", *TINY, "--out-dir", str(cut), "--resume"])
    assert_same_weights(weights(ref), weights(cut))


def test_resume_with_another_shape_or_schedule(tmp_path):
    out = tmp_path / "run"
    run(["train.py", *TINY, "--out-dir", str(out), "--steps", "2"])
    # a shape change cannot load: one line naming the flag and both values
    fails_cleanly([*TINY, "--out-dir", str(out), "--resume", "--model", "small"],
                  "--model tiny (this run: small)")
    # a schedule change would continue another run silently: an error unless accepted, then printed
    fails_cleanly([*TINY, "--out-dir", str(out), "--resume", "--batch-size", "16"],
                  "--accept-changes")
    r = run(["train.py", *TINY, "--out-dir", str(out), "--resume", "--batch-size", "16",
             "--accept-changes", "--steps", "3"])
    assert "changed: --batch-size 8 -> 16" in r.stdout


def test_open_resume_checks_kind_shape_and_schedule_from_the_values_given(tmp_path, capsys):
    """runtime.open_resume takes the values it compares (no args): another script's checkpoint,
    another shape, another schedule (unless accepted) are one-line errors naming both values."""
    torch.save({"model": {}, "optimizer": {}, "step": 3, "rng": {}, "stage": 1,
                "args": {"strategy": "single", "model": "tiny", "lr": 1e-3}},
               tmp_path / "checkpoint-latest.pth")

    def open_(script="train.py", model="tiny", lr=1e-3, accept=False):
        return runtime.open_resume("auto", str(tmp_path), True, script, {"model": model},
                                   {"lr": lr}, accept)
    assert open_()["step"] == 3 and open_()["changes"] == []
    assert open_(lr=2e-3, accept=True)["changes"] == ["--lr 0.001 -> 0.002"]
    for kw, msg in [(dict(script="finetune.py"), "not a finetune.py checkpoint to continue"),
                    (dict(model="small"), "--model tiny (this run: small); its weights cannot"),
                    (dict(lr=2e-3), "--lr 0.001 -> 0.002 (pass --accept-changes")]:
        with pytest.raises(SystemExit) as e:
            open_(**kw)
        assert e.value.code == 2 and msg in capsys.readouterr().err, kw


@pytest.mark.parametrize("capability,amp,dtype",
                         [((7, 0), "auto", torch.float16), ((8, 0), "auto", torch.bfloat16),
                          ((9, 0), "auto", torch.bfloat16), ((7, 5), "bf16", torch.bfloat16),
                          ((8, 0), "none", None)])
def test_amp_choice_by_compute_capability(monkeypatch, capability, amp, dtype):
    """V100 / T4 (7.x) report bf16 "supported" but emulate it: auto picks fp16 + loss
    scaling there."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert runtime.amp_dtype(torch.device("cuda", 0), amp) == dtype
    assert runtime.amp_dtype(torch.device("cpu"), "auto") is None


@pytest.mark.parametrize("cores,workers,env,want",
                         [(2, 1, None, 1), (16, 8, None, 8), (2, 8, None, 1), (2, 0, None, 2),
                          (2, 1, "2", 2)])
def test_cpu_threads_leave_the_loader_its_cores(monkeypatch, cores, workers, env, want):
    """On CPU the step's threads are the cores the loader's workers leave (never more than torch's
    default, never 0); OMP_NUM_THREADS, when set, wins."""
    calls = []
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(cores)),
                        raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: cores)
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    runtime.fast_math(torch.device("cpu"), workers)
    assert (calls[-1] if calls else cores) == want


def test_gpu_process_group_is_nccl_only(monkeypatch):
    """The CPU twin of the GPU path: under torchrun with CUDA, setup_dist asks for plain NCCL bound
    to the rank's device (every collective is a small CUDA tensor: no gloo, which multi-node
    clusters break)."""
    seen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: None)
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, **kw: seen.update(backend=backend, **kw))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    for k, v in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    rank, world, device = runtime.setup_dist()
    assert (rank, world, str(device)) == (1, 2, "cuda:1")
    assert (seen["backend"] == "nccl" and str(seen["device_id"]) == "cuda:1"
            and seen["world_size"] == 2)


def test_log_without_tensorboard_still_writes_jsonl(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # as if not installed
    log = runtime.Log(str(tmp_path), True, tensorboard=True)
    log({"step": 1, "loss": 0.5}, "step 1")
    assert "tensorboard is not installed" in capsys.readouterr().out
    assert read_log(tmp_path) == [{"step": 1, "loss": 0.5}]
