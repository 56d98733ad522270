"""--wandb in train.py, finetune.py and probe.py (runtime.Log): the same numbers as log.jsonl, the
args, the checkpoint path at the end. Checked with a stand-in `wandb` module that records every
call (always), offline with the real package when it is installed, and without it (one line)."""
import glob
import json
import os

import pytest

from conftest import TINY, fails_cleanly, read_log, run

STAND_IN = '''
import json, os
calls = []
def _dump():
    with open(os.environ["WANDB_CALLS"], "w") as f:
        json.dump(calls, f, default=str)
class _Summary(dict):
    def __setitem__(self, k, v):
        calls.append(["summary", k, v]); _dump()
class _Run:
    summary = _Summary()
    def log(self, d):
        calls.append(["log", d]); _dump()
    def finish(self):
        calls.append(["finish"]); _dump()
def init(**kw):
    calls.append(["init", kw]); _dump()
    return _Run()
'''
SCRIPTS = {   # script -> (the smallest run, the file the run ends with)
    "train.py": (TINY + ["--steps", "2"], "checkpoint-latest.pth"),
    "finetune.py": (["--preset", "tiny", "--img-size", "32", "--num-frames", "8",
                     "--motion-train", "32", "--motion-val", "16", "--batch-size", "16",
                     "--steps", "2", "--workers", "0", "--log-every", "1"],
                    "checkpoint-latest.pth"),
    "probe.py": (["--preset", "tiny", "--img-size", "32", "--num-frames", "8", "--motion-train",
                  "32", "--motion-val", "16", "--epochs", "2", "--eval-every", "1",
                  "--workers", "0"], "probe-head.pth"),
}


def stand_in(tmp_path, source=STAND_IN):
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "wandb.py").write_text(source)
    return dict(os.environ, PYTHONPATH=str(tmp_path / "fake"),
                WANDB_CALLS=str(tmp_path / "calls.json"))


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_stand_in_gets_the_log_the_args_and_the_checkpoint(tmp_path, script):
    args, final = SCRIPTS[script]
    out = tmp_path / "run"
    run([script, *args, "--out-dir", str(out), "--wandb", "--wandb-project", "proj",
         "--wandb-run-name", "name"], env=stand_in(tmp_path))
    calls = json.loads((tmp_path / "calls.json").read_text())
    init, logs, rest = calls[0], [c[1] for c in calls if c[0] == "log"], calls[-2:]
    assert init[0] == "init" and init[1]["project"] == "proj" and init[1]["name"] == "name"
    assert init[1]["dir"] == str(out) and init[1]["config"]["out_dir"] == str(out)
    assert init[1]["config"]["wandb"] is True
    records = read_log(out)
    assert len(logs) == len(records) >= 2
    for rec, got in zip(records, logs):                          # the same numbers, in order
        for k, v in rec.items():
            for j, x in (v.items() if isinstance(v, dict) else [(None, v)]):
                if isinstance(x, (int, float)):
                    assert got[f"{k}/{j}" if j else k] == x, (k, j)
    assert rest == [["summary", "checkpoint", str(out / final)], ["finish"]]


@pytest.mark.parametrize("source, match", [
    ("raise ImportError('No module named wandb')\n", "pip install wandb"),
    ("def init(**kw):\n    raise RuntimeError('No API key configured.')\n", "WANDB_MODE=offline")])
def test_without_the_package_or_a_login_one_line(tmp_path, source, match):
    fails_cleanly(TINY + ["--out-dir", str(tmp_path / "run"), "--wandb"], match,
                  env=stand_in(tmp_path, source))


def test_offline_run_with_the_real_package(tmp_path):
    pytest.importorskip("wandb", reason="wandb is optional (not in requirements.txt); the "
                                        "stand-in tests above cover the calls")
    out = tmp_path / "run"
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    run(["train.py", *TINY, "--steps", "2", "--out-dir", str(out), "--wandb",
         "--wandb-run-name", "offline-check"], env=env)
    files = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1, os.listdir(out)
    data = open(files[0], "rb").read()
    assert b"offline-check" in data and b"floor_zero" in data
    assert str(out / "checkpoint-latest.pth").encode() in data
