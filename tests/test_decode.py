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


class CountingDecoder:
    """An H.264 decoder of data._intra_frames', counting the packets it decodes."""
    create, packets = av.CodecContext.create, []

    def __init__(self, *a):
        self.real = CountingDecoder.create(*a)

    def __setattr__(self, name, value):
        setattr(self.real, name, value) if name != "real" else super().__setattr__(name, value)

    def decode(self, packet):
        CountingDecoder.packets.append(packet)
        return self.real.decode(packet)


def no_demuxer(*a, **kw):
    raise AssertionError("a prepared video went through FFmpeg's demuxer")


def test_all_intra_decodes_only_the_clips_frames(encodings, monkeypatch):
    clip = 9 + 4 * np.arange(16)    # 16 frames at stride 4: a span of 61
    monkeypatch.setattr(data._THREAD, "h264", {}, raising=False)   # all-intra: read off the file
    monkeypatch.setattr(av.CodecContext, "create", CountingDecoder)   # (no demuxer), 16 frames
    monkeypatch.setattr(av, "open", no_demuxer)
    CountingDecoder.packets = []
    data.decode_frames(encodings[1], clip)
    assert len(CountingDecoder.packets) == 16
    monkeypatch.undo()
    # GOP 32: every GOP holds a wanted frame, so all 61 frames of the span are decoded
    assert decoded_packets(monkeypatch, encodings[32], clip) >= 61
    # a GOP that holds no wanted frame is skipped: frames 1 and 80 of a GOP-4 file
    assert decoded_packets(monkeypatch, encodings[4], [1, 80]) <= 2 * 4 + 3


def test_prepared_videos_are_read_without_the_demuxer_by_one_decoder(tmp_path, monkeypatch):
    """`prepare encode`d videos (all-intra mp4s) skip FFmpeg's demuxer: each wanted frame is read off
    the file at the offset its moov box gives and decoded by the thread's one decoder, kept from video
    to video (-1 ms a training clip, issue 26). Videos of two sizes in turn, RGB and YUV planes: the
    frames equal a decode from the start and the demuxer's planes. Long-GOP files, with B-frames or
    without, list their key frames (stss) and go through the demuxer."""
    src = moving_video(tmp_path / "src.mp4", 70)
    paths = [str(tmp_path / f"{side}.mp4") for side in (48, 32)]
    for side, path in zip((48, 32), paths):
        prepare.reencode(src, path, side, threads=1, gop=1)
    full = {p: every_frame(p) for p in paths}
    demuxed = {}
    real = data._intra_frames
    monkeypatch.setattr(data, "_intra_frames", lambda path, idx: ({}, idx))   # the demuxer's planes
    for p in paths:
        demuxed[p] = data.decode_frames(p, range(70), planes=48)
    monkeypatch.setattr(data, "_intra_frames", real)
    monkeypatch.setattr(av, "open", no_demuxer)
    rng = np.random.default_rng(0)
    for p in [*paths, *paths[::-1], paths[0]]:
        idx = rng.integers(0, 70, 16)
        assert np.array_equal(data.decode_frames(p, idx), np.stack([full[p][i] for i in idx]))
        luma, chroma, flags = data.decode_frames(p, lambda n: idx[idx < n], planes=48)
        assert flags == demuxed[p][2] and len(luma) == len(chroma) == 16
        for i, y, uv in zip(idx, luma, chroma):
            assert np.array_equal(y, demuxed[p][0][i])
            assert all(np.array_equal(a, b) for a, b in zip(uv, demuxed[p][1][i]))
    monkeypatch.undo()
    for other in (src, tmp_path / "gop4.mp4"):   # x264 defaults, GOP 4: both list key frames
        if other != src:
            prepare.reencode(src, other, 48, threads=1, gop=4, tune="fastdecode")
        with open(other, "rb") as f, pytest.raises(ValueError, match="not all-intra"):
            data._mp4_samples(f)


def test_a_prepared_frame_that_does_not_decode_sends_the_video_to_the_demuxer(tmp_path):
    """A prepared video with a damaged frame: the reader drops its decoder and the demuxer reads the
    video (as it read every video before: here its error, which the dataset reports by name), from the
    indices already drawn (a sample's draws happen once: the same seed, the same clip)."""
    path = str(tmp_path / "v.mp4")
    prepare.reencode(moving_video(tmp_path / "src.mp4", 20), path, 48, threads=1, gop=1)
    whole = data.decode_frames(path, [3, 7])
    with open(path, "rb") as f:
        offsets, sizes, _, _ = data._mp4_samples(f)
    with open(path, "r+b") as f:   # frame 5: its NAL lengths and all, zeroed
        f.seek(int(offsets[5]))
        f.write(bytes(int(sizes[5])))
    draws = []
    with pytest.raises(av.error.InvalidDataError):
        data.decode_frames(path, lambda n: draws.append(n) or [3, 5, 7])
    with open(path, "rb") as f:   # its decoder dropped
        assert draws == [20] and data._mp4_samples(f)[2] not in data._THREAD.h264
    assert np.array_equal(data.decode_frames(path, [3, 7]), whole)   # the others: still read


def intra_mp4(path, n=20, gop=1, container=None, **context):
    """An all-intra H.264 mp4 of moving_video's frames (options: the container's; context: the
    codec context's, e.g. a colour range; gop > 1: no B-frames)."""
    yy, xx = np.mgrid[0:48, 0:64]
    with av.open(str(path), "w", format="mp4", options=container or {}) as c:
        s = c.add_stream("libx264", rate=25, options={"g": str(gop), "bf": "0", "tune": "fastdecode"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for key, value in context.items():
            setattr(s.codec_context, key, value)
        for i in range(n):
            f = np.stack([(xx * 4 + 3 * i) % 256, (yy * 5 + 7 * i) % 256, (xx + 11 * i) % 256], -1)
            c.mux(s.encode(av.VideoFrame.from_ndarray(f.astype(np.uint8), format="rgb24")))
        c.mux(s.encode())
    return str(path)


def edit_moov(path, out, edit):
    """A copy of path (moov after mdat) whose moov box edit(boxes) has changed: boxes is moov's tree,
    [kind, children or payload] each, containers parsed."""
    import struct

    def parse(b):
        out, at = [], 0
        while at + 8 <= len(b):
            size, kind = struct.unpack_from(">I4s", b, at)
            body = b[at + 8:at + size]
            out.append([kind, parse(body) if kind in (b"moov", b"trak", b"mdia", b"minf", b"stbl",
                                                       b"edts") else body])
            at += size
        return out

    def write(tree):
        return b"".join(struct.pack(">I4s", len(body) + 8, kind) + body for kind, body in
                        ((k, write(v) if isinstance(v, list) else v) for k, v in tree))
    whole = open(path, "rb").read()
    at = whole.index(b"moov") - 4
    tree = parse(whole[at:])
    edit(tree[0][1])
    open(out, "wb").write(whole[:at] + write(tree))
    return str(out)


def box(tree, *path):
    for kind, body in tree:
        if kind == path[0]:
            return body if len(path) == 1 else box(body, *path[1:])


def test_what_the_prepared_video_reader_takes_and_leaves(tmp_path, monkeypatch):
    """Edge cases of data._mp4_samples / _intra_frames (a review's): taken, with the demuxer's
    frames, are a 64-bit chunk table (co64) and indices past the end (the nearest frame); left to
    the demuxer are key frames listed (GOP 4, no B-frames), a colour box, two sample descriptions, an
    edit shorter than the track, a moov box longer than the file, a frame cut short. A full-range
    stream's colour range never reaches the next video's frames (decoders by parameter sets)."""
    import struct
    base = intra_mp4(tmp_path / "base.mp4")
    full = every_frame(base)

    def co64(moov):
        stbl = box(moov, b"trak", b"mdia", b"minf", b"stbl")
        i = [k for k, _ in stbl].index(b"stco")
        n = struct.unpack_from(">I", stbl[i][1], 4)[0]
        offsets = np.frombuffer(stbl[i][1], ">u4", n, 8).astype(">u8")
        stbl[i] = [b"co64", stbl[i][1][:8] + offsets.tobytes()]

    def two_entries(moov):
        stbl = box(moov, b"trak", b"mdia", b"minf", b"stbl")
        i = [k for k, _ in stbl].index(b"stsd")
        entry = stbl[i][1][8:]
        stbl[i][1] = stbl[i][1][:4] + struct.pack(">I", 2) + entry + entry

    def short_edit(moov):
        elst = box(moov, b"trak", b"edts", b"elst")
        duration = struct.unpack_from(">I", elst, 8)[0]
        box(moov, b"trak", b"edts")[0][1] = elst[:8] + struct.pack(">I", duration // 2) + elst[12:]

    taken = [edit_moov(base, tmp_path / "co64.mp4", co64)]
    left = [edit_moov(base, tmp_path / "two.mp4", two_entries),
            edit_moov(base, tmp_path / "edit.mp4", short_edit),
            intra_mp4(tmp_path / "bt709.mp4", colorspace=1, color_primaries=1, color_trc=1)]
    left.append(intra_mp4(tmp_path / "gop4.mp4", gop=4))   # only its key frames (stss) say it
    whole = open(base, "rb").read()   # moov's size past the end of the file (64-bit)
    at = whole.index(b"moov") - 4
    with open(tmp_path / "long.mp4", "wb") as f:
        f.write(whole[:at] + struct.pack(">I4sQ", 1, b"moov", 1 << 62) + whole[at + 8:])
    for p in taken:
        with open(p, "rb") as f:
            data._mp4_samples(f)
        got = data.decode_frames(p, [3, 999, 0])
        assert np.array_equal(got, np.stack([full[3], full[19], full[0]]))
    for p in left:
        with open(p, "rb") as f, pytest.raises(ValueError):
            data._mp4_samples(f)
    with open(tmp_path / "long.mp4", "rb") as f, pytest.raises((ValueError, KeyError, OSError)):
        data._mp4_samples(f)
    assert np.array_equal(data.decode_frames(tmp_path / "long.mp4", [3]), full[3][None])
    cut = intra_mp4(tmp_path / "faststart.mp4", container={"movflags": "faststart"})
    with open(cut, "r+b") as f:   # moov in front, the last frame cut short
        f.truncate(f.seek(0, 2) - 60)
    assert data._intra_frames(cut, [2, 19]) == ({}, [2, 19])
    ranges = [intra_mp4(tmp_path / "full.mp4", color_range=2), base]   # full range, then limited
    flags = {p: data._yuv420(data._demuxed_frames(p, [0])[0][0], None, 64)[2] for p in ranges}
    assert flags[ranges[0]] != flags[base]
    for p in [*ranges, *ranges]:
        assert data.decode_frames(p, [0, 5], planes=64)[2] == flags[p]


def test_mp4_sample_table_gives_the_demuxers_packets(tmp_path):
    """data._mp4_samples' offsets and sizes are the demuxer's packets, also where the frames lie in
    chunks between an audio track's (interleaved: a chunk's frames are found from its offset)."""
    path, g = str(tmp_path / "av.mp4"), np.random.default_rng(0)
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=25, options={"g": "1"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("aac", rate=8000)
        for i in range(60):
            f = g.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            sound = av.AudioFrame.from_ndarray(g.uniform(-1, 1, (1, 320)).astype(np.float32),
                                               format="flt", layout="mono")
            sound.rate, sound.pts = 8000, 320 * i
            c.mux(a.encode(sound))
        c.mux(s.encode()), c.mux(a.encode())
    with av.open(path) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    with open(path, "rb") as f:
        offsets, sizes, _, _ = data._mp4_samples(f)
    assert [(int(o), int(n)) for o, n in zip(offsets, sizes)] == packets and len(packets) == 60
    assert np.any(offsets[1:] != offsets[:-1] + sizes[:-1]), "no audio between the frames"


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
