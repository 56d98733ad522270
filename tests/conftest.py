"""Shared fixtures: tiny videos written with PyAV, so no test needs data from outside the repository."""
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # never let open_clip wait on the network


def write_video(path, num_frames=40, height=48, width=64, fps=25, codec="libx264"):
    """Frame i is a uniform grey of level 5*i (so decoded frames can be identified), with a white
    square in the top-left corner that moves one pixel right per frame."""
    import av
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            f = np.full((height, width, 3), (5 * i) % 250, np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return str(path)


@pytest.fixture
def video_list(tmp_path):
    """A list file of 6 small mp4s with labels 0..2, paths relative to the list's folder."""
    lines = []
    for i in range(6):
        write_video(tmp_path / f"clip {i}.mp4", num_frames=40 + 4 * i)
        lines.append(f"clip {i}.mp4 {i % 3}")
    (tmp_path / "train.csv").write_text("# path label\n" + "\n".join(lines) + "\n")
    return tmp_path / "train.csv"
