"""Clips for SMILE pretraining: list files, PyAV decoding, crops, motion infusion and masks.

Paper: Sec. 3.3-3.4, 4.1, Table 7 (backgrounds), Table 18, Appendix F.3 (sampling); SPEC 2, 3, 5, 6.
Each pretraining sample is one decoded video (or generated background) turned into `num_sample`
clips (repeated sampling, F.3), each with its own crop, flip, objects and mask:

    decode T frames at a stride (YUV) -> MultiScaleCrop box + flip -> draw the objects' motion,
    their footprints' tokens from the alpha alone (motion.py, masking.py) -> mask (masking.py)
    -> on the device (infuse): the crops in RGB and resized, flipped, the objects pasted

Clips reach the device as uint8 and the pixel work runs there, not on the loader's CPU cores (issue
26). Every sample is a pure function of (seed, pass, index): workers, ranks and resumed runs all see
the same stream. A bad item (unreadable video, bad object PNG) is replaced and reported, never fatal.
The evaluation datasets are evaluation.py's; `python -m tools.prepare` re-encodes and checks list files.
"""
import ctypes
import itertools
import mmap
import os
import re
import signal
import struct
import threading
from pathlib import Path

import numpy as np
import torch

import masking
import motion
from augment import crop_and_flip, planes_cap, yuv_to_rgb
from model import mask_indices
from teacher import IMAGENET_MEAN, IMAGENET_STD, channel_stats

LIBC = ctypes.CDLL(None) if os.name == "posix" else None   # the C library: mallopt, madvise

# ----------------------------------------------------------------------------- list files (SPEC 6)

# a field that looks like a label: a number, class ids "3,17,42", or "-" (no class)
LABEL = re.compile(r"-|[+-]?\d+(\.\d+)?(,[+-]?\d+(\.\d+)?)*")


def list_entries(path, data_root=None, optional_label=False):
    """Every entry line of a VideoMAE-style list, bad ones included: one `<path> <label>` per line,
    the label the last field (so paths may hold spaces), `#` comments and blank lines skipped,
    relative paths resolved against data_root (default: the list's folder). Read as utf-8-sig (a
    Windows byte-order mark is no part of the first path); a line with bytes not UTF-8 is bad.
    optional_label: the last field is a label only when it looks like one (LABEL), else the whole
    line is the path. -> [dict(line, text, video, label (its text or None), reason (None: good))]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"list file {path} does not exist")
    raw, root, entries = path.read_bytes(), Path(data_root) if data_root else path.parent, []
    for n, line in enumerate(raw.decode("utf-8-sig", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.rsplit(None, 1)
        if optional_label and not (len(fields) == 2 and LABEL.fullmatch(fields[1])):
            fields = [line, None]
        e = dict(line=n, text=line, video=None, label=None, reason=None)
        entries.append(e)
        if "\ufffd" in line:
            e["reason"] = "not valid UTF-8"
        elif len(fields) != 2:
            e["reason"] = f"expected '<path> <label>', got {line!r}"
        else:
            e["video"] = fields[0] if os.path.isabs(fields[0]) else str(root / fields[0])
            e["label"] = fields[1]
    return entries


def parse_label(label, multi_label=False, num_classes=None):
    """A label field -> (int, or a list of ints when multi_label: "3,17,42", "-" = none; None) or
    (None, the reason it is bad)."""
    try:
        labels = ([] if label == "-" else [int(x) for x in label.split(",")] if multi_label
                  else [int(label)])
    except ValueError:
        return None, f"label {label!r} is not an integer{' list' if multi_label else ''}"
    for lab in labels:
        if lab < 0 or (num_classes is not None and lab >= num_classes):
            return None, f"label {lab} is outside [0, {num_classes})"
    return (labels if multi_label else labels[0]), None


def read_list(path, data_root=None, num_classes=None, multi_label=False):
    """A list file (list_entries' rules) -> [(path, label)], the label an int (or a list of ints
    when multi_label). The first bad line raises ValueError naming FILE:LINE."""
    items = []
    for e in list_entries(path, data_root):
        label, reason = (None, e["reason"]) if e["reason"] else \
            parse_label(e["label"], multi_label, num_classes)
        if reason:
            raise ValueError(f"{path}:{e['line']}: {reason}")
        items.append((e["video"], label))
    if not items:
        raise ValueError(f"list file {path} has no entries")
    return items


# ----------------------------------------------------------------------------- decoding (PyAV)

def video_info(path):
    """(number of frames, frames per second) of a video, from its header where it can."""
    import av
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return _frame_count(container, stream), float(stream.average_rate or 25)


def _frame_count(container, stream):
    if stream.frames:   # the header's count, or (some containers store none) the duration's
        return stream.frames
    secs = float(stream.duration * stream.time_base) if stream.duration else container.duration / 1e6
    return int(round(secs * float(stream.average_rate or 25)))


def decode_frames(path, indices, planes=0):
    """Decode the frames at `indices` (sorted or not; repeats allowed; or a function of the frame
    count: the file is opened once) -> uint8 (len, H, W, 3), or with planes = C > 0 their YUV 4:2:0
    planes, short side at most C, as views of the decoder's frames (augment.crop_planes copies only
    its box out): ([luma (H, W)] * len, [(U, V) (H', W') each] * len, (colorspace, full range?)).

    A `prepare encode`d video (all-intra H.264 mp4): the wanted frames only, read straight off the
    file (_intra_frames). Any other: FFmpeg's demuxer, decoding only the GOPs (read ahead to the next
    key frame) that hold a wanted frame, each from its key frame, so frames equal a decode from the
    start. An index is read off the timestamp; one the stream lacks takes the nearest. One decoder
    thread: the loader's workers are the parallelism (FFmpeg would otherwise start a thread per
    core for every open file, in every worker)."""
    from av.video.reformatter import VideoReformatter
    try:   # a prepared video: ({}, indices) if a frame of it does not decode
        got, indices = _intra_frames(path, indices)
    except (KeyError, IndexError, ValueError, struct.error, OSError):   # not one (or no file)
        got = {}
    if not got:   # FFmpeg's demuxer, which also names what is wrong with a bad file
        got, indices = _demuxed_frames(path, indices)
    if not got:
        raise ValueError(f"{path}: no frame could be decoded")
    have, rgb = np.array(sorted(got)), VideoReformatter()   # one converter: 0.3 -> 0.1 ms a frame
    nearest = {i: int(have[np.abs(have - i).argmin()]) for i in set(int(i) for i in indices)}
    got = {i: _yuv420(got[i], rgb, planes) if planes else rgb.reformat(
        got[i], format="rgb24").to_ndarray() for i in set(nearest.values())}
    frames = [got[nearest[int(i)]] for i in indices]
    return (*map(list, list(zip(*frames))[:2]), frames[0][2]) if planes else np.stack(frames)


def _demuxed_frames(path, indices):   # decode_frames by FFmpeg's demuxer -> ({i: frame}, indices)
    import av
    got = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        if callable(indices):
            indices = indices(_frame_count(container, stream))
        want = sorted(set(int(i) for i in indices))
        fps, start = float(stream.average_rate or 25), stream.start_time or 0
        tb = float(stream.time_base)   # a float: Fraction arithmetic per packet, 3% of a decode
        index = lambda pts: int(round((pts - start) * tb * fps))   # noqa: E731
        if want[0] > 0:
            container.seek(start + int(want[0] / fps / tb), stream=stream, backward=True,
                           any_frame=False)
        todo, gop = list(want), []   # gop: the packets since the last key frame, read ahead
        for packet in itertools.chain(container.demux(stream), [None]):
            if gop and (packet is None or packet.is_keyframe):   # the GOP ends before `packet`
                end = float("inf") if packet is None or packet.pts is None else index(packet.pts)
                # decode while todo[0] is in it or still in the decoder (B-frames come out late)
                for p in gop:
                    if not todo or todo[0] >= end:
                        break
                    for frame in p.decode():
                        i = index(frame.pts) if frame.pts is not None else len(got)
                        if i in want:
                            got[i] = frame
                        while todo and todo[0] <= i:
                            todo.pop(0)
                gop = []
            if not todo:
                break
            gop.append(packet)
    return got, indices


_THREAD = threading.local()   # this thread's H.264 decoders, by parameter sets, kept from video to video


def _intra_frames(path, indices):
    """decode_frames of an all-intra H.264 mp4 without FFmpeg's demuxer: each wanted frame read off
    the file at the offset its moov box gives (_mp4_samples) and decoded, its parameter sets in front,
    by the thread's decoder for those parameter sets (one stream's state, e.g. a colour range, never
    meets another's), kept from video to video: opening a file through the demuxer and setting up a
    decoder cost a loader worker ~1.5-3 ms of a training clip (issue 26). -> ({index: frame},
    indices), no frames if one is cut short or does not decode; any other file raises."""
    import av
    with open(path, "rb") as f:
        offsets, sizes, head, n = _mp4_samples(f)
        indices = indices(len(sizes)) if callable(indices) else indices
        decoders = _THREAD.__dict__.setdefault("h264", {})   # the 8 used last, oldest first
        got, decoder = {}, decoders.pop(head, None)   # put back if all goes well
        if decoder is None:
            decoder = av.CodecContext.create("h264", "r")
            decoder.thread_count = 1
        for i in sorted(set(min(max(int(i), 0), len(sizes) - 1) for i in indices)):
            f.seek(offsets[i])
            sample, packet, at = f.read(sizes[i]), bytearray(head), 0
            while at + n <= len(sample):   # n-byte lengths -> start codes (Annex B)
                size = int.from_bytes(sample[at:at + n], "big")
                packet += b"\0\0\0\1" + sample[at + n:at + n + size]
                at += n + size
            try:
                frames = decoder.decode(av.Packet(bytes(packet))) if at == len(sample) == sizes[i] else []
            except av.FFmpegError:
                frames = []
            if len(frames) != 1:   # cut short, lost or held back: the demuxer takes the video over
                return {}, indices
            got[i] = frames[0]
    decoders[head] = decoder
    while len(decoders) > 8:
        decoders.pop(next(iter(decoders)))
    return got, indices


def _boxes(b, at, end):   # {kind: (start, end)} of the first MP4 box of each kind in b[at:end]
    found = {}
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", b, at)
        head, size = (16, struct.unpack_from(">Q", b, at + 8)[0]) if size == 1 else (8, size or end - at)
        found.setdefault(kind, (at + head, at + size))
        at += max(size, 8)
    return found


def _mp4_samples(f):
    """The frames of an mp4 whose first track is H.264 (avcC), all key frames, one frame rate, one sample
    description, no edit but one of the whole track from 0, no colour box (`prepare encode`'s): (file
    offsets, sizes, SPS and PPS as Annex B, NAL length size). Others raise what decode_frames catches."""
    at, m, end = 0, b"", os.fstat(f.fileno()).st_size
    for _ in range(64):   # the top-level boxes, to moov (`prepare encode`'s: after the frames)
        f.seek(at)
        size, kind, big = struct.unpack(">I4sQ", f.read(16))   # struct.error: the end, no moov
        size = big if size == 1 else size
        if kind == b"moov" and 16 <= size <= end - at:
            f.seek(at)
            m = f.read(size)
            break
        at += max(size, 8)
    moov = _boxes(m, *_boxes(m, 0, len(m))[b"moov"])
    trak, (t, _) = _boxes(m, *moov[b"trak"]), moov[b"mvhd"]   # t: the movie's time scale and length
    mdia = _boxes(m, *trak[b"mdia"])
    stbl = _boxes(m, *_boxes(m, *mdia[b"minf"])[b"stbl"])
    u32 = lambda at: int.from_bytes(m[at:at + 4], "big")   # noqa: E731
    entry = _boxes(m, stbl[b"stsd"][0] + 8, stbl[b"stsd"][1])[b"avc1"]   # H.264, SPS and PPS apart
    avc1 = _boxes(m, entry[0] + 78, entry[1])   # the boxes after a visual sample entry's 78 bytes
    elst = _boxes(m, *trak[b"edts"]).get(b"elst") if b"edts" in trak else None
    v = mdia[b"mdhd"][0]   # the track's time scale (v + 12) and length (v + 16)
    if (m[mdia[b"hdlr"][0] + 8:mdia[b"hdlr"][0] + 12] != b"vide" or b"stss" in stbl   # key frames listed
            or u32(stbl[b"stsd"][0] + 4) != 1 or u32(stbl[b"stts"][0] + 4) != 1   # one entry each
            or u32(stbl[b"stsz"][0] + 4) or b"colr" in avc1 or m[v] or m[t]   # (v1 times: 64-bit)
            or elst and (u32(elst[0] + 4) != 1 or m[elst[0]] or u32(elst[0] + 12)   # 1 edit, at 0,
                         or u32(elst[0] + 8) * u32(v + 12) < u32(v + 16) * u32(t + 12))):   # all of it
        raise ValueError("not all-intra H.264 at one frame rate")
    c, sets, at = m[slice(*avc1[b"avcC"])], [], 5
    for mask in (31, 255):   # the SPS, then the PPS: a count, then (2-byte size, NAL unit) each
        count, at = c[at] & mask, at + 1
        for _ in range(count):
            size = int.from_bytes(c[at:at + 2], "big")
            sets.append(b"\0\0\0\1" + c[at + 2:at + 2 + size])
            at += 2 + size
    table = lambda kind, skip, cols=1, dtype=">u4": np.frombuffer(   # noqa: E731 -- a box's entries
        m, dtype, u32(stbl[kind][0] + skip - 4) * cols, stbl[kind][0] + skip).astype(np.int64)
    sizes = table(b"stsz", 12)
    chunks = table(b"stco", 8) if b"stco" in stbl else table(b"co64", 8, 1, ">u8")
    runs = table(b"stsc", 8, 3).reshape(-1, 3)   # (first chunk, frames a chunk, sample entry)
    per_chunk = np.repeat(runs[:, 1], np.diff([*runs[:, 0], len(chunks) + 1]))
    if per_chunk.sum() != len(sizes) or not len(sizes):
        raise ValueError("the sample table does not add up")
    start = np.cumsum(sizes) - sizes   # each frame's offset in its chunk: from its chunk's first
    first = np.repeat(np.cumsum(per_chunk) - per_chunk, per_chunk)
    return np.repeat(chunks, per_chunk) + start - start[first], sizes, b"".join(sets), (c[4] & 3) + 1


def prepared_size(width, height, short_side):
    """(width, height) with the short side scaled to short_side (never up), aspect kept, both even:
    `prepare encode`'s frames, and decode_frames' planes of a video over the cap."""
    scale = min(1.0, short_side / min(width, height))
    return max(2, 2 * round(width * scale / 2)), max(2, 2 * round(height * scale / 2))


def _yuv420(frame, fmt, cap):
    """decode_frames' planes of a frame: one not 4:2:0, or over the cap, as `prepare encode` writes it."""
    w, h = prepared_size(frame.width, frame.height, cap)
    if frame.format.name not in ("yuv420p", "yuvj420p") or (w, h) != (frame.width, frame.height):
        frame = fmt.reformat(frame, w, h, "yuv420p", interpolation="AREA")
    p = [np.frombuffer(q, np.uint8).reshape(-1, q.line_size) for q in frame.planes]
    flags = (int(frame.colorspace),   # its matrix (augment.yuv_coeffs), and full range or not
             frame.format.name == "yuvj420p" or int(frame.color_range) == 2)
    return p[0][:h, :w], tuple(c[:(h + 1) // 2, :(w + 1) // 2] for c in p[1:]), flags


def clip_indices(num_video_frames, num_frames, stride, rng):
    """T frame indices at `stride` from a random start (SPEC 5). A video shorter than the span
    T*stride is covered evenly instead (the stride shrinks); fewer than T frames is an error."""
    if num_video_frames < num_frames:
        raise ValueError(f"video has {num_video_frames} frames, "
                         f"fewer than the {num_frames} a clip needs")
    span = (num_frames - 1) * stride + 1
    if num_video_frames < span:
        return np.round(np.linspace(0, num_video_frames - 1, num_frames)).astype(int)
    start = rng.integers(0, num_video_frames - span + 1)
    return start + stride * np.arange(num_frames)


def to_tensor(frames):
    """uint8 (T, H, W, 3) numpy -> uint8 (C, T, H, W) tensor, the layout the model reads."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).contiguous()


def normalize(video, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """uint8 (..., C, T, H, W) on any device -> float32, ImageNet-normalised (done on the GPU in
    training)."""
    m, s = channel_stats(mean, std, video.device)
    return (video.float() / 255 - m.view(3, 1, 1, 1)) / s.view(3, 1, 1, 1)


class PackedBank:
    """A bank packed by `python -m tools.prepare objects` (tools/packing.py), memory-mapped: workers
    share one copy in the page cache. Items as motion.ObjectBank's: RGBA uint8 (h, w, 4)."""

    def __init__(self, path, list_file=None):
        if list_file:
            raise ValueError(f"{path} is packed: give --object-list to prepare objects instead")
        self.path = str(path)
        self.count, self.max_side = len(self.open()), self.records.dtype["rgba"].shape[0]

    def open(self):
        """Map the records; a file that is no packed bank, or is cut short: a ValueError, the fix."""
        fix = f"(re)pack it with python -m tools.prepare objects DIR {self.path}"
        try:
            with open(self.path, "rb") as f:
                major = np.lib.format.read_magic(f)[0]
                shape, _, dtype = getattr(np.lib.format, f"read_array_header_{major}_0")(f)
                at, size = f.tell(), os.fstat(f.fileno()).st_size
            if dtype.names != ("size", "rgba"):
                raise ValueError(f"records {dtype}, not (size, rgba)")
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"{self.path} is not a whole packed object bank ({e}): {fix}") from None
        if size < at + shape[0] * dtype.itemsize:
            raise ValueError(f"{self.path} is truncated ({size} of {at + shape[0] * dtype.itemsize} "
                             f"bytes): {fix}")
        self.records = np.memmap(self.path, dtype, "r", offset=at, shape=shape)
        return self.records

    def __len__(self):
        return self.count

    def __getstate__(self):   # a pickled bank maps the file again: the tiles never travel
        return {**self.__dict__, "records": None}

    def premultiplied(self, i):
        """Object i, uint8 (h, w, 4), colour premultiplied by alpha: a view of the mapped file."""
        records = self.records if self.records is not None else self.open()
        h, w = records["size"][i]
        return records["rgba"][i, :h, :w]

    def __getitem__(self, i):
        x = self.premultiplied(i).astype(np.float32)
        x[..., :3] *= 255 / np.maximum(x[..., 3:], 1)   # straight colour, as the PNG held it
        return np.clip(np.round(x), 0, 255).astype(np.uint8)


def stratified_subset(items, n, seed):
    """A deterministic, class-stratified subset of n list items (SEVERE's low-shot sets, e.g. UCF
    10^3): each class keeps its share of n (largest remainders get the spare clips), drawn with a
    seeded rng."""
    if n >= len(items):
        return list(items)
    by_class = {}
    for i, (_, label) in enumerate(items):
        by_class.setdefault(label if isinstance(label, int) else tuple(label)[:1], []).append(i)
    classes = sorted(by_class)
    share = np.array([n * len(by_class[c]) / len(items) for c in classes])
    take = np.floor(share).astype(int)
    for j in np.argsort(-(share - take), kind="stable")[:n - take.sum()]:
        take[j] += 1
    rng = np.random.default_rng([seed, n])
    keep = [i for c, k in zip(classes, take)
            for i in rng.choice(by_class[c], size=k, replace=False)]
    return [items[i] for i in sorted(keep)]


def with_retries(make, index, length, rng, describe=None):
    """make(index) -> sample; a bad item (any exception) is replaced by another index drawn from
    rng, up to 20 times. -> (sample, [error messages of the bad items]). describe(index) names the
    item; without it the error names its own file (a bad object PNG: reported once however drawn)."""
    bad = []
    for _ in range(20):
        try:
            return make(index), bad
        except Exception as e:   # noqa: BLE001 -- any decode / read error makes the item bad
            name = f"{describe(index)}: " if describe and not isinstance(e, BadItem) else ""
            bad.append(str(e) if isinstance(e, BadItem) else f"{name}{type(e).__name__}: {e}")
            index = int(rng.integers(length))
    raise RuntimeError("20 bad items in a row:\n  " + "\n  ".join(bad))


class BadItem(Exception):
    """An unreadable video or image; the message names the file."""


# -------------------------------------------------------------------------- the pretraining dataset

class PretrainDataset(torch.utils.data.Dataset):
    """Motion-infused, masked clips for pretraining (Sec. 3.3-3.4).

    source: "video" (decode each listed video), "frames" (one frame of each, repeated), "images" (a
    still image repeated), "stills" (procedural landscapes, motion.still_image: images without a
    download), "noise" or "black" (Table 7: no natural video at all). items: the paths of the first
    three; length: clips per pass of the synthetic ones.
    motion: "on" (every clip), "off" (none) or "mixed" (clip k of a sample iff k is even).
    masking: "trajectory" (object tokens first, SPEC 3) or "tube" (also for clips without objects).
    angle_range, scale_range: the objects' keyframe transforms (Table 4c; (0, 0) / (1, 1) = off).
    frame_pick ("frames"): "fixed" = one frame per video drawn once from the seed (Table 7's fixed
    K400m-1frm set), "per-pass" = a new frame every pass.
    repeat: what an item's num_sample clips share. "independent" (F.3, SPEC 5): one decoded video,
    each clip its own crop, flip, objects and mask; "same-crop": one crop and flip (the reference's
    stage 2 feeds a clip twice, with two masks); "off": clip k from video (index + k * shift) %
    length, shift drawn per pass, so a step holds batch different videos (the reference's stage 1).
    The step renders the pixels (infuse, issue 26); the path before: tools/benchkit.TodaysPath.
    """

    def __init__(self, source, items=None, length=1000, num_frames=16, stride=4, img_size=224,
                 flip=True, num_sample=2, objects=None, num_objects=2, motion="on",
                 masking="trajectory", mask_ratio=0.8, tubelet=2, patch=16, seed=0,
                 object_size=(32, 128), angle_range=(-90, 90), scale_range=(0.5, 1.5),
                 frame_pick="fixed", repeat="independent"):
        assert source in ("video", "frames", "images", "stills", "noise", "black"), source
        assert repeat in ("independent", "same-crop", "off") and frame_pick in ("fixed", "per-pass")
        self.source, self.items = source, items
        self.length = len(items) if items is not None else length
        self.num_frames, self.stride, self.img_size, self.flip = num_frames, stride, img_size, flip
        self.num_sample, self.objects, self.num_objects = num_sample, objects, num_objects
        self.motion, self.masking, self.mask_ratio = motion, masking, mask_ratio
        self.tubelet, self.patch, self.seed = tubelet, patch, seed
        self.overlay_kw = dict(num_objects=num_objects, size_range=tuple(object_size),
                               angle_range=tuple(angle_range), scale_range=tuple(scale_range))
        self.frame_pick, self.pass_index, self.repeat = frame_pick, 0, repeat

    def set_state(self, pass_index, motion=None, repeat=None):
        """Called before each pass (and at a stage switch): the pass seeds every sample of it."""
        self.pass_index, self.motion, self.repeat = pass_index, motion or self.motion, repeat or self.repeat

    def __len__(self):
        return self.length

    def __getitem__(self, key, buf=None):
        index = unkey(key, self.set_state)   # the pass and stage come with the index
        rng = np.random.default_rng([self.seed, self.pass_index, index])
        # a bad item is replaced by another one, drawn from the same stream
        # (make_sample names the file when the background fails; an object PNG names itself)
        sample, bad = with_retries(lambda i: self.make_sample(i, rng, buf), index, self.length, rng)
        return {**sample, "bad": bad}

    def __getitems__(self, keys):
        """A batch's samples (the DataLoader asks so): videos' YUV crops written straight into the
        batch's tensors (slots; in a worker in shared memory), that collate then takes as they are."""
        slots, S = self.source == "video" and self.slots(len(keys)), self.num_sample
        return [self.__getitem__(key, slots and [v[i * S:i * S + S] for v in slots])
                for i, key in enumerate(keys)]

    def slots(self, n):   # the YUV crops' luma and chroma of n samples, uninitialised
        T, C = self.num_frames, planes_cap(self.img_size)
        return [batch_tensor((n * self.num_sample, c, T, s, s)) for c, s in ((1, C), (2, C // 2 + 1))]

    def describe(self, index):
        return self.items[index][0] if self.items is not None else f"{self.source}#{index}"

    def background(self, index, rng):
        """uint8 (T', H', W', 3) frames before cropping (T' = T frames for every source)."""
        T, S = self.num_frames, self.img_size
        if self.source in ("noise", "black"):
            return motion.background(self.source, T, S, S, rng)
        if self.source == "stills":   # a fixed set of procedural stills: image `index` in every pass
            still = motion.still_image(S, S, np.random.default_rng([self.seed, index, 11]))
            return motion.background("image", T, S, S, rng, image=still)
        path = self.items[index][0]
        if self.source == "images":
            return np.repeat(motion.load_image(path)[None], T, axis=0)
        if self.source == "frames":
            # fixed: the frame is a function of (seed, index) only, the same in every pass
            pick = np.random.default_rng([self.seed, index]) if self.frame_pick == "fixed" else rng
            return np.repeat(decode_frames(path, lambda n: [pick.integers(max(n, 1))]), T, axis=0)
        return decode_frames(path, lambda n: clip_indices(n, T, self.stride, rng), planes_cap(S))

    def make_sample(self, index, rng, buf=None):
        sources = [index]
        if self.repeat == "off":   # one clip per video: the others from videos a per-pass shift on
            shift = np.random.default_rng([self.seed, self.pass_index, 2 ** 20]).integers(
                1, max(self.length, 2))
            sources = [(index + k * int(shift)) % self.length for k in range(self.num_sample)]
        frames = []
        for i in sources:
            try:
                frames.append(self.background(i, rng))
            except Exception as e:   # noqa: BLE001 -- name the file that failed
                raise BadItem(f"{self.describe(i)}: {type(e).__name__}: {e}") from e
        clips, S = [], self.num_sample
        buf = isinstance(frames[0], tuple) and (buf or self.slots(1))   # YUV: crops written there
        # repeated sampling (F.3): own crop (unless "same-crop"), objects and mask per clip
        for k in range(S):
            if k == 0 or self.repeat != "same-crop":
                crop = crop_and_flip(frames[k % len(frames)], self.img_size, rng, self.flip, defer_flip=True,
                                     out=buf and (buf[0][k].numpy(), buf[1][k].numpy()))
            elif buf:
                buf[0][k], buf[1][k] = buf[0][0], buf[1][0]
            with_objects = self.motion == "on" or (self.motion == "mixed" and k % 2 == 0)
            clips.append(self.infuse(crop, with_objects, rng))
        sample = {key: torch.stack([c[key] for c in clips]) for key in clips[0]}
        sample.update(dict(zip(("video", "chroma"), buf)) if buf else {})
        if "chroma" not in sample:   # (S, T, H, W, C) -> (S, C, T, H, W) channels last, no copy
            sample["video"] = sample["video"].permute(0, 4, 1, 2, 3)
        return sample

    def infuse(self, clip, with_objects, rng):
        """One clip's motion (Sec. 3.3: drawn here, rendered by infuse) and mask (Sec. 3.2), for
        crop_and_flip's (crop, flip) -> tensors: video uint8 (T, H, W, C), or crop_planes' crop and size
        (an empty (0, H); the pixels are in the sample's slots already), mask, flip, MOTION_KEYS."""
        (clip, flipped), (T, H, W) = clip, (self.num_frames, self.img_size, self.img_size)
        K = self.num_objects if self.objects is not None else 0   # K tiles that paste nothing
        m = (motion.draw_motion((T, H, W), len(self.objects), rng, **self.overlay_kw)
             if with_objects else motion.no_motion(K, T))
        sides = motion.tile_sides(self.objects, self.overlay_kw["size_range"], H, W)
        m.update(motion.motion_tiles(self.objects if with_objects else None, m, sides))
        obj = masking.drawn_tokens(m, (T, H, W), self.tubelet, self.patch) if with_objects else None
        video = {"video": torch.from_numpy(clip)} if not isinstance(clip, tuple) else dict(
            crop=torch.from_numpy(clip[2]), size=torch.empty(0, H))
        return {**video, "mask": torch.from_numpy(self.mask(obj, rng).reshape(-1)),
                "flip": torch.tensor(flipped), **{k: torch.as_tensor(m[k]) for k in MOTION_KEYS}}

    def mask(self, obj, rng):   # masking.clip_mask of one clip (square crops), obj its object tokens
        t, h = self.num_frames // self.tubelet, self.img_size // self.patch
        return masking.clip_mask(obj, (t, h, h), self.mask_ratio, rng, self.masking)


MOTION_KEYS = ("tiles", "sources", "canvas", "centres", "angles", "scales", "sizes")   # render's


def infuse(batch):
    """V' (Sec. 3.3, SPEC 2) of a batch on any device, uint8 (B, C, T, H, W) contiguous: what the
    loader left to the step done, YUV crops in RGB (yuv_to_rgb), the flips (crop_and_flip's), the
    objects (motion.render); the step hands V' to the teacher and the student alike."""
    video = batch["video"] if "chroma" not in batch else yuv_to_rgb(   # YUV crops: RGB
        batch["video"], batch["chroma"], batch["crop"], batch["size"].shape[-1])
    if "flip" in batch:
        video = torch.where(batch["flip"].view(-1, 1, 1, 1, 1), video.flip(-1), video)
    if "tiles" in batch:
        video = motion.render(video, *(batch[key] for key in MOTION_KEYS))
    return video.contiguous()


def batch_tensor(shape, dtype=torch.uint8, device="cpu"):
    """torch.empty(shape) for a batch, in a loader worker in shared memory as torch's default_collate
    has it (in private memory it is copied once more on its way: a 77 MB batch 95 ms against 34)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype, device=device)
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * dtype.itemsize)
    if storage.nbytes() and os.name == "posix" and os.uname().sysname == "Linux":   # the pages
        at = storage.data_ptr() & -mmap.PAGESIZE   # mapped at once (MADV_POPULATE_WRITE, Linux 5.14+),
        LIBC.madvise(ctypes.c_void_p(at), ctypes.c_size_t(storage.data_ptr() + storage.nbytes() - at),
                     23)   # not a fault each on writing (a 40 MB batch: 55 -> 40 ms); older: EINVAL
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def cat(tensors, stack=False):
    """torch.cat (or torch.stack) of a batch, into a batch_tensor (channels-last clips kept so).
    Consecutive slices of one tensor (PretrainDataset.__getitems__' crops) are that tensor, as is."""
    (first, *_), n, base = tensors, tensors[0].nbytes, tensors[0]._base
    if not stack and base is not None and base.is_contiguous() and base.shape[1:] == first.shape[1:] \
            and base.nbytes == n * len(tensors) and all(t._base is base and t.is_contiguous() and
            t.data_ptr() == base.data_ptr() + i * n for i, t in enumerate(tensors)):   # in order
        return base
    shape = (len(tensors), *first.shape) if stack else (sum(len(t) for t in tensors), *first.shape[1:])
    last = len(shape) == 5 and not first.is_contiguous() and first.movedim(-4, -1).is_contiguous()
    out = batch_tensor((shape[0], *shape[2:], shape[1]) if last else shape, first.dtype, first.device)
    out = out.movedim(-1, 1) if last else out
    return torch.stack(tensors, out=out) if stack else torch.cat(tensors, out=out)


def collate(samples):
    """Stack samples and flatten repeated clips into the batch (B * num_sample clips), with the masks
    as token indices (model.mask_indices): made on the CPU, the step never syncs to find them."""
    batch = {key: cat([s[key] for s in samples]) for key in samples[0] if key != "bad"}
    visible_idx, masked_idx = mask_indices(batch["mask"])
    return {**batch, "visible_idx": visible_idx, "masked_idx": masked_idx,
            "bad": [b for s in samples for b in s["bad"]]}


class ResumableSampler(torch.utils.data.Sampler):
    """DistributedSampler (shuffled with seed + pass, sharded over ranks) that can start mid-pass,
    so a resumed run reads exactly the samples the interrupted one had not read yet. With `state`
    (set_epoch's keywords for the dataset: the pass, the stage) it yields (index, state) pairs: the
    workers live across passes, so the pass reaches them with each index, not a dataset copy."""

    def __init__(self, dataset, num_replicas=1, rank=0, seed=0, shuffle=True, drop_last=True):
        self.inner = torch.utils.data.DistributedSampler(dataset, num_replicas, rank, shuffle, seed,
                                                         drop_last)
        self.start, self.state = 0, None

    def set_epoch(self, epoch, start=0, state=None):
        self.inner.set_epoch(epoch)
        self.start, self.state = start, state

    def __iter__(self):
        indices = list(self.inner)[self.start:]
        return iter([(i, self.state) for i in indices] if self.state else indices)

    def __len__(self):
        return len(self.inner) - self.start


def unkey(key, set_state):
    """A dataset key from ResumableSampler: an index, or (index, state) whose state is applied in
    this process first (set_state(**state): the pass, the stage) -> index."""
    if isinstance(key, tuple):
        key, state = key
        set_state(**state)
    return key


def worker_init(worker_id, keep_heap=True):
    """In each loader worker: torch ops single-threaded (samples carry their own generators), and
    the preemption signals ignored. torchrun stops its workers with killpg(SIGTERM) and SLURM
    signals every process of the step, so the workers get SIGTERM / SIGUSR1 too; dying of it would
    kill the run before the main process (runtime.Preemption) writes its checkpoint. keep_heap: keep
    freed buffers in the heap (glibc returns them, and a clip faulted up to ~1,200 pages in: ~3 ms)."""
    torch.set_num_threads(1)
    if keep_heap and hasattr(LIBC, "mallopt"):   # glibc's (macOS has none; musl's ignores it)
        LIBC.mallopt(-3, 256 << 20), LIBC.mallopt(-1, 1 << 30)   # M_MMAP_, M_TRIM_THRESHOLD
    for s in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, signal.SIG_IGN)


def loader(dataset, sampler, batch_size, workers, device, collate_fn, prefetch=4):
    """The DataLoader of every script: seeded samples, pinned memory on GPU (uint8 clips; containers
    need --ipc=host or --shm-size: docs/performance.md). With a sampler (the training loops), workers
    live across passes (a re-fork costs 1-2 s and re-reads the object bank)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
        pin_memory=device.type == "cuda", drop_last=sampler is not None, worker_init_fn=worker_init,
        persistent_workers=workers > 0 and sampler is not None,   # one-pass loaders: no need
        prefetch_factor=prefetch if workers else None)
