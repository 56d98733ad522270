"""Bad input to every entry script and tool (issue 29): each bad invocation below stops before any
work with exit code 2 (argparse's, runtime.fail's) or 1, no traceback, at most 3 lines on stderr
naming the offending flag or file, and nothing written into an existing --out-dir.

The table runs in-process (main(argv), SystemExit caught): a few seconds for all of it. A handful of
rows run again as real processes, all at once, for the exit code and stderr a shell sees."""
import importlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import train
from conftest import ROOT, TINY, write_video

RUN = [*TINY, "--strategy", "none"]     # a real run, without building the synthetic objects

# {name}: a path from the `files` fixture; OUT: an existing --out-dir holding one file
TRAIN = ["--preset", "tiny", "--workers", "0", "--out-dir", "{OUT}"]
EVAL = ["--preset", "tiny", "--workers", "0", "--out-dir", "{OUT}"]
SEGMENT = ["--preset", "tiny", "--num-videos", "1", "--out-dir", "{OUT}"]
assert len(TRAIN) == len(EVAL) == len(SEGMENT) == 6
CASES = [
    # script, argv, what stderr must name
    # -- train.py: numbers (the first two rows), pairs, paths, checkpoints, data
    ("train", [*TRAIN, "--epochs", "-3"], "--epochs"),
    ("train", [*TRAIN, "--epochs", "0"], "--epochs"),
    ("train", [*TRAIN, "--batch-size", "0"], "--batch-size"),
    ("train", [*TRAIN, "--lr", "nan"], "--lr"),
    ("train", [*TRAIN, "--mask-ratio", "inf"], "--mask-ratio"),
    ("train", [*TRAIN, "--max-bad-fraction", "1.5"], "--max-bad-fraction"),
    ("train", [*TRAIN, "--betas", "0.9", "1"], "--betas"),
    ("train", [*TRAIN, "--num-frames", "eight"], "--num-frames"),
    ("train", [*TRAIN, "--scale-range", "1.5", "0.5"], "--scale-range"),
    ("train", [*TRAIN, "--object-size", "160", "64"], "--object-size"),
    ("train", [*TRAIN, "--objects", "{rgb_objects}"], "{rgb_objects}"),          # no alpha
    ("train", [*TRAIN, "--objects", "{notes}"], "{notes} is not a whole packed object bank"),
    ("train", [*TRAIN, "--dataset", "list", "--train-list", "{list3}"],
     "lower --batch-size to <= 6 or add videos"),
    ("train", [*TRAIN, "--dataset", "list", "--train-list", "{folder}"],
     "--train-list {folder} is a folder"),
    ("train", [*TRAIN, "--synthetic-length", "4", "--batch-size", "8", "--epochs", "1",
               "--strategy", "none"], "raise --epochs to 2"),
    ("train", [*TRAIN, "--out-dir", "{notes}"], "--out-dir {notes} is a file"),
    ("train", [*TRAIN, "--target", "clip", "--teacher-weights", "{missing}.pt"],
     "--teacher-weights {missing}.pt does not exist"),
    ("train", [*TRAIN, "--out-dir", "{damaged}", "--resume"], "checkpoint-latest.pth"),
    ("train", [*TRAIN, "--resume", "{notes}"], "--resume {notes} is not a torch checkpoint"),
    ("train", [*TRAIN, "--resume", "{truncated}"], "{truncated} is truncated"),
    ("train", [*TRAIN, "--resume", "{finetuned}"], "finetune.py --eval-only --checkpoint"),
    ("train", [*RUN, "--out-dir", "{OUT}", "--resume", "{reshaped}"],    # its own flags, not weights
     "size mismatch for encoder.blocks.3.mlp.fc2.bias"),
    # -- finetune.py
    ("finetune", [*EVAL, "--checkpoint", "{notes}"], "--checkpoint {notes}"),   # the row
    ("finetune", [*EVAL, "--checkpoint", "{empty}"], "{empty} is empty"),
    ("finetune", [*EVAL, "--checkpoint", "{truncated}"], "{truncated} is truncated"),
    ("finetune", [*EVAL, "--checkpoint", "{probe_head}"], "no encoder"),
    ("finetune", [*EVAL, "--checkpoint", "{wide}"], "a ViT of width 100 and depth 1"),
    ("finetune", [*EVAL, "--checkpoint", "{pretrained}", "--eval-only"], "drop --eval-only"),
    ("finetune", [*EVAL, "--resume", "{pretrained}"], "pass --checkpoint {pretrained}"),
    ("finetune", [*EVAL, "--warmup-epochs", "-1"], "--warmup-epochs"),
    ("finetune", [*EVAL, "--label-smoothing", "2"], "--label-smoothing"),
    ("finetune", [*EVAL, "--crop-scale", "0.9", "0.1"], "--crop-scale"),
    ("finetune", [*EVAL, "--randaug-m", "11"], "--randaug-m"),
    ("finetune", [*EVAL, "--results-file", "{folder}"], "--results-file {folder} is a folder"),
    ("finetune", [*EVAL, "--dataset", "list", "--num-classes", "3", "--data-root", "{notes}"],
     "--data-root {notes} is a file"),
    ("finetune", ["--severe-table", "{missing}"], "--severe-table {missing} does not exist"),
    # -- probe.py
    ("probe", [*EVAL, "--checkpoint", "{pretrained}", "--model", "small"], "--model tiny"),
    ("probe", [*EVAL, "--checkpoint", "{folder}"], "--checkpoint {folder} is a folder"),
    ("probe", [*EVAL, "--checkpoint", "{reshaped}"], "size mismatch for blocks.3.mlp.fc2.bias"),
    ("probe", [*EVAL, "--eval-every", "0"], "--eval-every"),
    ("probe", [*EVAL, "--betas", "0.9", "nan"], "--betas"),
    ("probe", [*EVAL, "--attn-depth", "0"], "--attn-depth"),
    # -- extract.py
    ("extract", [*EVAL, "--list", "{list3}", "--snippet-stride", "0"], "--snippet-stride"),
    ("extract", [*EVAL, "--list", "{folder}"], "--list {folder} is a folder"),
    ("extract", [*EVAL, "--video-dir", "{notes}"], "--video-dir {notes} is a file"),
    ("extract", [*EVAL, "--list", "{list3}", "--checkpoint", "{pretrained}", "--tubelet", "4"],
     "--tubelet 2"),
    ("extract", [*EVAL, "--list", "{list3}", "--checkpoint", "{notes}"], "--checkpoint {notes}"),
    # -- segment.py
    ("segment", [*SEGMENT, "--kmeans-iters", "0"], "--kmeans-iters"),
    ("segment", [*SEGMENT, "--object-size", "9", "3"], "--object-size"),
    ("segment", [*SEGMENT, "--checkpoint", "{notes}"], "--checkpoint {notes}"),
    ("segment", [*SEGMENT, "--checkpoint", "{pretrained}", "--model", "base"], "--model tiny"),
    ("segment", [*SEGMENT, "--dataset", "davis", "--data-root", "{notes}"], "--data-root {notes}"),
    # -- prepare.py
    ("prepare", ["check", "{folder}"], "{folder} is a folder"),
    ("prepare", ["check", "{list3}", "--num-frames", "0"], "--num-frames"),
    ("prepare", ["subset", "{list3}", "inf", "{OUT}/sub.csv"], "N='inf'"),
    ("prepare", ["subset", "{list3}", "2", "{folder}"], "OUT_LIST {folder} is a folder"),
    ("prepare", ["encode", "{list3}", "{notes}"], "OUT_DIR {notes} is a file"),
    ("prepare", ["encode", "{list3}", "{OUT}", "--short-side", "-5"], "--short-side"),
    # -- bench.py
    ("bench", ["--rounds", "0"], "--rounds"),
    ("bench", ["--budget", "inf"], "--budget"),
    ("bench", ["--workers", "-1"], "--workers"),
]


# the tools run as python -m tools.<name>
MODULE = {name: f"tools.{name}" for name in ("extract", "segment", "prepare", "bench")}
# where each script's work starts: reached, a row fails at once instead of running (a check lost)
WORK = {"train": ["save_args"], "finetune": ["save_args"], "probe": ["save_args"],
        "extract": ["save_args"], "segment": ["evaluate_video"],
        "prepare": ["encode", "check", "write_lines"], "bench": ["machine"]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every kind of bad file the table names, and a real pretraining run (2 steps of RUN,
    periodic checkpoint-0001.pth kept) whose checkpoint the good-checkpoint rows use."""
    root = tmp_path_factory.mktemp("bad")
    f = {"folder": root / "folder", "notes": root / "notes.txt", "missing": root / "missing.jsonl",
         "empty": root / "empty.pth", "rgb_objects": root / "rgb", "list3": root / "three.csv",
         "run": root / "run", "damaged": root / "damaged"}
    f["folder"].mkdir()
    f["notes"].write_text("notes from the meeting\n")
    f["empty"].write_bytes(b"")
    f["rgb_objects"].mkdir()
    for i in range(2):              # PNGs without an alpha channel: no usable object
        Image.fromarray(np.full((20, 20, 3), 50 * i, np.uint8)).save(f["rgb_objects"] / f"{i}.png")
    for i in range(3):
        write_video(root / f"v{i}.mp4", num_frames=12)
    f["list3"].write_text("".join(f"v{i}.mp4 {i}\n" for i in range(3)))
    train.main([*RUN, "--out-dir", str(f["run"]), "--steps", "2", "--save-every", "1"])
    f["pretrained"] = f["run"] / "checkpoint-latest.pth"
    blob = f["pretrained"].read_bytes()
    f["truncated"] = root / "truncated.pth"
    f["truncated"].write_bytes(blob[:len(blob) // 3])
    f["damaged"].mkdir()            # an out dir whose latest is cut short, no periodic one
    (f["damaged"] / "checkpoint-latest.pth").write_bytes(blob[:len(blob) // 3])
    f["probe_head"], f["finetuned"] = root / "probe-head.pth", root / "finetuned.pth"
    torch.save({"head": {"weight": torch.zeros(8, 192)}, "head_type": "linear",
                "args": {"model": "tiny", "attn_depth": 1}}, f["probe_head"])
    torch.save({"model": {"head.weight": torch.zeros(8, 192)}, "optimizer": {}, "step": 1,
                "rng": {}, "count_stats": [0.0, 1.0],
                "args": {"model": "tiny", "layer_decay": 0.75, "num_classes": 8}}, f["finetuned"])
    pre = torch.load(f["pretrained"], weights_only=True)
    pre["model"]["encoder.blocks.3.mlp.fc2.bias"] = torch.zeros(7)    # weights of another shape
    f["reshaped"], f["wide"] = root / "reshaped.pth", root / "wide.pth"
    torch.save(pre, f["reshaped"])
    torch.save({"model": {"encoder.patch_embed.proj.weight": torch.zeros(100, 3, 2, 16, 16),
                          "encoder.blocks.0.norm1.weight": torch.zeros(100)}}, f["wide"])
    return {k: str(v) for k, v in f.items()}


def work_started(*args, **kwargs):
    raise AssertionError("the bad invocation got past the checks: its work started")


def fill(words, files, out):
    return [w.format(OUT=out, **files) for w in words]


def snapshot(path):
    """Every file under path with its size and modification time (a file: itself)."""
    p = os.fspath(path)
    if not os.path.isdir(p):
        return os.stat(p).st_mtime_ns if os.path.exists(p) else None
    return {os.path.relpath(os.path.join(d, n), p): os.stat(os.path.join(d, n)).st_mtime_ns
            for d, _, names in os.walk(p) for n in names}


def case_id(case):
    """script:the words after the shared prefix (TRAIN, EVAL and SEGMENT are 6 words)."""
    script, argv, _ = case
    if argv[:len(RUN)] == RUN:
        return f"{script}:RUN {' '.join(argv[len(RUN):])}"
    return f"{script}:{' '.join(argv[6:] if argv[:1] == ['--preset'] else argv)}"


@pytest.mark.parametrize("script,argv,names", CASES, ids=[case_id(c) for c in CASES])
def test_bad_invocation_stops_in_one_line(files, tmp_path, capsys, monkeypatch, script, argv,
                                         names):
    module = importlib.import_module(MODULE.get(script, script))
    for name in WORK[script]:
        monkeypatch.setattr(module, name, work_started)
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier-run.txt").write_text("kept as it is\n")
    argv, names = fill(argv, files, out), names.format(OUT=out, **files)
    watched = {p: snapshot(p) for p in {str(out), files["damaged"], files["notes"]}}
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        code = module.main(argv)
        raise SystemExit(code)      # prepare.py and bench.py return their exit code
    err = capsys.readouterr().err
    code = e.value.code
    if isinstance(code, str):       # SystemExit("error: ..."): Python prints it, exit code 1
        err, code = err + code, 1
    lines = err.strip().splitlines()
    assert code in (1, 2), (code, err)
    assert "Traceback" not in err and 1 <= len(lines) <= 3, err
    assert names in err, f"stderr does not name {names!r}:\n{err}"
    assert {p: snapshot(p) for p in watched} == watched, "something was written"


def test_real_processes_exit_2_with_one_line(files, tmp_path):
    """Two rows as a shell runs them (an argparse type; a subcommand whose main returns its exit
    code), at once."""
    rows = [next(c for c in CASES if c[2] == names) for names in ("--epochs", "N='inf'")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", MODULE.get(script, script),
                               *fill(argv, files, tmp_path)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for script, argv, _ in rows]
    for (script, _, names), p in zip(rows, procs):
        _, err = p.communicate(timeout=120)
        assert p.returncode == 2 and "Traceback" not in err, (script, err)
        assert len(err.strip().splitlines()) == 1 and names.format(**files) in err, err


def test_damaged_latest_resumes_from_the_newest_periodic(files, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(files["run"], run)
    latest = run / "checkpoint-latest.pth"
    latest.write_bytes(latest.read_bytes()[:1000])
    capsys.readouterr()
    train.main([*RUN, "--out-dir", str(run), "--steps", "3", "--save-every", "1", "--resume"])
    out = capsys.readouterr().out
    assert f"{latest} is truncated or damaged" in out
    assert f"resuming from {run / 'checkpoint-0001.pth'}" in out and "at step 2" in out
    assert torch.load(latest, weights_only=True)["step"] == 3


def test_a_run_with_nothing_to_do_claims_no_checkpoint(files, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(files["run"], run)
    capsys.readouterr()
    train.main([*RUN, "--out-dir", str(run), "--steps", "2", "--resume"])
    done = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("done:")]
    assert len(done) == 1 and "no checkpoint written" in done[0], done
    assert "checkpoint-latest.pth is at step 2" in done[0]


def test_a_checkpoints_shape_wins_over_a_presets(files, tmp_path):
    """probe/finetune/extract --preset tiny (patch 8) with a patch-16 checkpoint: the checkpoint's
    shape, from its args or, without args (a released checkpoint), from its weights."""
    import evaluation
    import probe
    bare = tmp_path / "bare.pth"
    torch.save({"model": torch.load(files["pretrained"], weights_only=True)["model"]}, bare)
    for ckpt in (files["pretrained"], str(bare)):
        args = probe.get_args(["--preset", "tiny", "--checkpoint", ckpt])
        assert (args.model, args.patch_size, args.tubelet) == ("tiny", 8, 2)   # the preset's
        evaluation.read_checkpoint(args)
        assert (args.model, args.patch_size, args.tubelet) == ("tiny", 16, 2), ckpt


@pytest.mark.parametrize("argv,names", [(["--jobs", "0"], "--jobs"), (["--finetune-lr", "nan"],
                                        "--finetune-lr"), (["--grid", "32", "0", "8"], "--grid")])
def test_table7_flags_are_range_checked(capsys, argv, names):
    """tools/table7.py: a bad number is one line at parse time, before any run starts."""
    import tools.table7
    with pytest.raises(SystemExit) as e:
        tools.table7.get_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and names in err and len(err.strip().splitlines()) == 1, err
