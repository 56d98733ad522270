"""prepare.py encode: re-encoding a list once (new list, sizes, frame rate, resumability,
bad videos)."""
import subprocess
import sys
from pathlib import Path

import data
from tools import prepare
from conftest import write_video
from conftest import ROOT



def video_size(path):
    import av
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return s.codec_context.width, s.codec_context.height, float(s.average_rate)


def test_prepared_size_keeps_aspect_even_and_never_upscales():
    assert data.prepared_size(640, 360, 320) == (568, 320)   # 568.9 -> nearest even
    # portrait: the width is the short side
    assert data.prepared_size(360, 640, 240) == (240, 426)
    assert data.prepared_size(64, 48, 320) == (64, 48)       # already small: kept
    w, h = data.prepared_size(65, 49, 320)                    # odd sides become even
    assert w % 2 == h % 2 == 0 and abs(w - 65) == abs(h - 49) == 1


def test_prepare_list_sizes_resume_and_bad_video(video_list, tmp_path):
    (video_list.parent / "broken.mp4").write_bytes(b"")        # a zero-byte download
    (video_list.parent / "sub").mkdir()
    write_video(video_list.parent / "sub" / "wide.mp4", num_frames=20, height=64, width=96, fps=30)
    with open(video_list, "a") as f:
        f.write("broken.mp4 1\nsub/wide.mp4 2\n")
    out = tmp_path / "prepared"

    r = prepare.encode(video_list, out, short_side=32, workers=2, quiet=True)
    assert (r["done"], r["skipped"]) == (7, 0)
    assert [Path(p).name for p, _ in r["bad"]] == ["broken.mp4"]

    # The new list: same name, same labels, bad video left out, paths relative to out_dir.
    assert r["list"] == str(out / "train.csv")
    old = {Path(p).stem: lab for p, lab in data.read_list(video_list)}
    new = data.read_list(r["list"])
    assert (len(new) == 7 and {Path(p).stem: lab for p, lab in new}
            == {k: v for k, v in old.items() if k != "broken"})
    assert str(out / "sub" / "wide.mp4") in [p for p, _ in new]          # folders are kept
    assert video_size(out / "clip 0.mp4") == (42, 32, 25.0)               # 64x48 -> short side 32
    assert video_size(out / "sub" / "wide.mp4") == (48, 32, 30.0)         # frame rate kept
    n, fps = data.video_info(out / "clip 5.mp4")
    assert (n, fps) == (60, 25.0)
    levels = data.decode_frames(out / "clip 5.mp4", [0, 10, 59]).reshape(3, -1).mean(1)
    # the right frames, in order
    assert abs(levels[1] - 50) < 6 and abs(levels[2] - 5 * 59 % 250) < 6

    # Resumable: a second run re-encodes nothing (and still reports the bad one); a lost
    # output is redone.
    (out / "clip 3.mp4").unlink()
    r2 = prepare.encode(video_list, out, short_side=32, workers=1, quiet=True)
    assert (r2["done"], r2["skipped"], len(r2["bad"])) == (1, 6, 1)
    assert data.read_list(r2["list"]) == new


def test_prepare_command_line(video_list, tmp_path):
    (video_list.parent / "broken.mp4").write_bytes(b"")
    with open(video_list, "a") as f:
        f.write("broken.mp4 0\n")
    out = tmp_path / "k400_320"
    run = subprocess.run([sys.executable, "-m", "tools.prepare", "encode", str(video_list),
                          str(out), "--short-side", "24", "--workers", "2"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert ("6 of 7 videos" in run.stdout and "1 bad video(s) left out" in run.stdout
            and "broken.mp4" in run.stdout)
    assert "prepare 7/7" in run.stderr and "eta" in run.stderr
    assert len(data.read_list(out / "train.csv")) == 6


def test_data_is_a_library_without_a_command_line():
    # the dataset commands live in prepare.py; data.py only defines things
    assert "__main__" not in (ROOT / "data.py").read_text()
    assert not hasattr(data, "prepare") and not hasattr(data, "reencode")
