"""The first GPU run, checked on the CPU: each test is the CPU twin of a GPU behaviour that would
crash, hang or slow down a cluster run (docs/performance.md, "The first GPU run")."""
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import data
import evaluation

import runtime
import train
from conftest import ROOT, TINY, assert_same_weights, run, weights
from model import VideoClassifier

# ------------------------------------------------------------------ 1. preemption with loader workers


def test_loader_workers_ignore_the_preemption_signals():
    """torchrun's killpg(SIGTERM) and SLURM's signal reach the workers too: they must not die."""
    code = ("import signal, data; data.worker_init(0); "
            "print(signal.getsignal(signal.SIGTERM) == signal.SIG_IGN, "
            "signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN)")
    r = run(["-c", code])
    assert r.stdout.split() == ["True", "True"]


def test_process_group_sigterm_with_workers_saves_and_resume_is_exact(tmp_path):
    """SIGTERM to the whole process group (rank and its 2 loader workers), as torchrun and SLURM
    send it: checkpoint-latest is written, exit 0, and --resume ends bit-identical to a run never
    interrupted (8 steps over 2 passes: the persistent workers get the second pass right)."""
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    flags = [*TINY, "--workers", "2"]
    run(["train.py", *flags, "--out-dir", str(ref)])
    p = subprocess.Popen([sys.executable, "train.py", *flags, "--out-dir", str(cut)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)   # its own process group, as under torchrun
    lines = []
    for line in p.stdout:
        lines.append(line)
        if line.startswith("step 2/"):
            os.killpg(p.pid, signal.SIGTERM)
    text = "".join(lines)
    assert p.wait(timeout=120) == 0, text
    assert "preempted" in text and "Traceback" not in text, text
    assert 2 <= torch.load(cut / "checkpoint-latest.pth", weights_only=True)["step"] < 8
    run(["train.py", *flags, "--out-dir", str(cut), "--resume"])
    assert_same_weights(weights(ref), weights(cut))


# ------------------------------------------------------------------ 2-3. which device


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    return monkeypatch


def test_device_cuda_under_torchrun_is_the_local_rank(fake_cuda):
    fake_cuda.setenv("RANK", "3")
    fake_cuda.setenv("LOCAL_RANK", "1")
    assert runtime.pick_device("cuda") == torch.device("cuda", 1)
    assert runtime.pick_device(None) == torch.device("cuda", 1)
    with pytest.raises(SystemExit) as e:
        runtime.pick_device("cuda:0")      # every rank on GPU 0: refused
    assert e.value.code == 2
    fake_cuda.delenv("RANK")
    assert runtime.pick_device("cuda") == torch.device("cuda", 0)
    assert runtime.pick_device("cuda:1") == torch.device("cuda", 1)
    assert runtime.pick_device("cpu") == torch.device("cpu")


def test_teardown_barrier_names_the_gpu(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime.dist, "barrier", lambda **kw: calls.append(kw))
    monkeypatch.setattr(runtime.dist, "destroy_process_group", lambda: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    runtime.teardown(2, torch.device("cuda", 1))
    runtime.teardown(2, torch.device("cuda"))   # no index: the current device, never None
    assert calls == [{"device_ids": [1]}, {"device_ids": [2]}]


def test_no_usable_cuda_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(runtime, "nvidia_devices", lambda: "")
    with pytest.raises(SystemExit):
        runtime.pick_device("cuda")
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and torch.__version__ in err and "--device cpu" in err
    assert runtime.pick_device(None) == torch.device("cpu")   # no GPU anywhere: the CPU, quietly
    # a GPU node whose torch cannot use its GPUs: stop, instead of training ViT-B on the CPU
    monkeypatch.setattr(runtime, "nvidia_devices", lambda: "/dev/nvidia0 exists")
    with pytest.raises(SystemExit):
        runtime.pick_device(None)
    err = capsys.readouterr().err.strip()
    assert "/dev/nvidia0" in err and str(torch.version.cuda) in err and "performance.md" in err
    assert runtime.pick_device("cpu") == torch.device("cpu")  # still forced on request


def test_nvidia_devices_reads_the_environment(monkeypatch):
    monkeypatch.setattr(os.path, "exists", lambda p: False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert "CUDA_VISIBLE_DEVICES=0,1" in runtime.nvidia_devices()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert runtime.nvidia_devices() == ""
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    assert "nvidia-smi" in runtime.nvidia_devices()


@pytest.mark.parametrize("script", ["train.py", "finetune.py", "probe.py", "-m tools.extract",
                                    "-m tools.segment"])
def test_every_entry_script_refuses_a_gpu_node_it_cannot_use(script, tmp_path):
    """The same rule in every entry script: CUDA_VISIBLE_DEVICES names GPUs, torch sees none."""
    flags = {"train.py": ["--preset", "tiny"], "finetune.py": ["--preset", "tiny"],
             "probe.py": ["--preset", "tiny"], "-m tools.extract": ["--preset", "tiny", "--video-dir", "."],
             "-m tools.segment": ["--preset", "tiny"]}[script]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
    r = subprocess.run([sys.executable, *script.split(), *flags, "--out-dir", str(tmp_path / "o")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "NVIDIA GPUs (CUDA_VISIBLE_DEVICES=0)" in last and torch.__version__ in last, r.stderr


# ------------------------------------------------------------------ 4. ranks that resume apart

RANK_OUT = """import os, sys
sys.path.insert(0, {root!r})
import train
train.main(sys.argv[1:] + ["--out-dir", os.path.join({base!r}, "rank" + os.environ["RANK"])])
"""


def test_ranks_resuming_from_different_steps_stop_with_one_line(tmp_path):
    """A node-local --out-dir: rank 0 finds checkpoint-latest, rank 1 does not. Both stop at
    start-up with one line, instead of diverging and hanging at the end."""
    run(["train.py", *TINY, "--steps", "2", "--out-dir", str(tmp_path / "rank0")])
    script = tmp_path / "ranked.py"
    script.write_text(RANK_OUT.format(root=str(ROOT), base=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", str(script), *TINY, "--steps", "4", "--resume"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode != 0
    assert "the ranks start from different steps (0 to 2)" in r.stderr + r.stdout, r.stderr
    assert "step 3/" not in r.stdout   # no training step ran


# ------------------------------------------------------------------ 5. DDP, then compile


def test_compile_wraps_the_ddp_module(tmp_path):
    """torch.compile(DDP(model)), not DDP(torch.compile(model)): only the former lets the gradient
    all-reduce overlap the backward (measured on CPU: first bucket ready at 12% of the backward
    against 98%)."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0,
                                         world_size=1)
    try:
        model = torch.nn.Linear(4, 4)
        model.register_buffer("pos", torch.zeros(3))   # as model.py's position tables
        with warnings.catch_warnings():   # torch 2.14 deprecates broadcast_buffers: none on any
            warnings.simplefilter("error")   # torch a user installs
            wrapped = runtime.wrap_model(model, torch.device("cpu"), world=2, compile=True)
        assert isinstance(wrapped, torch._dynamo.eval_frame.OptimizedModule)
        assert isinstance(wrapped._orig_mod, torch.nn.parallel.DistributedDataParallel)
        assert wrapped._orig_mod.module is model
        assert not wrapped._orig_mod.will_sync_module_buffers()   # constant: no sync per forward
        assert hasattr(wrapped, "no_sync")   # gradient accumulation still reaches DDP
        assert runtime.wrap_model(model, torch.device("cpu"), world=1) is model
    finally:
        torch.distributed.destroy_process_group()


# ------------------------------------------------------------------ 6. host-device copies in a step


@pytest.fixture
def blocking_copies(monkeypatch):
    """Records every call that is a blocking host -> device copy on a GPU: torch.tensor /
    as_tensor with a device, Tensor.to / .cuda to a device without non_blocking=True."""
    seen = []

    def has_device(args, kw):
        return kw.get("device") is not None or (args and isinstance(args[0], (torch.device, str)))

    for name in ("tensor", "as_tensor"):
        real = getattr(torch, name)

        def make(real, name):
            def patched(*a, **kw):
                if kw.get("device") is not None:
                    seen.append(name)
                return real(*a, **kw)
            return patched
        monkeypatch.setattr(torch, name, make(real, name))
    real_to = torch.Tensor.to

    def to(self, *a, **kw):
        if has_device(a, kw) and not kw.get("non_blocking") and not (len(a) > 1 and a[1] is True):
            seen.append("Tensor.to")
        return real_to(self, *a, **kw)
    monkeypatch.setattr(torch.Tensor, "to", to)
    return seen


def test_a_training_step_makes_no_blocking_host_device_copy(blocking_copies, tmp_path):
    """docs/performance.md's "one sync per step" checked: runs of 2 and of 6 steps make the same
    number of blocking copies (the set-up's), so a step makes none."""
    counts = []
    for i, steps in enumerate((1, 2, 6)):   # the first run fills the per-device caches
        blocking_copies.clear()
        train.main([*TINY, "--steps", str(steps), "--out-dir", str(tmp_path / str(i))])
        counts.append(collections.Counter(blocking_copies))
    assert counts[1] == counts[2], (counts[1], counts[2])


def test_the_teacher_and_normalisation_make_no_copy_per_call(blocking_copies, tmp_path):
    import teacher as teacher_lib
    cfg = tmp_path / "clip.json"
    cfg.write_text(json.dumps({"embed_dim": 16, "text_cfg": dict(context_length=8, vocab_size=64,
                                                                 width=32, heads=2, layers=1),
                               "vision_cfg": dict(image_size=32, patch_size=16, width=32,
                                                  layers=1, head_width=16)}))
    t = teacher_lib.Teacher(str(cfg), None)
    assert t.mean != teacher_lib.IMAGENET_MEAN   # CLIP's statistics: the affine map runs
    video = torch.randint(0, 255, (1, 3, 4, 32, 32), dtype=torch.uint8)
    x = data.normalize(video)
    t(x), teacher_lib.pixel_targets(x, patch=16)   # caches filled
    blocking_copies.clear()
    t(x), teacher_lib.pixel_targets(x, patch=16), data.normalize(video)
    assert blocking_copies == []


def test_step_flags_sum_over_ranks_in_one_call():
    out = runtime.all_reduce_flags(torch.tensor([True]), [3, False, True])
    assert out == [1.0, 3.0, 0.0, 1.0]


# ------------------------------------------------------------------ 7. checkpoint-latest by time


def test_checkpoint_latest_is_written_by_time_not_every_epoch(monkeypatch, tmp_path):
    writes = []
    real = train.save_checkpoint
    monkeypatch.setattr(train, "save_checkpoint",
                        lambda state, path: (writes.append((state["step"], Path(path).name)),
                                             real(state, path)))
    train.main([*TINY, "--save-every", "0", "--out-dir", str(tmp_path / "a")])
    # 8 steps, 4 effective epochs: once, at the end (was: at every epoch)
    assert writes == [(8, "checkpoint-latest.pth")]
    writes.clear()
    train.main([*TINY, "--save-every", "0", "--ckpt-minutes", "0", "--out-dir",
                str(tmp_path / "b")])
    assert [s for s, _ in writes] == list(range(1, 9))   # every step when asked


def test_checkpoint_clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(runtime.time, "time", lambda: now[0])
    clock = runtime.CheckpointClock(30, steps=0)
    assert not clock.due(500)
    now[0] += 30 * 60
    assert clock.due(501)
    clock.done()
    assert not clock.due(502)
    assert runtime.CheckpointClock(30, steps=10).due(20)


# ------------------------------------------------------------------ 8-9. the loader's memory


@pytest.mark.parametrize("collate", ["pretrain", "eval"])
def test_collate_in_a_worker_writes_shared_memory(monkeypatch, collate):
    if collate == "pretrain":
        samples = [{"video": torch.zeros(2, 3, 4, 8, 8, dtype=torch.uint8),
                    "mask": torch.zeros(2, 8, dtype=torch.bool), "bad": []} for _ in range(3)]
        samples[0]["mask"][:, :4] = True
        samples[1]["mask"][:, :4] = True
        samples[2]["mask"][:, :4] = True
        fn = data.collate
    else:
        samples = [{"video": torch.zeros(3, 4, 8, 8, dtype=torch.uint8), "label": torch.tensor(1),
                    "index": i, "bad": []} for i in range(3)]
        fn = evaluation.eval_collate
    plain = fn(samples)
    assert not plain["video"].is_shared()         # the main process: private memory
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: SimpleNamespace(id=0))
    out = fn(samples)
    assert out["video"].is_shared() and torch.equal(out["video"], plain["video"])


def test_persistent_workers_get_each_pass():
    """One worker kept alive across passes gives each pass's clips: the pass reaches it with the
    indices (a worker's copy of the dataset would stay at pass 0)."""
    def dataset():
        return data.PretrainDataset("black", length=6, num_frames=4, img_size=32, num_sample=1,
                                    objects=None, motion="off", masking="tube", mask_ratio=0.5,
                                    patch=16, seed=3)
    ds, ref = dataset(), dataset()
    sampler = data.ResumableSampler(ds, seed=3)
    loader = data.loader(ds, sampler, 2, 1, torch.device("cpu"), data.collate)
    assert loader.persistent_workers
    iters = []
    for p in range(3):
        sampler.set_epoch(p, state=dict(pass_index=p))
        iters.append(iter(loader))
        got = torch.cat([b["mask"] for b in iters[-1]])
        ref.set_state(p)
        want = torch.stack([ref[i]["mask"][0] for i in list(sampler.inner)])
        assert torch.equal(got, want), p
    assert iters[0] is iters[2]   # the same workers, not re-forked


# ------------------------------------------------------------------ 10. one token forward


def test_inner_layer_tokens_keep_an_fp32_residual_stream():
    m = VideoClassifier(img_size=32, patch_size=16, num_frames=4, embed_dim=32, depth=3,
                        num_heads=2, num_classes=2).eval()
    v = torch.randn(1, 3, 4, 32, 32)
    x = m.patch_embed(v) + m.pos_embed
    for blk in m.blocks[:2]:
        x = blk(x)
    assert torch.allclose(m.forward_tokens(v, 2), x, atol=1e-6)
    dtypes = []
    m.blocks[1].register_forward_hook(lambda mod, i, o: dtypes.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m.forward_tokens(v, 2)
    assert dtypes == [torch.float32]


def test_segment_uses_the_models_token_forward(monkeypatch):
    from tools import segment
    assert not hasattr(segment, "encoder_tokens")
    calls = []
    m = VideoClassifier(img_size=32, patch_size=16, num_frames=4, embed_dim=32, depth=2,
                        num_heads=2, num_classes=2).eval()
    real = m.forward_tokens
    monkeypatch.setattr(m, "forward_tokens", lambda v, layer=None: calls.append(layer) or
                        real(v, layer))
    args = SimpleNamespace(layer=1, img_size=32, patch_size=16, num_frames=4, tubelet=2,
                           clusters=2, overcluster=3, pca_dim=4, iters=2, restarts=1)
    frames = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    labels = np.zeros((4, 32, 32), np.int64)
    labels[:, 16:] = 1
    try:
        segment.evaluate_video(m, frames, labels, args, torch.device("cpu"),
                               lambda: torch.autocast("cpu", enabled=False), 0)
    except (AttributeError, TypeError):   # an args field this test does not fill: the call is enough
        pass
    assert calls == [1]


# ------------------------------------------------------------------ 11. bench's GPU check


def test_gpu_check_train_rows_use_the_runs_amp(monkeypatch):
    from tools import bench_gpu
    seen = []
    monkeypatch.setattr(bench_gpu, "train_run", lambda flags, timeout: seen.append(flags) or
                        (100.0, 0.1, None))
    a = SimpleNamespace(dry_run=False, quick=False, rounds=5, budget_s=1e6, t0=time.time(),
                        no_compile=True)
    bench_gpu.gpu_check(a, {"gpu_results": {"commands": [], "rows": []}})
    flags = seen[0]
    assert flags[flags.index("--amp") + 1] == "auto"   # fp16 on a V100 / T4, bf16 on Ampere+


# ------------------------------------------------------------------ 12. the README's commands


def readme_commands(script):
    text = (ROOT / "README.md").read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = cmd.split("#")[0].strip()
            words = cmd.split()
            if script in words:
                cmds.append(words[words.index(script) + 1:])
    return cmds


def test_readme_train_commands_parse_and_the_one_gpu_example_is_the_papers_batch():
    cmds = readme_commands("train.py")
    assert len(cmds) >= 3
    for words in cmds:
        words = [w for w in words if not w.startswith("$") and w != "&"]
        train.get_args(words)          # argparse accepts every documented command
    one_gpu = [w for w in cmds if "--accum-iter" in w]
    assert one_gpu, "the README's one-GPU example"
    for words in one_gpu:
        args = train.get_args(words)
        assert args.batch_size == 256 and args.batch_size // args.accum_iter == 64
