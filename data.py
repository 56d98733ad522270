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


def random_resized_crop_box(height, width, rng, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
    """VideoMAE's finetuning crop (video_transforms._get_param_spatial_crop, = torchvision's
    RandomResizedCrop): area a fraction U(scale) of the frame, aspect w / h log-uniform in `ratio`, placed
    uniformly; after `attempts` misses the centre crop clamped to `ratio`. One box for the whole clip.
    The SMILE reference draws scale (0.25, 1.0), VideoMAE (0.08, 1.0). -> (y, x, h, w)."""
    area, log_ratio = height * width, np.log(ratio)
    for _ in range(attempts):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(*log_ratio))
        w, h = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1)), h, w
    if width / height < min(ratio):            # fallback: the largest centre crop within `ratio`
        h, w = int(round(width / min(ratio))), width
    elif width / height > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def resize(frames, size):
    """uint8 (T, H, W, 3) -> uint8 (T, size, size, 3), bilinear with antialiasing.

    torch's uint8 kernel on the channels-last view: no float round trip, ~8x faster on one core than
    resizing in float (bench.py, "crop resize"), within 1 grey level of it."""
    if frames.shape[1] == frames.shape[2] == size:
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)        # (T, 3, H, W), channels last
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


def crop_and_flip(frames, size, rng, flip, scales=(1, 0.875, 0.75, 0.66), crop="multiscale",
                  crop_scale=(0.25, 1.0), crop_ratio=(3 / 4, 4 / 3)):
    """Training augmentation: a crop resized to size x size, then a horizontal flip (p=0.5). crop:
    "multiscale" (MultiScaleCrop with `scales`, Table 18), "rrc" (random_resized_crop_box with crop_scale /
    crop_ratio, VideoMAE finetuning) or "none" (the whole frame; no draw)."""
    H, W = frames.shape[1:3]
    if crop == "rrc":
        y, x, h, w = random_resized_crop_box(H, W, rng, crop_scale, crop_ratio)
    elif crop == "none":
        y, x, h, w = 0, 0, H, W
    else:
        y, x, h, w = multiscale_crop_box(H, W, rng, scales)
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

class BadItem(Exception):
    """An unreadable video or image; the message names the file."""


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
                bad.append(str(e) if isinstance(e, BadItem) else f"{type(e).__name__}: {e}")
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
        try:
            frames = self.background(index, rng)
        except Exception as e:   # noqa: BLE001 -- name the file that failed
            raise BadItem(f"{self.describe(index)}: {type(e).__name__}: {e}") from e
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
                mask = masking.tube_mask(t, h, h, self.mask_ratio, rng)     # square crops: w = h
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


# ----------------------------------------------------------------------------- evaluation datasets
# Used by probe.py and finetune.py (SPEC 6, Tables 16-17, Table 6). Every dataset below returns dicts:
#   train mode: {"video": (C, T, H, W) float, "label", "index"}, one augmented clip per item;
#   test mode:  {"video": (V, C, T, H, W) float, "label", "video_id"}, V spatial views of one temporal view.
# label: a long (single-label), a multi-hot float (num_classes,) (multi-label) or a float count (counting).

def make_target(label, task, num_classes):
    """A list label as a tensor: class id (single), multi-hot (multi) or the count as a float (count)."""
    if task == "multi":
        t = torch.zeros(num_classes)
        t[list(label)] = 1.0
        return t
    return torch.tensor(float(label)) if task == "count" else torch.tensor(int(label))


def stratified_subset(items, n, seed):
    """A deterministic, class-stratified subset of n list items (SEVERE's low-shot sets, e.g. UCF 10^3):
    each class keeps its share of n (largest remainders get the spare clips), drawn with a seeded rng."""
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
    keep = [i for c, k in zip(classes, take) for i in rng.choice(by_class[c], size=k, replace=False)]
    return [items[i] for i in sorted(keep)]


def segment_indices(num_video_frames, num_frames, rng=None, view=0, num_views=1):
    """TSN-style segment sampling (SSv2): split the video into T equal segments, take one frame of each;
    a random one when training (rng), the (view + 0.5) / num_views point of each segment at test."""
    seg = num_video_frames / num_frames
    offset = rng.uniform(0, seg, num_frames) if rng is not None else np.full(num_frames, seg * (view + 0.5) / num_views)
    return np.minimum((np.arange(num_frames) * seg + offset).astype(int), num_video_frames - 1)


def dense_indices(num_video_frames, num_frames, stride, view=0, num_views=1):
    """Test-time dense sampling: the view-th of num_views clips evenly spaced over the video (5x3 K400)."""
    span = (num_frames - 1) * stride + 1
    if num_video_frames < span:
        return np.round(np.linspace(0, num_video_frames - 1, num_frames)).astype(int)
    start = (num_video_frames - span) * (view / (num_views - 1) if num_views > 1 else 0.5)
    return int(round(start)) + stride * np.arange(num_frames)


def three_crops(frames, size, num_crops=3):
    """Resize the short side to size, take num_crops size x size crops along the long side (start, centre,
    end; one crop = centre). uint8 (T, H, W, 3) -> list of uint8 (T, size, size, 3)."""
    T, H, W, _ = frames.shape
    h, w = (size, max(size, round(W * size / H))) if H <= W else (max(size, round(H * size / W)), size)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    x = x.round_().clamp_(0, 255).byte().permute(0, 2, 3, 1).numpy()
    spots = [0.5] if num_crops == 1 else np.linspace(0, 1, num_crops)
    return [x[:, round(s * (h - size)):round(s * (h - size)) + size, round(s * (w - size)):round(s * (w - size)) + size]
            for s in spots]


class VideoClipDataset(torch.utils.data.Dataset):
    """Decoded clips of a classification list (K400, SSv2, UCF, ... or any `<path> <label>` list).

    train: one clip per item: T frames at `stride` from a random start ("dense") or one random frame per
    segment ("segment", TSN-style, SSv2), a crop (`crop`: "multiscale" = MultiScaleCrop as in pretraining,
    "rrc" = VideoMAE's random resized crop, see crop_and_flip) + flip, then `augment(frames, rng)`
    (finetune.py's RandAugment). A bad video is replaced by another one and reported (sample["bad"]).
    test: item i = video i // num_clips, temporal view i % num_clips; num_crops crops after resizing the
    short side -> (num_crops, C, T, H, W). A bad video is an error here: it would bias the result.
    Randomness is a pure function of (seed, epoch, index), so workers and resumed runs agree.
    """

    def __init__(self, items, mode="train", task="single", num_classes=400, num_frames=16, stride=4,
                 sampling="dense", img_size=224, flip=True, num_clips=1, num_crops=1, augment=None, seed=0,
                 crop="multiscale", crop_scale=(0.25, 1.0), crop_ratio=(3 / 4, 4 / 3)):
        assert mode in ("train", "test") and sampling in ("dense", "segment"), (mode, sampling)
        assert crop in ("multiscale", "rrc", "none"), crop
        self.crop = dict(crop=crop, crop_scale=tuple(crop_scale), crop_ratio=tuple(crop_ratio))
        self.items, self.mode, self.task, self.num_classes = items, mode, task, num_classes
        self.num_frames, self.stride, self.sampling, self.img_size = num_frames, stride, sampling, img_size
        self.flip, self.num_clips, self.num_crops, self.augment, self.seed = flip, num_clips, num_crops, augment, seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.items) * (self.num_clips if self.mode == "test" else 1)

    def targets(self):
        """Every video's target, without decoding: (num_videos,) or (num_videos, num_classes)."""
        return torch.stack([make_target(label, self.task, self.num_classes) for _, label in self.items])

    def frame_indices(self, n, rng, view=0):
        T = self.num_frames
        if self.sampling == "segment":
            return segment_indices(n, T, rng, view, self.num_clips)
        if rng is not None:
            return clip_indices(n, T, self.stride, rng)
        return dense_indices(n, T, self.stride, view, self.num_clips)

    def __getitem__(self, index):
        if self.mode == "test":
            vid, view = divmod(index, self.num_clips)
            path, label = self.items[vid]
            n, _ = video_info(path)
            frames = decode_frames(path, self.frame_indices(n, None, view))
            video = torch.stack([normalize(np.ascontiguousarray(c)) for c in three_crops(frames, self.img_size, self.num_crops)])
            return {"video": video, "label": make_target(label, self.task, self.num_classes), "video_id": vid}
        rng = np.random.default_rng([self.seed, self.epoch, index])
        bad = []
        for _ in range(20):
            path, label = self.items[index]
            try:
                n, _ = video_info(path)
                frames = decode_frames(path, self.frame_indices(n, rng))
                frames = crop_and_flip(frames, self.img_size, rng, self.flip, **self.crop)
                break
            except Exception as e:   # noqa: BLE001 -- any decode error makes the item bad
                bad.append(f"{path}: {type(e).__name__}: {e}")
                index = int(rng.integers(len(self.items)))
        else:
            raise RuntimeError("20 bad items in a row:\n  " + "\n  ".join(bad))
        if self.augment is not None:
            frames = self.augment(frames, rng)
        return {"video": normalize(np.ascontiguousarray(frames)), "index": index, "bad": bad,
                "label": make_target(label, self.task, self.num_classes)}


MOTION_CLASSES = ("left", "right", "up", "down", "clockwise", "counter-clockwise", "growing", "shrinking")


def render_object(frames, obj, cx, cy, angle, scale):
    """Alpha-blend one RGBA object onto frames uint8 (T, S, S, 3), in place, centred at (cx, cy) px,
    rotated by angle (degrees, clockwise on screen) and scaled, per frame: one affine grid_sample call."""
    T, S = frames.shape[0], frames.shape[1]
    P, Q = obj.shape[:2]
    o = torch.from_numpy(obj).permute(2, 0, 1).float() / 255                       # (4, P, Q)
    o = torch.cat([o[:3] * o[3:], o[3:]])[None].expand(T, -1, -1, -1)               # premultiplied alpha
    a = torch.from_numpy(np.deg2rad(angle)).float()
    c, s, k = torch.cos(a), torch.sin(a), torch.from_numpy(scale).float()
    # output pixel p (normalised xo, yo) -> object-space offset R(-angle) (p - centre) / scale, in the
    # object's normalised units (align_corners=False on both sides)
    bx = torch.from_numpy(S / 2 - 0.5 - cx).float()
    by = torch.from_numpy(S / 2 - 0.5 - cy).float()
    u = torch.stack([c * S / (Q * k), s * S / (Q * k), 2 * (c * bx + s * by) / (Q * k)], -1)
    v = torch.stack([-s * S / (P * k), c * S / (P * k), 2 * (-s * bx + c * by) / (P * k)], -1)
    grid = F.affine_grid(torch.stack([u, v], 1), (T, 4, S, S), align_corners=False)
    out = F.grid_sample(o, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (T, 4, S, S)
    rgb, alpha = out[:, :3].permute(0, 2, 3, 1).numpy(), out[:, 3:].permute(0, 2, 3, 1).numpy()
    frames[:] = np.round(frames * (1 - alpha) + rgb * 255).clip(0, 255).astype(np.uint8)


class MotionClassDataset(torch.utils.data.Dataset):
    """Synthetic motion classification (`--dataset motion`): only the motion tells the classes apart.

    task "single": 8 classes (MOTION_CLASSES): travel left/right/up/down, rotate clockwise/counter-clockwise,
    grow/shrink. Clips come in groups of 8: clip i has class i % 8, and all clips of group i // 8 share the
    object (motion.synthetic_objects), background (black or a still image; "noise" can be added but makes
    the task far harder for a small model trained from scratch), size, start position, angle, scale and
    speed. The first frame is therefore identical across the 8 classes: no single frame
    tells them apart, only the change over time does.
    task "multi": two class draws, one object per distinct class (1 in 8 clips draws the same class twice and
    shows one object); label = the set (multi-hot). Stand-in for Charades.
    task "count": one object moves out and back k = 1..max_count times along a random direction (at least 4
    frames per repetition); label = k, the same
    group trick keeps frame 0 independent of k. Stand-in for UCFRep repetition counting.
    Each clip is a pure function of (seed, split, index); train mode's crop (`crop`, default "none": as
    rendered; no flip, the classes have a direction) and augment(frames, rng) draw from (seed, epoch, index).
    Sizes and speeds are fractions of the frame, so any img_size works.
    """

    def __init__(self, split, length, mode="train", task="single", num_frames=16, img_size=64, seed=0,
                 max_count=4, augment=None, num_objects_bank=64, backgrounds=("black", "image"), crop="none",
                 crop_scale=(0.25, 1.0), crop_ratio=(3 / 4, 4 / 3)):
        assert task in ("single", "multi", "count") and crop in ("multiscale", "rrc", "none"), (task, crop)
        self.crop = dict(crop=crop, crop_scale=tuple(crop_scale), crop_ratio=tuple(crop_ratio))
        if task == "count" and num_frames < 4 * max_count:
            raise ValueError(f"counting up to {max_count} repetitions needs >= {4 * max_count} frames (4 per repetition)")
        self.split_id = {"train": 0, "val": 1}[split]
        self.length, self.mode, self.task, self.T, self.S = length, mode, task, num_frames, img_size
        self.seed, self.max_count, self.augment, self.epoch = seed, max_count, augment, 0
        self.num_classes = 1 if task == "count" else len(MOTION_CLASSES)
        self.objects = motion.synthetic_objects(num_objects_bank, np.random.default_rng([seed, 7]), size=48)
        self.group = max_count if task == "count" else len(MOTION_CLASSES)
        self.backgrounds = backgrounds

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.length

    def targets(self):
        return torch.stack([make_target(self.label(i), self.task, self.num_classes) for i in range(self.length)])

    def label(self, index):
        """Labels without rendering (class counts, stratified subsets)."""
        if self.task == "multi":
            return sorted(set(np.random.default_rng([self.seed, self.split_id, index, 1]).integers(0, 8, 2).tolist()))
        return index % self.group + (1 if self.task == "count" else 0)

    def clip(self, index):
        """-> uint8 (T, S, S, 3) frames and the label."""
        T, S = self.T, self.S
        g = np.random.default_rng([self.seed, self.split_id, index // self.group])   # shared by the group
        kind = self.backgrounds[g.integers(len(self.backgrounds))]
        still = motion.still_image(S, S, g) if kind == "image" else None
        frames = motion.background(kind, T, S, S, g, image=still)
        label = self.label(index)
        classes = label if self.task == "multi" else [label]
        if self.task == "multi":   # the group trick does not apply: each clip draws its own objects
            g = np.random.default_rng([self.seed, self.split_id, index, 2])
        t = np.arange(T) / (T - 1)                                       # 0 .. 1 over the clip
        for cls in classes:
            obj = self.objects[g.integers(len(self.objects))]
            P, Q = np.round(g.uniform(0.3, 0.45, 2) * S).astype(int)
            x0, y0 = g.uniform(0.3, 0.7, 2) * S
            a0, s0 = g.uniform(0, 360), g.uniform(0.6, 1.0)
            dist, turn, grow = g.uniform(0.4, 0.5) * S, g.uniform(180, 300), g.uniform(2.0, 2.6)
            cx, cy, angle, scale = np.full(T, x0), np.full(T, y0), np.full(T, a0), np.full(T, s0)
            if self.task == "count":   # cls = k repetitions: out and back k times, starting at (x0, y0)
                d = g.uniform(0, 2 * np.pi)
                amp = 0.5 * dist * (1 - np.cos(2 * np.pi * cls * np.arange(T) / T))
                cx, cy = x0 + amp * np.cos(d), y0 + amp * np.sin(d)
            elif cls < 4:              # travel: left, right, up, down
                dx, dy = [(-1, 0), (1, 0), (0, -1), (0, 1)][cls]
                cx, cy = x0 + dx * dist * t, y0 + dy * dist * t
            elif cls < 6:              # rotate clockwise / counter-clockwise
                angle = a0 + (1 if cls == 4 else -1) * turn * t
            else:                      # grow / shrink
                scale = s0 * grow ** (t if cls == 6 else -t)
            render_object(frames, resize_rgba(obj, max(P, 2), max(Q, 2)), cx, cy, angle, scale)
        return frames, label

    def __getitem__(self, index):
        frames, label = self.clip(index)
        target = make_target(label, self.task, self.num_classes)
        if self.mode == "test":
            return {"video": normalize(frames)[None], "label": target, "video_id": index}
        rng = np.random.default_rng([self.seed, self.epoch, index])
        frames = crop_and_flip(frames, self.S, rng, False, **self.crop)     # crop "none": unchanged, no draw
        if self.augment is not None:
            frames = self.augment(frames, rng)
        return {"video": normalize(np.ascontiguousarray(frames)), "label": target, "index": index, "bad": []}


def resize_rgba(obj, height, width):
    """uint8 RGBA (h, w, 4) -> (height, width, 4), resampled with premultiplied alpha."""
    x = torch.from_numpy(np.ascontiguousarray(obj)).permute(2, 0, 1).float()[None]
    x = torch.cat([x[:, :3] * x[:, 3:] / 255, x[:, 3:]], 1)
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]
    rgb = torch.where(x[3:] > 0, x[:3] * 255 / x[3:].clamp(min=1e-6), torch.zeros_like(x[:3]))
    return torch.cat([rgb, x[3:]]).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def eval_collate(samples):
    """Stack a batch; test-mode items keep their views: video (B, V, C, T, H, W)."""
    out = {k: torch.stack([s[k] for s in samples]) for k in ("video", "label")}
    for k in ("index", "video_id"):
        if k in samples[0]:
            out[k] = torch.tensor([s[k] for s in samples])
    out["bad"] = [b for s in samples for b in s.get("bad", [])]
    return out


# ----------------------------------------------------------------------------- prepare: re-encode a dataset once
# Decoding is the loader's main cost, and it grows with the pixels of the stored video and with the
# frames decoded before the first one a clip needs. K400/SSv2 as downloaded are up to full HD with
# keyframes seconds apart; re-encoding once to the short side the crops need (K400 320, SSv2 240),
# with a keyframe every PREPARE_GOP frames and x264's fast-decode settings, makes every later epoch
# cheaper (`python bench.py` shows decode ms per clip before and after).

PREPARE_GOP = 32   # a clip decodes at most 31 frames before its first one


def prepared_size(width, height, short_side):
    """(width, height) with the short side scaled to short_side (never up), aspect kept, both even."""
    scale = min(1.0, short_side / min(width, height))
    return max(2, 2 * round(width * scale / 2)), max(2, 2 * round(height * scale / 2))


def decodes(path):
    """True when path opens and its first video frame decodes (a finished prepare output)."""
    import av
    try:
        with av.open(str(path)) as container:
            next(container.decode(video=0))
        return True
    except Exception:   # noqa: BLE001 -- missing, truncated or garbage: not usable
        return False


def reencode(src, dst, short_side, codec="libx264", threads=0):
    """Re-encode the video stream of src to dst (mp4): short side short_side, same frame rate, no audio.
    Written to a temporary file and renamed, so dst exists only when complete. -> number of frames."""
    import av
    from fractions import Fraction
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    # x264 veryfast + fastdecode: quick to write, cheap to read; crf 23 is x264's default quality
    options = {"preset": "veryfast", "tune": "fastdecode", "crf": "23"} if codec == "libx264" else {}
    options["g"] = str(PREPARE_GOP)
    n = 0
    try:
        with av.open(str(src)) as inp, av.open(str(tmp), "w", format="mp4") as out:
            ist = inp.streams.video[0]
            ist.thread_type = "AUTO"
            rate = ist.average_rate or Fraction(25)
            width, height = prepared_size(ist.codec_context.width, ist.codec_context.height, short_side)
            ost = out.add_stream(codec, rate=rate, options=options)
            ost.width, ost.height, ost.pix_fmt = width, height, "yuv420p"
            ost.codec_context.thread_count = threads
            if codec == "mpeg4":   # constant quality (ffmpeg's -q:v 3) instead of the 200 kb/s default
                ost.codec_context.qscale, ost.codec_context.global_quality = True, 3 * 118
            for frame in inp.decode(ist):
                frame = frame.reformat(width, height, "yuv420p", interpolation="AREA")
                frame.pts, frame.time_base = n, 1 / Fraction(rate)   # frame i at i / fps: what decode_frames reads
                for packet in ost.encode(frame):
                    out.mux(packet)
                n += 1
            for packet in ost.encode():
                out.mux(packet)
        if n == 0:
            raise ValueError("no frame could be decoded")
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n


def _prepare_one(job):
    """Pool worker: (src, dst, short_side, codec, threads) -> (src, status, error); never raises."""
    src, dst, short_side, codec, threads = job
    if decodes(dst):
        return src, "skipped", None
    try:
        reencode(src, dst, short_side, codec, threads)
        return src, "done", None
    except Exception as e:   # noqa: BLE001 -- one unreadable video must not stop the others
        return src, "bad", f"{type(e).__name__}: {e}"


def prepare(list_path, out_dir, short_side=320, workers=None, data_root=None, codec="libx264", quiet=False):
    """Re-encode every video of a list file into out_dir and write out_dir/<list name> (same labels,
    paths relative to out_dir, bad videos left out). Parallel over processes; resumable: outputs that
    already exist and decode are skipped. -> dict(list, done, skipped, bad=[(path, error)])."""
    import multiprocessing
    import sys
    import time
    list_path, out_dir = Path(list_path), Path(out_dir)
    items = read_list(list_path, data_root, multi_label=True)   # "3" -> [3]; multi-label lists work too
    root = Path(data_root) if data_root else list_path.parent
    new_list = out_dir / list_path.name
    if new_list.resolve() == list_path.resolve():
        raise ValueError(f"prepare would overwrite its input list {list_path}: choose another OUT_DIR")
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or os.cpu_count() or 1, len(items)))
    threads = max(1, (os.cpu_count() or 1) // workers)   # codec threads per process: no oversubscription
    jobs, rel_of, used = [], {}, set()
    for src, _ in items:
        if src in rel_of:   # listed twice: re-encoded once
            continue
        rel = Path(os.path.relpath(src, root))
        if rel.parts[0] == ".." or rel.is_absolute():   # outside the root: keep the name only
            rel = Path(rel.name)
        rel = rel.with_suffix(".mp4")
        if rel in used:   # a.avi and a.mp4 in one folder: keep both
            rel = rel.with_name(f"{rel.stem}.{len(used)}.mp4")
        used.add(rel)
        rel_of[src] = rel
        jobs.append((src, str(out_dir / rel), short_side, codec, threads))
    counts, bad, t0 = {"done": 0, "skipped": 0, "bad": 0}, [], time.time()
    tty = sys.stderr.isatty()
    end, lead, last = ("", "\r", 0.0) if tty else ("\n", "", 0.0)
    pool = multiprocessing.Pool(workers) if workers > 1 else None
    try:
        for i, (src, status, err) in enumerate((pool.imap_unordered if pool else map)(_prepare_one, jobs), 1):
            counts[status] += 1
            if err:
                bad.append((src, err))
            now = time.time()
            if not quiet and (tty or now - last > 10 or i == len(jobs)):   # one line, or a line per 10 s
                eta = (now - t0) / i * (len(jobs) - i)
                print(f"{lead}prepare {i}/{len(jobs)} | {counts['done']} re-encoded, {counts['skipped']} "
                      f"already there, {counts['bad']} bad | {i / (now - t0):.1f} videos/s | eta "
                      f"{int(eta) // 60}m{int(eta) % 60:02d}s", end=end, file=sys.stderr, flush=True)
                last = now
    finally:
        if pool:
            pool.close()
            pool.join()
    if tty and not quiet:
        print(file=sys.stderr)
    bad_paths = {src for src, _ in bad}
    lines = [f"{rel_of[src]} {','.join(map(str, labels)) if labels else '-'}"
             for src, labels in items if src not in bad_paths]
    new_list.write_text("".join(line + "\n" for line in lines))
    if not quiet:
        print(f"wrote {new_list}: {len(lines)} of {len(items)} videos ({counts['done']} re-encoded, "
              f"{counts['skipped']} already there)")
        if bad:
            print(f"{len(bad)} bad video(s) left out of the list:")
            for src, err in bad:
                print(f"  {src}: {err}")
    return {"list": str(new_list), "done": counts["done"], "skipped": counts["skipped"], "bad": bad}


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="Data tools. prepare: re-encode the videos of a list file once, "
                                                 "to the short side the crops need, for fast decoding.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="python data.py prepare LIST OUT_DIR --short-side 320")
    p.add_argument("list", help="list file '<path> <label>' (VideoMAE convention)")
    p.add_argument("out_dir", help="re-encoded videos and the new list (OUT_DIR/<list name>) go here")
    p.add_argument("--short-side", type=int, default=320, help="K400 320, SSv2 240 (never upscales)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU core)")
    p.add_argument("--data-root", default=None, help="folder the list's paths are relative to (default: the list's)")
    p.add_argument("--codec", default="libx264", choices=["libx264", "mpeg4"])
    a = parser.parse_args()
    result = prepare(a.list, a.out_dir, a.short_side, a.workers, a.data_root, a.codec)
    raise SystemExit(1 if result["bad"] and not (result["done"] + result["skipped"]) else 0)
