"""prepare.py check (list preflight) and subset (stratified lists); lists saved on Windows
(BOM, CRLF)."""
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import data
from tools import prepare
from conftest import write_video

ROOT = Path(__file__).resolve().parents[1]


def windows_list(path, lines):
    """A list as Notepad saves it: UTF-8 byte-order mark, CRLF line ends."""
    path.write_bytes(b"\xef\xbb\xbf" + "".join(f"{x}\r\n" for x in lines).encode())
    return path


def test_read_list_drops_the_byte_order_mark_and_crlf(video_list):
    lst = windows_list(video_list.parent / "win.csv", ["clip 0.mp4 0", "clip 1.mp4 1"])
    assert data.read_list(lst) == [(str(video_list.parent / "clip 0.mp4"), 0),
                                   (str(video_list.parent / "clip 1.mp4"), 1)]
    entries = prepare.scan_list(lst)
    assert ([e["video"] for e in entries]
            == [str(video_list.parent / f"clip {i}.mp4") for i in (0, 1)])
    assert [e["kind"] for e in entries] == [None, None]


@pytest.fixture
def bad_list(video_list):
    """The 6 good clips of video_list, then one bad line of each kind (line numbers in the
    comments)."""
    root = video_list.parent
    (root / "empty.mp4").write_bytes(b"")
    (root / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    write_video(root / "short.mp4", num_frames=8)
    write_video(root / "sub.mp4", num_frames=30, height=32, width=96)   # another size
    lines = ["clip 0.mp4 0",            # 1  first line after the BOM: must be read as "clip 0.mp4"
             "# a comment",             # 2
             "clip 1.mp4 1",            # 3
             "",                        # 4
             "nope.mp4 0",              # 5  missing
             "empty.mp4 1",             # 6  zero bytes
             "garbage.mp4 2",           # 7  not a video
             "short.mp4 0",             # 8  8 frames < 16
             "./clip 0.mp4 1",          # 9  duplicate of line 1
             "clip 2.mp4 7",            # 10 label outside [0, 3)
             "clip 3.mp4 cat",          # 11 non-integer label
             "lonely-field",            # 12 malformed
             "clip 4.mp4 1",            # 13
             "clip 5.mp4 2",            # 14
             "sub.mp4 2"]               # 15
    return windows_list(root / "all.csv", lines), lines


def test_check_names_every_bad_line_and_writes_the_clean_list(bad_list, tmp_path, capsys):
    lst, lines = bad_list
    clean = tmp_path / "out" / "clean.csv"
    r = prepare.check(lst, num_classes=3, workers=2, write_clean=clean)
    out = capsys.readouterr().out
    kinds = {e["line"]: e["kind"] for e in r["entries"]}
    assert kinds == {1: None, 3: None, 5: "missing", 6: "unreadable", 7: "unreadable",
                     8: "too short", 9: "duplicate", 10: "label", 11: "label", 12: "malformed",
                     13: None, 14: None, 15: None}
    for n in (5, 6, 7, 8, 9, 10, 11, 12):
        assert f"{lst}:{n}: " in out
    assert f"{lst}:9: duplicate: duplicate of line 1" in out
    assert f"{lst}:10: label: label 7 is outside [0, 3)" in out
    assert f"{lst}:8: too short: {lst.parent / 'short.mp4'}: 8 frames, a clip needs 16" in out
    assert f"{lst}:6: unreadable: {lst.parent / 'empty.mp4'}: empty file (0 bytes)" in out
    assert (f"{lst}: 13 lines, 5 good, 8 bad (duplicate 1, label 2, malformed 1, missing 1, "
            "too short 1, unreadable 2)") in out
    assert "frames      30 / 44 / 60" in out and "resolution  64x48 / 64x48 / 96x32" in out
    assert "fps         25.00 / 25.00 / 25.00" in out and "ms/clip median" in out and " p90 " in out
    assert "5 video(s) shorter than 61 frames" in out
    assert clean.read_text().splitlines() == [lines[i - 1] for i in (1, 3, 13, 14, 15)]
    assert sorted(r["stats"]) == [1, 3, 13, 14, 15]


def test_check_command_line_exit_codes(bad_list, video_list, tmp_path):
    lst, _ = bad_list
    cmd = [sys.executable, "-m", "tools.prepare", "check"]
    run = subprocess.run(cmd + [str(lst), "--num-classes", "3", "--workers", "2", "--write-clean",
                                str(tmp_path / "clean.csv")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1, run.stderr                              # some lines bad
    assert (f"{lst}:5: missing: {lst.parent / 'nope.mp4'}: no such file" in run.stdout
            and "check 9/9" in run.stderr)
    assert len(data.read_list(tmp_path / "clean.csv", data_root=lst.parent)) == 5
    assert prepare.main(["check", str(video_list), "--num-classes", "3", "--workers", "1"]) == 0
    with pytest.raises(SystemExit) as e:                                # unusable arguments: exit 2
        prepare.main(["check", str(tmp_path / "absent.csv")])
    assert e.value.code == 2


def labelled_list(path, sizes):
    """A list with sizes[c] lines of class c (paths need not exist for subset)."""
    lines = [f"videos/c{c} v{i}.mp4 {c}" for c, k in enumerate(sizes) for i in range(k)]
    np.random.default_rng(1).shuffle(lines)
    path.write_text("# path label\n" + "\n".join(lines) + "\n")
    return lines


def test_subset_keeps_class_shares_and_is_seeded(tmp_path, capsys):
    sizes = [70, 50, 30, 10, 4]    # 164 videos
    lines = labelled_list(tmp_path / "full.csv", sizes)
    for n in (20, "0.5", 7):
        out = prepare.subset(tmp_path / "full.csv", n, tmp_path / "sub.csv", seed=0)
        count = 82 if n == "0.5" else n
        assert len(out) == count and set(out) <= set(lines) and len(set(out)) == count
        assert ([x for x in (tmp_path / "sub.csv").read_text().splitlines()
                 if not x.startswith("#")] == out)
        got = Counter(int(x.rsplit(None, 1)[1]) for x in out)
        assert all(abs(got[c] - count * k / sum(sizes)) < 1 for c, k in enumerate(sizes)), got
        # input order kept
        assert [x for x in lines if x in set(out)] == sorted(out, key=lines.index)
    a = prepare.subset(tmp_path / "full.csv", 20, tmp_path / "a.csv", seed=0)
    b = prepare.subset(tmp_path / "full.csv", 20, tmp_path / "b.csv", seed=1)
    assert a == prepare.subset(tmp_path / "full.csv", 20, tmp_path / "a2.csv", seed=0) and a != b
    assert prepare.main(["subset", str(tmp_path / "full.csv"), "0.25",
                         str(tmp_path / "q.csv")]) == 0
    assert len(data.read_list(tmp_path / "q.csv", data_root=tmp_path)) == 41
    for bad in ("0", "1.5", "200", "x"):
        with pytest.raises(SystemExit):
            prepare.main(["subset", str(tmp_path / "full.csv"), bad, str(tmp_path / "q.csv")])
    assert "error: N=" in capsys.readouterr().err
