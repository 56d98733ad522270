"""The README's pictures and miniature Table 7 (tools/figures.py, tools/table7.py) on tiny
inputs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, TINY

from tools import figures, table7


class FakeEncoder:
    """forward_tokens returns fixed tokens: time slice 0 along e0, slice 1 along e0 + e1, slice 2
    along e1."""

    def forward_tokens(self, video):
        e = torch.eye(4)
        slices = [e[0], (e[0] + e[1]) / 2, e[1]]
        # (B=1, N = 3 slices x 2 tokens, D)
        return torch.stack([s.expand(2, 4) for s in slices]).reshape(1, 6, 4)


def test_frame_similarity_by_hand():
    sim = figures.frame_similarity(FakeEncoder(), torch.zeros(1, 3, 6, 8, 8), tubelet=2)
    c = 1 / np.sqrt(2)
    assert np.allclose(sim, [[1, c, 0], [c, 1, c], [0, c, 1]], atol=1e-6)


def test_figures_draw_from_a_real_run(tmp_path):
    out = tmp_path / "run"
    subprocess.run([sys.executable, "train.py", *TINY, "--out-dir", str(out), "--steps", "3"],
                   cwd=ROOT, check=True, capture_output=True)
    for what, src in (("loss", out / "log.jsonl"), ("figure4", out / "checkpoint-latest.pth")):
        png = tmp_path / f"{what}.png"
        r = subprocess.run([sys.executable, "-m", "tools.figures", what, str(src), "--out", str(png)],
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert min(Image.open(png).size) > 100


def test_table7_table_by_hand(tmp_path):
    rows = {"stills + motion": {"pretrain": [{"loss": 1.0, "floor_zero": 4.0, "floor_mean": 2.0},
                                             {"loss": 1.5, "floor_zero": 4.0, "floor_mean": 2.0},
                                             {"loss": 1.0, "floor_zero": 4.0, "floor_mean": 2.0}],
                                "finetune": [30.0, 40.0, 50.0], "probe": [20.0, 22.0, 24.0],
                                "token_rms": [2.0, 2.0, 2.0]},
            "stills, no motion": {"pretrain": [{"loss": 1.0, "floor_zero": 4.0,
                                                "floor_mean": 4.0}] * 3,
                                  "finetune": [20.0, 45.0, 40.0], "probe": [20.0, 22.0, 24.0],
                                  "token_rms": [3.0] * 3},
            "not pretrained": {"finetune": [50.0, 50.0, 50.0], "probe": [10.0, 30.0, 20.0],
                               "token_rms": [1.0] * 3}}
    setting = dict(grid=[32, 8, 8], finetune_epochs=1, pretrain_epochs=1, pretrain_lr=4e-3)
    table7.write_table(rows, [0, 1, 2], setting, str(tmp_path))
    text = (tmp_path / "table7.md").read_text()
    lines = text.splitlines()
    assert lines[2] == "| stills + motion | 0.58 ± 0.12 | 40.0 ± 8.2 | 22.0 ± 1.6 | 2.0 ± 0.0 |"
    assert lines[3] == ("| stills, no motion | 0.25 ± 0.00 | 35.0 ± 10.8 | 22.0 ± 1.6 | "
                        "3.0 ± 0.0 |")
    assert lines[4] == "| not pretrained | — | 50.0 ± 0.0 | 20.0 ± 8.2 | 1.0 ± 0.0 |"
    assert "seeds 0, 1, 2" in text and "2x8x8 tubelets" in text
    assert "| stills, no motion | 20.0 / 45.0 / 40.0 | 20.0 / 22.0 / 24.0 |" in lines
    # paired by seed: motion - no motion = +10 / -5 / +10 (2 of 3 agree with the mean +5);
    # probe ties everywhere
    assert ("| Table 7: motion vs no motion | stills + motion − stills, no motion | "
            "+10.0 / -5.0 / +10.0 | 5.0 ± 7.1 "
            "| 2/3 | +0.0 / +0.0 / +0.0 | 0.0 ± 0.0 | — |") in lines
    # motion - none: -20 / -10 / 0 -> mean -10, 2 of 3 seeds below zero; probe +10 / -8 / +4
    assert ("| motion pretraining vs none | stills + motion − not pretrained | "
            "-20.0 / -10.0 / +0.0 | -10.0 ± 8.2 "
            "| 2/3 | +10.0 / -8.0 / +4.0 | 2.0 ± 7.5 | 2/3 |") in lines
    # comparisons of rows that did not run
    assert not any("noise" in line or "tube masking" in line for line in lines)
    assert json.loads((tmp_path / "table7.json").read_text())["seeds"] == [0, 1, 2]


def test_table7_paired_signs():
    d, ms, agree = table7.paired([1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 0.0, 4.0, 0.0, 0.0])
    assert list(d) == [1.0, 2.0, -1.0, 4.0, 5.0] and ms == "2.2 ± 2.1" and agree == "4/5"


def test_table7_collects_only_finished_seeds(tmp_path):
    """An interrupted run gives the table of its finished seeds: seed 1 lacks its probe, so only
    seed 0 is read."""
    for seed, kinds in ((0, ("ft", "probe")), (1, ("ft",))):
        for k in kinds:
            d = tmp_path / f"{k}-none-s{seed}"
            d.mkdir()
            (d / "results.json").write_text(json.dumps({"top1": 30.0 + seed + (k == "probe")}))
            (d / "args.json").write_text(json.dumps(dict(img_size=32, num_frames=8, patch_size=8,
                                                         epochs=3)))
    tags = [("not pretrained", "none", None)]
    rows, seeds, setting = table7.collect(str(tmp_path), [0, 1], tags)
    assert seeds == [0] and setting == {"grid": (32, 8, 8), "finetune_epochs": 3}   # the runs' own
    assert rows["not pretrained"]["finetune"] == [30.0] and rows["not pretrained"]["probe"] == [31.0]
    assert 0.5 < rows["not pretrained"]["token_rms"][0] < 5.0        # a random encoder: ~1.8


def test_table7_budgets_resolve_and_flags_win():
    """--budget sets the per-seed budgets; explicit flags win. The demo budget passes none, so its
    runs are the tiny presets as they are (tools/table7.py reads no entry script)."""
    q = table7.get_args([])
    assert (q.pretrain_epochs, q.pretrain_batch, q.pretrain_lr, q.finetune_epochs, q.finetune_lr,
            q.out_dir) == (8, 32, 4e-3, 3, 1.6e-2, "out/table7")
    d = table7.get_args(["--budget", "demo"])
    assert (d.pretrain_epochs, d.pretrain_batch, d.pretrain_lr, d.finetune_epochs, d.finetune_lr,
            d.grid, d.out_dir) == (None, None, None, None, None, None, "out/table7-demo")
    # the previous demo's budget stays pinned: docs/table7.md's 5 x 6 table was measured at it
    d32 = table7.get_args(["--budget", "demo32"])
    assert (d32.pretrain_epochs, d32.pretrain_batch, d32.pretrain_lr, d32.finetune_epochs,
            d32.finetune_lr, d32.out_dir) == (32, 16, 4e-3, 10, 4e-3, "out/table7-demo32")
    o = table7.get_args(["--budget", "demo", "--pretrain-epochs", "4", "--out-dir", "x"])
    assert (o.pretrain_epochs, o.pretrain_batch, o.out_dir) == (4, None, "x")
    assert table7.get_args(["--quick"]).pretrain_epochs == 2


@pytest.mark.parametrize("budget", ["demo", "quarter"])
def test_table7_commands_pass_only_the_budgets_flags(tmp_path, monkeypatch, budget):
    """The commands a (seed, row) cell runs: the demo budget's are the tiny presets unchanged (no
    --epochs, --lr, --batch-size or grid flag), the quarter budget's carry its values."""
    ran = []

    def fake_run(cmd, log, threads=None):
        ran.append(cmd)
        if cmd[0] == "train.py":
            os.makedirs(cmd[cmd.index("--out-dir") + 1])
            with open(log, "w") as f:
                f.write("\ndone: 1 steps")
        else:
            d = cmd[cmd.index("--out-dir") + 1]
            os.makedirs(d)
            with open(os.path.join(d, "results.json"), "w") as f:
                f.write("{}")
    monkeypatch.setattr(table7, "run", fake_run)
    monkeypatch.setattr(table7, "collect", lambda *a: ({}, [0], {}))
    monkeypatch.setattr(table7, "write_table", lambda *a: None)
    monkeypatch.setattr(sys, "argv", ["table7", "--budget", budget, "--seeds", "0", "--rows",
                                      "motion", "--jobs", "1", "--out-dir", str(tmp_path)])
    table7.main()
    assert [c[0] for c in ran] == ["train.py", "finetune.py", "probe.py"]
    budget_flags = {"--epochs", "--lr", "--batch-size", "--img-size", "--num-frames",
                    "--patch-size"}
    used = [budget_flags & set(c) for c in ran]
    if budget == "demo":
        assert used == [set(), set(), set()] and ran[0][:3] == ["train.py", "--preset", "tiny"]
    else:
        assert used == [{"--epochs", "--lr", "--batch-size"}, {"--epochs", "--lr"}, set()]
        assert ran[0][ran[0].index("--epochs") + 1] == "8"


def test_table7_table_only_without_finished_seeds_says_so(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tools.table7", "--table-only", "--out-dir",
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "no seed has finished" in r.stderr and str(tmp_path) in r.stderr
    assert "Traceback" not in r.stderr
