"""Decoding less (issue 26): `prepare encode --gop N` and data.decode_frames, which decodes only the
GOPs that hold a wanted frame. The frames must equal a decode of the whole file from its start, at
any GOP, with or without B-frames, in any container; an all-intra file decodes a clip's own frames
and nothing else."""
import subprocess
import sys

import av
import numpy as np
import pytest

import data
from conftest import ROOT, write_video
from tools import prepare


def every_frame(path):
    """The reference: every frame of the file, decoded in order from its start."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def moving_video(path, num_frames=90):
    """Frames that differ everywhere (a gradient that scrolls), so a wrong frame cannot pass."""
    yy, xx = np.mgrid[0:48, 0:64]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)   # x264's defaults: long GOP, B-frames
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(num_frames):
            f = np.stack([(xx * 4 + 3 * i) % 256, (yy * 5 + 7 * i) % 256,
                          (xx + yy + 11 * i) % 256], -1).astype(np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return str(path)


def key_frames(path):
    """Frame indices of the key frames (the packets' flags; files start at time 0)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return sorted(int(round(float(p.pts * s.time_base * s.average_rate)))
                      for p in c.demux(s) if p.is_keyframe and p.pts is not None)


@pytest.fixture(scope="module")
def encodings(tmp_path_factory):
    """One source re-encoded by prepare.reencode at several GOPs (veryfast: B-frames at GOP > 1)."""
    tmp = tmp_path_factory.mktemp("gop")
    src = moving_video(tmp / "src.mp4")
    out = {"source": src}
    for gop, tune in ((1, "fastdecode"), (4, "fastdecode"), (7, ""), (32, "fastdecode")):
        out[gop] = str(tmp / f"gop{gop}.mp4")
        prepare.reencode(src, out[gop], 48, threads=1, gop=gop, tune=tune)
    return out


@pytest.mark.parametrize("name", ["source", 1, 4, 7, 32])
def test_decoded_frames_equal_a_decode_from_the_start(encodings, name):
    path = encodings[name]
    full, rng = every_frame(path), np.random.default_rng(0)
    n = len(full)
    picks = [s + 4 * np.arange(16) for s in rng.integers(0, n - 60, 12)]          # training clips
    picks += [rng.integers(0, n, int(rng.integers(1, 10))) for _ in range(12)]   # any, repeats
    picks += [[0], [n - 1], [n - 1, 0, 1], list(range(0, n, 9))]
    for idx in picks:
        got = data.decode_frames(path, idx)
        want = np.stack([full[i] for i in idx])
        assert np.array_equal(got, want), f"GOP {name}: indices {list(idx)}"


def test_reencode_gop_sets_the_key_frames(encodings):
    n = len(every_frame(encodings[1]))
    assert key_frames(encodings[1]) == list(range(n))            # all-intra: every frame a key
    assert key_frames(encodings[4])[:6] == [0, 4, 8, 12, 16, 20]
    long = key_frames(encodings[32])   # x264 may add a key frame at a scene cut
    assert max(np.diff(long + [n])) <= 32 and len(long) < len(key_frames(encodings[4])) / 2
    # x264 writes its settings into the stream: fastdecode turns CABAC off
    assert b"cabac=0" in open(encodings[4], "rb").read()
    assert b"cabac=1" in open(encodings[7], "rb").read()


class Counting:
    """av.open's container, counting the packets that reach the decoder."""

    def __init__(self, container, counts):
        self.c, self.counts = container, counts

    def __enter__(self):
        self.c.__enter__()
        return self

    def __exit__(self, *exc):
        return self.c.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self.c, name)

    def demux(self, *a, **kw):
        for packet in self.c.demux(*a, **kw):
            yield Packet(packet, self.counts)


class Packet:
    def __init__(self, packet, counts):
        self.p, self.counts = packet, counts

    def __getattr__(self, name):
        return getattr(self.p, name)

    def decode(self):
        self.counts.append(self.p.pts)
        return self.p.decode()


def decoded_packets(monkeypatch, path, idx):
    counts, real = [], av.open
    monkeypatch.setattr(av, "open", lambda *a, **kw: Counting(real(*a, **kw), counts))
    data.decode_frames(path, idx)
    monkeypatch.setattr(av, "open", real)
    return len([c for c in counts if c is not None])


def test_all_intra_decodes_only_the_clips_frames(encodings, monkeypatch):
    clip = 9 + 4 * np.arange(16)    # 16 frames at stride 4: a span of 61
    assert decoded_packets(monkeypatch, encodings[1], clip) == 16
    # GOP 32: every GOP holds a wanted frame, so all 61 frames of the span are decoded
    assert decoded_packets(monkeypatch, encodings[32], clip) >= 61
    # a GOP that holds no wanted frame is skipped: frames 1 and 80 of a GOP-4 file
    assert decoded_packets(monkeypatch, encodings[4], [1, 80]) <= 2 * 4 + 3


@pytest.mark.parametrize("fmt,codec", [("matroska", "libx264"), ("avi", "mpeg4"), ("mov", "libx264")])
def test_other_containers(tmp_path, fmt, codec):
    """GOPs are found from the packets themselves, not from a container's index (mkv's cues list
    only some key frames; mp4's index holds decode timestamps)."""
    yy, xx = np.mgrid[0:48, 0:64]
    path = str(tmp_path / f"v.{fmt}")
    with av.open(path, "w", format=fmt) as c:
        s = c.add_stream(codec, rate=25, options={"g": "4"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(70):
            f = np.stack([(xx * 4 + 3 * i) % 256, (yy * 5 + 7 * i) % 256, (xx + 11 * i) % 256], -1)
            c.mux(s.encode(av.VideoFrame.from_ndarray(f.astype(np.uint8), format="rgb24")))
        c.mux(s.encode())
    full = every_frame(path)
    for idx in (3 + 4 * np.arange(16), [1, 30, 69], [68, 2], [69]):
        assert np.array_equal(data.decode_frames(path, idx), np.stack([full[i] for i in idx]))


def test_encode_command_line_gop_and_tune(video_list, tmp_path):
    run = subprocess.run([sys.executable, "-m", "tools.prepare", "encode", str(video_list),
                          str(tmp_path / "out"), "--short-side", "32", "--workers", "1",
                          "--gop", "4", "--tune", "none"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    assert key_frames(tmp_path / "out" / "clip 0.mp4")[:3] == [0, 4, 8]
    assert b"cabac=1" in (tmp_path / "out" / "clip 0.mp4").read_bytes()
    # the default: all-intra, fastdecode (docs/performance.md: the least CPU per clip)
    assert prepare.PREPARE_GOP == 1
    prepare.encode(video_list, tmp_path / "default", short_side=32, workers=1, quiet=True)
    path = tmp_path / "default" / "clip 1.mp4"
    assert key_frames(path) == list(range(data.video_info(path)[0]))
    assert b"cabac=0" in path.read_bytes()
    bad = subprocess.run([sys.executable, "-m", "tools.prepare", "encode", str(video_list),
                          str(tmp_path / "x"), "--gop", "0"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "argument --gop: 0: must be an integer >= 1" in bad.stderr


def test_decode_cost_reports_each_decoder(encodings):
    """bench's decode section: CPU ms per clip for each (file, decoder); a decoder that cannot run
    (torchcodec without FFmpeg) gives its error, not a crash. No speed is asserted."""
    from tools.bench_data import decode_cost, decode_through

    def broken(path, idx):
        raise OSError("no FFmpeg")
    paths = [encodings[1], encodings[32]]
    cost = decode_cost(paths, {"through": decode_through, "new": data.decode_frames,
                               "broken": broken}, clips=2, rounds=1)
    assert all(isinstance(cost[(p, d)], float) and cost[(p, d)] > 0
               for p in paths for d in ("through", "new"))
    assert cost[(paths[0], "broken")] == "OSError: no FFmpeg"
    clip = 5 + 4 * np.arange(16)
    assert np.array_equal(decode_through(paths[1], clip), data.decode_frames(paths[1], clip))
