"""The packed object bank (issue 26): `python -m tools.prepare objects DIR OUT` (tools/packing.py)
reads every PNG once; motion.ObjectBank(OUT) gives the folder's items (RGBA uint8, cropped to alpha,
capped at the tile side) from a memory-mapped file (data.PackedBank); bad input is named when
packing, and a bank cut short is named when opening it."""
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import data
import motion
from conftest import ROOT, TINY, fails_cleanly
from tools import packing


def cut_out(h, w, seed, margin=5, soft=True):
    """An RGBA cut-out inside transparent margins: random colours, alpha 255 inside a soft edge
    (partial alpha) or a hard one."""
    g = np.random.default_rng(seed)
    rgba = np.zeros((h + 2 * margin, w + 2 * margin, 4), np.uint8)
    rgba[..., :3] = g.integers(0, 256, rgba.shape[:2] + (3,))   # colour under alpha 0 too
    yy, xx = np.mgrid[0:h, 0:w]
    edge = np.minimum.reduce([yy, xx, h - 1 - yy, w - 1 - xx]) + 1
    alpha = np.minimum(edge * 40, 255) if soft else np.full((h, w), 255)
    rgba[margin:margin + h, margin:margin + w, 3] = alpha
    return rgba


def make_bank(root, bad=False):
    """cat/ and dog/: objects larger and smaller than a 64 px tile, soft and hard edges."""
    for i, (h, w, soft) in enumerate([(100, 40, True), (30, 50, True), (20, 20, False),
                                      (64, 130, True)]):
        (root / ("cat" if i % 2 else "dog")).mkdir(parents=True, exist_ok=True)
        Image.fromarray(cut_out(h, w, i, soft=soft), "RGBA").save(
            root / ("cat" if i % 2 else "dog") / f"{i}.png")
    if bad:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8), "RGB").save(root / "cat" / "rgb.png")
        (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA").save(root / "dog" / "empty.png")
    return root


def pack(args, expect=0):
    r = subprocess.run([sys.executable, "-m", "tools.prepare", "objects", *map(str, args)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == expect, r.stdout + r.stderr
    return r


def test_packed_items_equal_the_folders(tmp_path):
    folder = make_bank(tmp_path / "pngs")
    pack([folder, tmp_path / "bank", "--tile", "64", "--workers", "2"])
    bank = motion.ObjectBank(tmp_path / "bank")
    ref = motion.ObjectBank(folder, max_side=64)      # the folder read with the tile as its cap
    assert isinstance(bank, data.PackedBank) and len(bank) == len(ref) == 4
    names = (tmp_path / "bank.names.txt").read_text().split()
    assert names == ["cat/1.png", "cat/3.png", "dog/0.png", "dog/2.png"]   # sorted
    for i in range(4):
        a, b = bank[i], ref[i]
        assert a.dtype == np.uint8 and a.shape == b.shape and max(a.shape[:2]) <= 64
        assert np.array_equal(a[..., 3], b[..., 3])                 # alpha exact
        opaque = b[..., 3] == 255
        assert np.array_equal(a[opaque], b[opaque])                 # colour exact where opaque
        # under partial alpha: colour through 8-bit premultiplication, <= half a step of 255 / a
        a_ = b[..., 3].astype(float)
        seen = a_ > 0
        err = np.abs(a[..., :3].astype(float) - b[..., :3])[seen].max(-1)
        assert (err <= 255 / (2 * a_[seen]) + 1).all()
        # the stored tile is premultiplied: colour * alpha / 255, rounded
        pm = np.round(b[..., :3].astype(float) * a_[..., None] / 255)
        assert np.abs(bank.premultiplied(i)[..., :3] - pm).max() <= 1
    assert bank.records["size"].tolist() == [list(ref[i].shape[:2]) for i in range(4)]
    assert ref[0].shape[:2] == (30, 50) and ref[1].shape[:2] == (32, 64)   # cropped; capped


def test_overlay_from_a_packed_bank_matches_the_folder(tmp_path):
    """Same seed, same picks and motion: the same footprints, pixels within 2 levels."""
    folder = make_bank(tmp_path / "pngs")
    pack([folder, tmp_path / "bank", "--tile", "64", "--workers", "1"])
    bank, ref = motion.ObjectBank(tmp_path / "bank"), motion.ObjectBank(folder, max_side=64)
    frames = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    for seed in range(6):
        a, fa = motion.overlay(frames, bank, np.random.default_rng(seed))
        b, fb = motion.overlay(frames, ref, np.random.default_rng(seed))
        assert fa.any() and np.array_equal(fa, fb)
        assert np.abs(a.astype(int) - b).max() <= 2


def test_step_render_from_a_packed_bank_equals_the_worker_overlay(tmp_path):
    """Issue 26: from a packed bank the worker ships each object's stored tile as it is
    (premultiplied uint8, no conversion) and the step's render resizes it as paste does: overlay's
    clips within 2 levels (< 1% of pixels off at all) and the same masks, for the same seeds."""
    import torch
    folder = make_bank(tmp_path / "pngs")
    pack([folder, tmp_path / "bank", "--tile", "64", "--workers", "1"])
    bank = motion.ObjectBank(tmp_path / "bank")
    args = dict(length=6, num_frames=4, img_size=64, num_sample=2, objects=bank, patch=16,
                object_size=(40, 160), seed=3)
    from tools.benchkit import TodaysPath
    step, worker = data.PretrainDataset("noise", **args), TodaysPath("noise", **args)
    a, b = (data.collate([ds[i] for i in range(6)]) for ds in (step, worker))
    h, w = a["sources"][0, 0].tolist()
    assert a["tiles"].shape[-1] == 64 and any(   # the packed tile side; an item, as stored
        np.array_equal(a["tiles"][0, 0, :, :h, :w].permute(1, 2, 0).numpy(),
                       bank.premultiplied(i)) for i in range(len(bank)))
    assert torch.equal(a["mask"], b["mask"])
    diff = (data.infuse(a).int() - b["video"].int()).abs()
    assert diff.max() <= 2 and (diff > 0).float().mean() < 0.01, (diff.max(), (diff > 0).sum())
    assert (b["video"] != data.infuse({"video": a["video"], "flip": a["flip"]})).any()


def test_packed_bank_is_mapped_not_copied(tmp_path):
    pack([make_bank(tmp_path / "pngs"), tmp_path / "bank", "--tile", "64", "--workers", "1"])
    bank = motion.ObjectBank(tmp_path / "bank")
    first = bank[0]
    assert isinstance(bank.records, np.memmap) and not bank.premultiplied(0).flags.owndata
    assert np.load(tmp_path / "bank", mmap_mode="r").shape == (4,)   # a plain .npy
    # a worker that gets the bank pickled (spawn) maps the file itself: no tile bytes travel
    blob = pickle.dumps(bank)
    assert len(blob) < 4 * 64 * 64
    assert np.array_equal(pickle.loads(blob)[0], first)
    assert packing.PACK_TILE == 192   # draws up to 128 px at 224 (Sec. 4.1), scaled: 336 px fits


def test_bad_pngs_are_named_when_packing(tmp_path):
    folder = make_bank(tmp_path / "pngs", bad=True)
    r = pack([folder, tmp_path / "bank", "--tile", "64", "--workers", "2"])
    assert "wrote" in r.stdout and "4 objects" in r.stdout
    for name, why in (("rgb.png", "no alpha channel"), ("broken.png", "broken.png"),
                      ("empty.png", "fully transparent")):
        line = next(ln for ln in r.stdout.splitlines() if name in ln)
        assert "left out" in line and why in line, r.stdout
    assert len(motion.ObjectBank(tmp_path / "bank")) == 4


def test_object_list_naming_a_missing_file(tmp_path):
    folder = make_bank(tmp_path / "pngs")
    (tmp_path / "list.txt").write_text("cat/1.png\ndog/9.png\n")
    r = pack([folder, tmp_path / "bank", "--object-list", tmp_path / "list.txt"], expect=2)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "list.txt:2" in last and "dog/9.png" in last
    assert not (tmp_path / "bank").exists()
    (tmp_path / "list.txt").write_text("dog/2.png\n# a comment\ncat/1.png\n")
    pack([folder, tmp_path / "bank", "--object-list", tmp_path / "list.txt", "--workers", "1"])
    assert (tmp_path / "bank.names.txt").read_text().split() == ["dog/2.png", "cat/1.png"]
    with pytest.raises(ValueError, match="give --object-list to prepare objects"):
        motion.ObjectBank(tmp_path / "bank", list_file=tmp_path / "list.txt")


def test_truncated_or_foreign_bank_is_named_with_the_fix(tmp_path):
    pack([make_bank(tmp_path / "pngs"), tmp_path / "bank", "--tile", "64", "--workers", "1"])
    whole = (tmp_path / "bank").read_bytes()
    for cut in (len(whole) - 1, 5000):   # the last record, most of them
        (tmp_path / "cut").write_bytes(whole[:cut])
        with pytest.raises(ValueError, match=rf"cut is truncated \({cut} of {len(whole)} bytes\): "
                                             r"\(re\)pack it with python -m tools.prepare objects"):
            motion.ObjectBank(tmp_path / "cut")
    for name, text in (("head", whole[:20]), ("notes.txt", b"not a bank")):   # no whole header
        (tmp_path / name).write_bytes(text)
        with pytest.raises(ValueError, match=rf"{name} is not a whole packed object bank .*"
                                             r"\(re\)pack it with python -m tools.prepare objects"):
            motion.ObjectBank(tmp_path / name)
    # train.py stops before any work, with one line naming the file and the fix
    (tmp_path / "cut").write_bytes(whole[:5000])
    fails_cleanly([*TINY, "--objects", str(tmp_path / "cut"), "--out-dir", str(tmp_path / "r")],
                  "cut is truncated")


def test_bench_bank_cost_runs(tmp_path):
    """bench's decode section: the packed bank against its PNGs (no speed is asserted)."""
    from tools.bench_data import bank_cost
    b = bank_cost(str(tmp_path), num=4, clips=1, seeds=2)
    assert all(b[k] > 0 for k in ("read png", "read packed", "overlay png", "overlay packed"))
    assert 0 <= b["over2"] < 0.05 and 0.9 < b["iou"] <= 1 and b["max"] <= 255
