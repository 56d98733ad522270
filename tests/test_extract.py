"""extract.py, features for downstream tools (Table 10's TAL): shapes of each mode, --layer against
a hand run of the blocks, index timestamps, resumption, bad videos, label-less lists, 2 ranks."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
from tools import extract
from conftest import ROOT, write_video
from evaluation import three_crops
from model import MODEL_SIZES, PretrainModel, VideoClassifier, load_encoder

FPS = 25
LENGTHS = {"a.mp4": 40, "b c.mp4": 44, "short.mp4": 5}      # frames; "short" is under one window
# T = 4 frames at stride 2 (span 7) every 3 frames, 32 px, 2x16x16 tubelets: a (2, 2, 2) token grid
GRID = ["--img-size", "32", "--num-frames", "4", "--stride", "2", "--snippet-stride", "3",
        "--workers", "0"]
D = MODEL_SIZES["tiny"]["embed_dim"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three videos, a list mixing labelled and label-less lines, a train.py-style checkpoint."""
    root = tmp_path_factory.mktemp("clips")
    for name, n in LENGTHS.items():
        write_video(root / name, num_frames=n, fps=FPS)
    (root / "list.csv").write_text("\ufeff# path [label]\na.mp4 3\nb c.mp4\n\nshort.mp4 -\n",
                                   encoding="utf-8")
    ckpt = root / "checkpoint-latest.pth"
    torch.manual_seed(1)
    pre = PretrainModel(img_size=32, num_frames=4, **MODEL_SIZES["tiny"], out_dim=1536)
    saved_args = {"model": "tiny", "patch_size": 16, "tubelet": 2}              # as train.py saves
    torch.save({"model": pre.state_dict(), "args": saved_args}, ckpt)
    return root, ckpt


def extract_run(clips, out, *flags):
    root, ckpt = clips
    return extract.main(["--list", str(root / "list.csv"), "--checkpoint", str(ckpt),
                         "--out-dir", str(out), *GRID, *flags])


def index(out):
    return [json.loads(line) for line in open(out / "index.jsonl")]


# ------------------------------------------------------------------------- lists, names, windows


def test_list_with_label_less_lines_and_bad_lines(tmp_path):
    lst = tmp_path / "l.csv"
    lst.write_text("\ufeff# c\nx y.mp4 3\nz.mp4\nsub/w.mp4 3,17\n/abs/v.mp4 -\nq.mp4 2.5\n",
                   encoding="utf-8")
    items = extract.read_items(lst)
    rel = [(p if p.startswith("/abs") else os.path.relpath(p, tmp_path), lab)
           for p, lab, _ in items]
    assert rel == [("x y.mp4", "3"), ("z.mp4", None), ("sub/w.mp4", "3,17"), ("/abs/v.mp4", "-"),
                   ("q.mp4", "2.5")]
    assert items[1][2] == f"{lst}:3"
    assert extract.read_items(lst, "/data")[1][0] == "/data/z.mp4"
    lst.write_text("a.mp4 1\nb.mp4 -2\n")
    with pytest.raises(ValueError, match=f"{lst}:2: label '-2' is negative"):
        extract.read_items(lst)


def test_output_names_resolve_stem_clashes():
    assert extract.output_names(["/d/x.mp4", "/d/y.avi"]) == ["x", "y"]
    assert extract.output_names(["/d/a/x.mp4", "/d/b/x.mp4", "/d/y.mp4"]) == ["a__x", "b__x", "y"]
    assert extract.output_names(["/d/x.mp4", "/d/x.avi"]) == ["x.mp4", "x.avi"]
    with pytest.raises(ValueError, match="listed twice"):
        extract.output_names(["/d/x.mp4", "/d/x.mp4"])


def test_snippet_windows_by_hand():
    idx = extract.snippet_frames(40, 4, 2, 3)      # span 7: starts 0, 3, ..., 33: (40 - 7) // 3 + 1
    assert idx.shape == (12, 4) and idx[0].tolist() == [0, 2, 4, 6]
    assert idx[-1].tolist() == [33, 35, 37, 39]
    assert extract.snippet_frames(5, 4, 2, 3).tolist() == [[0, 2, 4, 4]]   # last frame repeated
    thumos = extract.snippet_frames(1000, 16, 1, 4)     # VideoMAEv2: range(0, n - 15, 4)
    assert thumos[:, 0].tolist() == list(range(0, 1000 - 15, 4))


# ----------------------------------------------------------------------------- the three modes


def test_modes_shapes_and_index_timestamps(clips, tmp_path):
    s = extract_run(clips, tmp_path / "s")
    assert s == {**s, "extracted": 3, "skipped": 0, "bad": 0}
    for name, n in LENGTHS.items():
        k = max(1, (n - 7) // 3 + 1)
        assert np.load(tmp_path / "s" / f"{name[:-4]}.npy").shape == (k, D)
    rec = index(tmp_path / "s")
    assert [r["file"] for r in rec] == ["a.npy", "b c.npy", "short.npy"]
    assert [r["label"] for r in rec] == ["3", None, "-"]
    a = rec[0]
    assert a["shape"] == [12, D] and a["fps"] == FPS and a["num_frames"] == 40
    assert a["frames"] == [[3 * k, 3 * k + 6] for k in range(12)]
    assert np.allclose(a["times"], [[3 * k / FPS, (3 * k + 7) / FPS] for k in range(12)])
    extract_run(clips, tmp_path / "v", "--mode", "video", "--test-clips", "2", "--test-crops", "3")
    assert np.load(tmp_path / "v" / "a.npy").shape == (D,)
    # the 2 temporal views, on the stride grid as the reference reads them (evaluation.dense_indices)
    assert index(tmp_path / "v")[0]["frames"] == [[0, 6], [32, 38]]
    extract_run(clips, tmp_path / "t", "--mode", "tokens", "--fp16")
    tokens = np.load(tmp_path / "t" / "a.npy")
    assert tokens.shape == (2, 2, 2, D) and tokens.dtype == np.float16       # (t, h, w, D)
    # one centre clip and crop: the video vector is the mean of that clip's tokens (no fc_norm)
    extract_run(clips, tmp_path / "v1", "--mode", "video", "--test-clips", "1", "--test-crops", "1")
    mean = tokens.astype(np.float32).mean((0, 1, 2))
    assert np.allclose(np.load(tmp_path / "v1" / "a.npy"), mean, atol=2e-3 * np.abs(mean).max())


def test_layer_equals_a_hand_run_of_the_blocks(clips, tmp_path):
    root, ckpt = clips
    extract_run(clips, tmp_path / "l2", "--layer", "2")
    extract_run(clips, tmp_path / "last")
    got, last = np.load(tmp_path / "l2" / "a.npy"), np.load(tmp_path / "last" / "a.npy")
    assert not np.allclose(got, last)
    model = VideoClassifier(img_size=32, num_frames=4, num_classes=1, **MODEL_SIZES["tiny"]).eval()
    load_encoder(model, torch.load(ckpt, weights_only=True), verbose=False)
    idx = extract.snippet_frames(40, 4, 2, 3)                                   # (12, 4)
    frames = three_crops(data.decode_frames(root / "a.mp4", idx.reshape(-1)), 32, 1)[0]
    video = data.normalize(torch.from_numpy(frames).view(12, 4, 32, 32, 3).permute(0, 4, 1, 2, 3))
    with torch.no_grad():
        x = model.patch_embed(video) + model.pos_embed                            # (12, N, D)
        x2 = model.blocks[1](model.blocks[0](x))
        x4 = model.blocks[3](model.blocks[2](x2))
    assert np.allclose(got, x2.mean(1).numpy(), atol=1e-5)
    assert np.allclose(last, x4.mean(1).numpy(), atol=1e-5)


# ------------------------------------------------------------------------- resumption, bad videos


def test_resume_skips_done_videos_and_redoes_a_deleted_one(clips, tmp_path):
    out = tmp_path / "r"
    extract_run(clips, out)
    stamp = {f: os.stat(out / f).st_mtime_ns for f in ("a.npy", "b c.npy", "short.npy")}
    first = index(out)
    again = extract_run(clips, out)
    assert (again["extracted"], again["skipped"]) == (0, 3)
    assert {f: os.stat(out / f).st_mtime_ns for f in stamp} == stamp and index(out) == first
    os.remove(out / "b c.npy")
    redo = extract_run(clips, out)
    assert (redo["extracted"], redo["skipped"]) == (1, 2)
    assert os.stat(out / "a.npy").st_mtime_ns == stamp["a.npy"] and index(out) == first
    with pytest.raises(SystemExit):                # other features into the same folder
        extract_run(clips, out, "--layer", "1")


def test_bad_videos_are_listed_and_skipped(clips, tmp_path, capsys):
    root, ckpt = clips
    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 100)
    lst = tmp_path / "with_bad.csv"
    lst.write_text(f"{root}/a.mp4 0\njunk.mp4 1\nmissing.mp4\n{root}/short.mp4 2\n")
    s = extract.main(["--list", str(lst), "--checkpoint", str(ckpt),
                      "--out-dir", str(tmp_path / "o"), *GRID])
    assert (s["extracted"], s["bad"]) == (2, 2)
    assert "bad 2 (see" in capsys.readouterr().out
    bad = (tmp_path / "o" / "bad.txt").read_text().splitlines()
    assert len(bad) == 2 and "junk.mp4: " in bad[0] and bad[0].endswith(f"[{lst}:2]")
    assert "missing.mp4: " in bad[1] and bad[1].endswith(f"[{lst}:3]")
    assert (tmp_path / "o" / "missing_files.txt").read_text().split() == ["junk", "missing"]
    assert [r["file"] for r in index(tmp_path / "o")] == ["a.npy", "short.npy"]


def test_video_dir_with_clashing_stems(clips, tmp_path):
    for sub in ("x", "y"):
        (tmp_path / "v" / sub).mkdir(parents=True)
        write_video(tmp_path / "v" / sub / "clip.mp4", num_frames=12)
    extract.main(["--video-dir", str(tmp_path / "v"), "--out-dir", str(tmp_path / "o"),
                  "--model", "tiny", *GRID])
    assert sorted(p.name for p in (tmp_path / "o").glob("*.npy")) == ["x__clip.npy", "y__clip.npy"]


# ----------------------------------------------------------------------------- torchrun


def test_torchrun_two_ranks_give_the_files_of_one_process(clips, tmp_path):
    """--preset tiny (the demo's grid), a random encoder (seeded: the same on both ranks), one
    loader worker per rank against none in the single process."""
    root, _ = clips
    flags = ["--preset", "tiny", "--list", str(root / "list.csv"), "--stride", "1",
             "--snippet-stride", "8"]
    extract.main([*flags, "--workers", "0", "--out-dir", str(tmp_path / "one")])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    r = subprocess.run([*torchrun, "-m", "tools.extract", *flags, "--workers", "1", "--out-dir",
                        str(tmp_path / "two")], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "extracted 3, skipped 0" in r.stdout
    one, two = tmp_path / "one", tmp_path / "two"
    assert sorted(p.name for p in two.glob("parts/*")) == ["index.0.jsonl", "index.1.jsonl"]
    T = extract.PRESETS["tiny"]["num_frames"]                 # windows of T frames every 8 frames
    assert index(one) == index(two) and index(one)[0]["shape"] == [(40 - T) // 8 + 1, D]
    for name in ("a", "b c", "short"):
        a, b = np.load(one / f"{name}.npy"), np.load(two / f"{name}.npy")
        np.testing.assert_allclose(a, b, atol=1e-6)
