"""Clips for SMILE pretraining: list files, PyAV decoding, MultiScaleCrop, motion infusion and masks.

Paper: Sec. 3.3-3.4, 4.1, Table 7 (backgrounds), Table 18 and Appendix F.3 (sampling); SPEC 2, 3, 5, 6.
Each pretraining sample is one decoded video (or generated background) turned into `num_sample` clips
(repeated sampling, F.3), each with its own crop, flip, object overlay and mask:

    decode T frames at a stride -> MultiScaleCrop + flip -> paste objects (motion.py) -> mask (masking.py)
    -> ImageNet normalisation -> video (num_sample, C, T, H, W) float, mask (num_sample, N) bool

Every sample is a pure function of (seed, pass, index): workers, ranks and resumed runs all see the same
stream. A bad item (unreadable video, bad object PNG) is replaced by another one and reported, never fatal.

    python data.py prepare LIST OUT_DIR --short-side 320   # re-encode a dataset once for fast decoding
"""
import os
import shlex
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import masking
import motion

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


# ----------------------------------------------------------------------------- list files (SPEC 6)

def read_list(path, data_root=None, num_classes=None, multi_label=False):
    """Read a VideoMAE-style list: one `<path> <label>` per line (label = last field, so paths may hold
    spaces), `#` comments and blank lines ignored, relative paths resolved against data_root.
    multi_label: the label field is a comma-separated list of class ids ("3,17,42"; empty list "-").
    Returns [(path, label)] with label an int (or a list of ints). Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"list file {path} does not exist")
    root = Path(data_root) if data_root else path.parent
    items = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.rsplit(None, 1)
        if len(fields) != 2:
            raise ValueError(f"{path}:{n}: expected '<path> <label>', got {line!r}")
        video, label = fields
        try:
            labels = [] if label == "-" else [int(x) for x in label.split(",")] if multi_label else [int(label)]
        except ValueError:
            raise ValueError(f"{path}:{n}: label {label!r} is not an integer{' list' if multi_label else ''}") from None
        for lab in labels:
            if lab < 0 or (num_classes is not None and lab >= num_classes):
                raise ValueError(f"{path}:{n}: label {lab} is outside [0, {num_classes})")
        video = video if os.path.isabs(video) else str(root / video)
        items.append((video, labels if multi_label else labels[0]))
    if not items:
        raise ValueError(f"list file {path} has no entries")
    return items


# ----------------------------------------------------------------------------- decoding (PyAV)

def video_info(path):
    """(number of frames, frames per second) of a video, from its header where it can."""
    import av
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 25)
        n = stream.frames
        if not n:   # some containers do not store the count: estimate it from the duration
            secs = float(stream.duration * stream.time_base) if stream.duration else container.duration / 1e6
            n = int(round(secs * fps))
    return n, fps


def decode_frames(path, indices):
    """Decode the frames at `indices` (sorted or not; repeats allowed) -> uint8 (len, H, W, 3).

    Seeks to the key frame before the first index and decodes only up to the last one. A frame index
    is read off its timestamp; an index the stream does not reach takes the nearest decoded frame."""
    import av
    want = sorted(set(int(i) for i in indices))
    got = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps, tb = float(stream.average_rate or 25), stream.time_base
        start = stream.start_time or 0
        if want[0] > 0:
            container.seek(start + int(want[0] / fps / tb), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            i = int(round(float((frame.pts - start) * tb) * fps)) if frame.pts is not None else len(got)
            if i in want:
                got[i] = frame.to_ndarray(format="rgb24")
            if i >= want[-1]:
                break
    if not got:
        raise ValueError(f"{path}: no frame could be decoded")
    have = np.array(sorted(got))
    nearest = {i: have[np.abs(have - i).argmin()] for i in want}
    return np.stack([got[nearest[int(i)]] for i in indices])


def clip_indices(num_video_frames, num_frames, stride, rng):
    """T frame indices at `stride` from a random start (SPEC 5). A video shorter than the span
    T*stride is covered evenly instead (the stride shrinks); fewer than T frames is an error."""
    if num_video_frames < num_frames:
        raise ValueError(f"video has {num_video_frames} frames, fewer than the {num_frames} a clip needs")
    span = (num_frames - 1) * stride + 1
    if num_video_frames < span:
        return np.round(np.linspace(0, num_video_frames - 1, num_frames)).astype(int)
    start = rng.integers(0, num_video_frames - span + 1)
    return start + stride * np.arange(num_frames)


# ----------------------------------------------------------------------------- augmentation

def multiscale_crop_box(height, width, rng, scales=(1, 0.875, 0.75, 0.66), max_distort=1):
    """VideoMAE's GroupMultiScaleCrop: crop sides from scales of the short side (width and height at
    most `max_distort` scale steps apart), placed at one of 13 fixed offsets. -> (y, x, h, w)."""
    base = min(height, width)
    sizes = [int(base * s) for s in scales]
    pairs = [(h, w) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= max_distort]
    ch, cw = pairs[rng.integers(len(pairs))]
    ys, xs = (height - ch) // 4, (width - cw) // 4
    offsets = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (2, 0), (2, 4), (4, 2), (0, 2),   # (row, col) in quarters
               (1, 1), (1, 3), (3, 1), (3, 3)]
    oy, ox = offsets[rng.integers(len(offsets))]
    return oy * ys, ox * xs, ch, cw


def resize(frames, size):
    """uint8 (T, H, W, 3) -> uint8 (T, size, size, 3), bilinear with antialiasing."""
    if frames.shape[1] == frames.shape[2] == size:
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).byte().permute(0, 2, 3, 1).numpy()


def crop_and_flip(frames, size, rng, flip, scales=(1, 0.875, 0.75, 0.66)):
    """Training augmentation of Table 18: MultiScaleCrop to size x size, then a horizontal flip (p=0.5)."""
    y, x, h, w = multiscale_crop_box(frames.shape[1], frames.shape[2], rng, scales)
    out = resize(frames[:, y:y + h, x:x + w], size)
    if flip and rng.random() < 0.5:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


def normalize(frames, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """uint8 (T, H, W, 3) -> float (C, T, H, W), ImageNet-normalised."""
    x = torch.from_numpy(frames).permute(3, 0, 1, 2).float().div_(255)
    return (x - torch.tensor(mean).view(3, 1, 1, 1)) / torch.tensor(std).view(3, 1, 1, 1)


def load_image(path):
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ----------------------------------------------------------------------------- the pretraining dataset

class PretrainDataset(torch.utils.data.Dataset):
    """Motion-infused, masked clips for pretraining (Sec. 3.3-3.4).

    source: "video" (decode each listed video), "frames" (one frame of each listed video, repeated),
    "images" (a still image repeated), "noise" or "black" (Table 7: no natural video at all).
    items: list of video/image paths for the first three; length: clips per pass for the synthetic ones.
    motion: "on" (every clip), "off" (none) or "mixed" (clip k of a sample gets objects iff k is even).
    masking: "trajectory" (object tokens first, SPEC 3) or "tube"; clips without objects use tube masks.
    """

    def __init__(self, source, items=None, length=1000, num_frames=16, stride=4, img_size=224, flip=True,
                 num_sample=2, objects=None, num_objects=2, motion="on", masking="trajectory",
                 mask_ratio=0.8, tubelet=2, patch=16, seed=0, object_size=(32, 128)):
        assert source in ("video", "frames", "images", "noise", "black"), source
        self.source, self.items = source, items
        self.length = len(items) if items is not None else length
        self.num_frames, self.stride, self.img_size, self.flip = num_frames, stride, img_size, flip
        self.num_sample, self.objects, self.num_objects = num_sample, objects, num_objects
        self.motion, self.masking, self.mask_ratio = motion, masking, mask_ratio
        self.tubelet, self.patch, self.seed, self.object_size = tubelet, patch, seed, object_size
        self.pass_index = 0

    def set_state(self, pass_index, motion=None):
        """Called before each pass (and at a stage switch): the pass seeds every sample of it."""
        self.pass_index = pass_index
        if motion is not None:
            self.motion = motion

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.pass_index, index])
        bad = []
        for _ in range(20):   # a bad item is replaced by another one, drawn from the same stream
            try:
                video, mask = self.make_sample(index, rng)
                return {"video": video, "mask": mask, "bad": bad}
            except Exception as e:   # noqa: BLE001 -- any decode / read error makes the item bad
                bad.append(f"{self.describe(index)}: {type(e).__name__}: {e}")
                index = int(rng.integers(self.length))
        raise RuntimeError("20 bad items in a row:\n  " + "\n  ".join(bad))

    def describe(self, index):
        return self.items[index][0] if self.items is not None else f"{self.source}#{index}"

    def background(self, index, rng):
        """uint8 (T', H', W', 3) frames before cropping (T' = T frames for every source)."""
        T, S = self.num_frames, self.img_size
        if self.source in ("noise", "black"):
            return motion.background(self.source, T, S, S, rng)
        path = self.items[index][0]
        if self.source == "images":
            return np.repeat(load_image(path)[None], T, axis=0)
        n, _ = video_info(path)
        if self.source == "frames":
            return np.repeat(decode_frames(path, [rng.integers(max(n, 1))]), T, axis=0)
        return decode_frames(path, clip_indices(n, T, self.stride, rng))

    def make_sample(self, index, rng):
        frames = self.background(index, rng)
        videos, masks = [], []
        t, h = self.num_frames // self.tubelet, self.img_size // self.patch
        for k in range(self.num_sample):   # repeated sampling (F.3): own crop, overlay and mask per clip
            clip = crop_and_flip(frames, self.img_size, rng, self.flip)
            with_objects = self.motion == "on" or (self.motion == "mixed" and k % 2 == 0)
            if with_objects:
                clip, footprints = motion.overlay(clip, self.objects, rng, num_objects=self.num_objects,
                                                  size_range=self.object_size)
            if with_objects and self.masking == "trajectory":
                obj = masking.object_tokens(footprints, self.tubelet, self.patch)
                mask = masking.trajectory_mask(obj, self.mask_ratio, rng)
            else:
                mask = masking.tube_mask(t, h, h, self.mask_ratio, rng)
            videos.append(normalize(clip))
            masks.append(torch.from_numpy(mask.reshape(-1)))
        return torch.stack(videos), torch.stack(masks)


def collate(samples):
    """Stack samples and flatten repeated clips into the batch: video (B*num_sample, C, T, H, W)."""
    video = torch.cat([s["video"] for s in samples])
    mask = torch.cat([s["mask"] for s in samples])
    return {"video": video, "mask": mask, "bad": [b for s in samples for b in s["bad"]]}


class ResumableSampler(torch.utils.data.Sampler):
    """DistributedSampler (shuffled with seed + pass, sharded over ranks) that can start mid-pass, so a
    resumed run reads exactly the samples the interrupted one had not read yet."""

    def __init__(self, dataset, num_replicas=1, rank=0, seed=0, shuffle=True, drop_last=True):
        self.inner = torch.utils.data.DistributedSampler(dataset, num_replicas, rank, shuffle, seed, drop_last)
        self.start = 0

    def set_epoch(self, epoch, start=0):
        self.inner.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return iter(list(self.inner)[self.start:])

    def __len__(self):
        return len(self.inner) - self.start


def worker_init(worker_id):
    # samples carry their own generators; this keeps torch ops inside workers single-threaded
    torch.set_num_threads(1)
