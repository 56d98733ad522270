"""Clip augmentation. The crops: pretraining's MultiScaleCrop (Table 18; of YUV planes: crop_planes)
and finetuning's random resized crop, resized and flipped by crop_and_flip. Finetuning's (Table 17,
"follow VideoMAE"; SPEC 6): RandAugment in timm's convention (rand-m9-mstd0.5-inc1, n 2), the same
ops on every frame of a clip; random erasing (p 0.25, one box per clip and all its frames); mixup
(alpha 0.8) and CutMix (alpha 1.0) per batch. Pure functions of an explicit random generator
(--resume replays them); test_finetune.py pins each to timm's (RandAugment through PIL, as timm:
tools/benchkit.randaugment_clip), test_augment_device.py the device half to that.

    aug = RandAug(n=2, m=9, mstd=0.5)   # the loader worker draws, the training step applies
    frames, draw = randaug_sample(aug, frames, rng)      # draw: randaug_params' op, arg tensors
    video = randaugment_batch(video, op, arg)            # uint8 (B, C, T, H, W); op, arg: CPU
    video = random_erase(video, 0.25, rng)               # (B, C, T, H, W), normalised
    video, target = mix_batch(video, target, rng, 0.8, 1.0)
"""
import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------- crops

def multiscale_crop_box(height, width, rng, scales=(1, 0.875, 0.75, 0.66), max_distort=1):
    """VideoMAE's GroupMultiScaleCrop: crop sides from scales of the short side (width and height at
    most `max_distort` scale steps apart), placed at one of 13 fixed offsets. -> (y, x, h, w)."""
    base = min(height, width)
    sizes = [int(base * s) for s in scales]
    pairs = [(h, w) for i, h in enumerate(sizes) for j, w in enumerate(sizes)
             if abs(i - j) <= max_distort]
    ch, cw = pairs[rng.integers(len(pairs))]
    ys, xs = (height - ch) // 4, (width - cw) // 4
    # (row, col) in quarters
    offsets = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (2, 0), (2, 4), (4, 2), (0, 2),
               (1, 1), (1, 3), (3, 1), (3, 3)]
    oy, ox = offsets[rng.integers(len(offsets))]
    return oy * ys, ox * xs, ch, cw


def random_resized_crop_box(height, width, rng, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3),
                            attempts=10):
    """VideoMAE's finetuning crop (video_transforms._get_param_spatial_crop, = torchvision's
    RandomResizedCrop): area a fraction U(scale) of the frame, aspect w / h log-uniform in `ratio`,
    placed uniformly; after `attempts` misses the centre crop clamped to `ratio`. One box for the
    whole clip. The SMILE reference draws scale (0.25, 1.0), VideoMAE (0.08, 1.0). -> (y, x, h, w)."""
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
    """uint8 (T, H, W, 3) -> uint8 (T, size, size, 3) (or (T, h, w, 3) for size = (h, w)), bilinear
    with antialiasing: torch's uint8 kernel on the channels-last view, no float round trip (~8x
    faster on one core, within 1 grey level of it: tools/bench.py, "crop resize")."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if frames.shape[1:3] == size:
        return frames
    # (T, 3, H, W), channels last; a crop read in place (its strides), not copied first
    x = torch.from_numpy(frames if min(frames.strides) > 0 else np.ascontiguousarray(frames))
    x = x.permute(0, 3, 1, 2)
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


def aa_weights(n_in, n_out, rows, cols):
    """F.interpolate's antialiased bilinear resize, n_in to n_out (int tensors (...)), as a matrix
    (..., rows out, cols in), zero past n_out and n_in (motion.render's, yuv_to_rgb's)."""
    n_in, n_out = n_in.double()[..., None, None], n_out.double()[..., None, None]
    j = torch.arange(cols, device=n_in.device, dtype=torch.float64)
    scale, i = n_in / n_out, torch.arange(rows, device=n_in.device, dtype=torch.float64)[:, None]
    support, centre = scale.clamp_min(1), scale * (i + 0.5)   # a shrink widens the triangle
    lo, hi = (centre - support + 0.5).floor(), torch.minimum((centre + support + 0.5).floor(), n_in)
    w = (1 - ((j - centre + 0.5) / support).abs()).clamp_min(0) * (j >= lo) * (j < hi) * (i < n_out)
    return (w / w.sum(-1, keepdim=True).clamp_min(1e-12)).float()


def planes_cap(size):
    """The side of crop_planes' crops for clips of size x size: 320 for 224, prepare's short side."""
    return 2 * math.ceil(size * 5 / 7)


# libswscale's YUV -> RGB matrices (ff_yuv2rgb_coeffs, 16.16: V->R, U->B, -U->G, -V->G) by a frame's
# colorspace tag (AVColorSpace); other tags read as BT.601 (2), as PyAV and FFmpeg read them
SWS_MATRIX = {1: (117489, 138438, 13975, 34925), 2: (104597, 132201, 25675, 53279),
              4: (104448, 132798, 24759, 53109), 7: (117579, 136230, 16907, 35559),
              9: (110013, 140363, 12277, 42626), 10: (110013, 140363, 12277, 42626)}


def yuv_coeffs(colorspace, full):
    """libswscale's fixed point on x86 (PyAV's RGB frames): 8 Y - offset, 8 U - 1024, 8 V - 1024 times
    (Y, V->R, U->B, U->G, V->G), each >> 16 (floored), summed, clamped. -> those and the offset."""
    m = [x * 224 // 255 if full else x for x in SWS_MATRIX.get(colorspace, SWS_MATRIX[2])]   # C's /
    r = lambda x: (x * 8192 + (1 << 15)) >> 16   # noqa: E731 -- its roundToInt16(x * 2^13)
    return (r(1 << 16 if full else (1 << 16) * 255 // 219), r(m[0]), r(m[1]), r(-m[2]), r(-m[3]),
            0 if full else 128)


def crop_planes(planes, box, size, out=None):
    """The worker's half of a crop from YUV 4:2:0 planes (data.decode_frames'): the box's luma and the
    chroma it spans, zero-padded to C = planes_cap(size) so that clips batch (yuv_to_rgb, on the
    device, converts and resizes) -> luma (1, T, C, C), chroma (2, T, C / 2 + 1, C / 2 + 1) uint8
    (into out's pair if given), crop int64 (10,): h, w, y % 2, x % 2, yuv_coeffs(colorspace, full
    range). planes: luma[t], chroma[t][0], chroma[t][1]: frame t's Y, U, V (views or arrays)."""
    (luma, chroma, flags), (y, x, h, w), C, T = planes, box, planes_cap(size), len(planes[0])
    assert max(h, w) <= C, f"a {h}x{w} crop of planes decoded to a short side of at most {C}?"
    a, b = (y + h - 1) // 2 - y // 2 + 1, (x + w - 1) // 2 - x // 2 + 1   # chroma rows, columns
    out, uv = out or (np.empty((1, T, C, C), np.uint8), np.empty((2, T, C // 2 + 1, C // 2 + 1),
                                                                 np.uint8))
    out[:, :, h:], out[:, :, :h, w:], uv[:, :, a:], uv[:, :, :a, b:] = 0, 0, 0, 0   # the padding
    for t in range(T):   # frame by frame: only the box is copied
        out[0, t, :h, :w] = luma[t][y:y + h, x:x + w]
        for d in (0, 1):
            uv[d, t, :a, :b] = chroma[t][d][y // 2:y // 2 + a, x // 2:x // 2 + b]
    return out, uv, np.array([h, w, y % 2, x % 2, *yuv_coeffs(*flags)])


def yuv_to_rgb(luma, chroma, crop, size):
    """crop_planes' device half, batched: luma (B, 1, T, C, C), chroma, crop (B, 10); size (the
    batch's "size", a (B, 0, size) shape) -> uint8 RGB (B, 3, T, size, size): PyAV's RGB integers (one
    chroma sample per 2 x 2 pixels, yuv_coeffs) resized as crop_and_flip does (within 1 level
    in float32; TF32 matmuls on a GPU may add 1)."""
    B, _, T, C, _ = luma.shape
    at, (_, _, oy, ox, *k) = torch.arange(C, device=luma.device), crop.T.int().view(10, B, 1, 1, 1, 1)
    rows, cols = (at + oy.view(B, 1)) // 2, (at + ox.view(B, 1)) // 2   # each pixel's chroma
    uv = chroma.gather(3, rows[:, None, None, :, None].expand(-1, 2, T, -1, chroma.shape[-1]))
    uv = uv.gather(4, cols[:, None, None, None].expand(-1, 2, T, C, -1)).int() * 8 - 1024
    (u, v), y = uv.split(1, 1), (luma.int() * 8 - k[5]) * k[0] >> 16
    rgb = torch.cat([y + (v * k[1] >> 16), y + (u * k[3] >> 16) + (v * k[4] >> 16),
                     y + (u * k[2] >> 16)], 1).clamp(0, 255).float()
    wy, wx = (aa_weights(crop[:, d], crop[:, d] * 0 + size, size, C)[:, None, None] for d in (0, 1))
    return (wy @ rgb @ wx.transpose(-1, -2)).round().clamp(0, 255).to(torch.uint8)


def crop_and_flip(frames, size, rng, flip, scales=(1, 0.875, 0.75, 0.66), crop="multiscale",
                  crop_scale=(0.25, 1.0), crop_ratio=(3 / 4, 4 / 3), defer_flip=False, out=None):
    """Training augmentation: a crop resized to size x size (frames uint8 (T, H, W, 3); YUV planes:
    crop_planes, into out), then a horizontal flip (p=0.5). crop: "multiscale" (MultiScaleCrop with
    `scales`, Table 18), "rrc" (random_resized_crop_box with crop_scale / crop_ratio, VideoMAE finetuning) or
    "none" (the whole frame; no draw). defer_flip: -> (the crop unflipped, whether to flip it)."""
    H, W = frames[0][0].shape[:2] if isinstance(frames, tuple) else frames.shape[1:3]
    if crop == "rrc":
        y, x, h, w = random_resized_crop_box(H, W, rng, crop_scale, crop_ratio)
    elif crop == "none":
        y, x, h, w = 0, 0, H, W
    else:
        y, x, h, w = multiscale_crop_box(H, W, rng, scales)
    out = (crop_planes(frames, (y, x, h, w), size, out) if isinstance(frames, tuple)
           else resize(frames[:, y:y + h, x:x + w], size))
    flipped = flip and rng.random() < 0.5
    return (out, flipped) if defer_flip else np.ascontiguousarray(out[:, :, ::-1] if flipped else out)


# ----------------------------------------------------------------------------- RandAugment

class RandAug(NamedTuple):
    """timm's RandAugment settings (`rand-m{m}-n{n}-mstd{mstd}-inc1`, p 0.5 per op): Table 17's."""
    n: int = 2
    m: float = 9.0
    mstd: float = 0.5
    prob: float = 0.5


# timm's _RAND_INCREASING_TRANSFORMS ("inc1"): the ops whose strength grows with the magnitude.
# Cutout is not among them (timm and VideoMAE do it as random erasing, random_erase below).
RANDAUG_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
               "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
               "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
               "TranslateYRel")
# timm's _FILL (the reference passes no img_mean): grey outside the image
RANDAUG_FILL = (128, 128, 128)


def randaug_level_args(name, magnitude, sign=1):
    """timm's level -> op argument (auto_augment.LEVEL_TO_ARG) for magnitude in [0, 10] (timm's
    _LEVEL_DENOM = 10: m=9 is 9/10 of each range). sign (+1/-1) is timm's _randomly_negate of signed
    ops. -> the op's arguments (a tuple, empty for the parameter-free ops)."""
    lvl = magnitude / 10.0
    if name in ("AutoContrast", "Equalize", "Invert"):
        return ()
    if name == "Rotate":
        return (sign * lvl * 30.0,)                     # degrees, +-30 at m=10
    if name == "PosterizeIncreasing":
        return (4 - int(lvl * 4),)                      # bits kept: 4 down to 0
    if name == "SolarizeIncreasing":
        return (256 - min(256, int(lvl * 256)),)        # threshold: 256 (none) down to 0
    if name == "SolarizeAdd":
        return (min(128, int(lvl * 110)),)              # added below 128: 0 .. 110
    if name.endswith("Increasing"):                     # Color / Contrast / Brightness / Sharpness
        return (max(0.1, 1.0 + sign * lvl * 0.9),)      # enhance factor 1 -+ 0.9
    if name in ("ShearX", "ShearY"):
        return (sign * lvl * 0.3,)                      # +-0.3 at m=10
    if name in ("TranslateXRel", "TranslateYRel"):
        return (sign * lvl * 0.45,)                     # fraction of the side, +-0.45 at m=10
    raise ValueError(f"unknown RandAugment op {name}")


def randaug_draw(cfg, rng):
    """One clip's RandAugment draw (timm's RandAugment + AugmentOp): n ops with replacement, each
    applied with prob p, at magnitude m + N(0, mstd) clipped to [0, 10] (mstd > 100: uniform in
    [0, m], as timm), with a random sign. -> [(name, args), ...] of the ops that apply."""
    chosen = []
    for k in rng.integers(len(RANDAUG_OPS), size=cfg.n):
        if rng.random() > cfg.prob:
            continue
        m = rng.uniform(0, cfg.m) if cfg.mstd > 100 else cfg.m + cfg.mstd * rng.standard_normal()
        sign = 1 if rng.random() < 0.5 else -1
        name = RANDAUG_OPS[k]
        chosen.append((name, randaug_level_args(name, float(np.clip(m, 0, 10)), sign)))
    return chosen


def random_erase(video, prob, rng, mode="pixel", count=1, area=(0.02, 1 / 3),
                 aspect=(0.3, 1 / 0.3)):
    """Random erasing after normalisation (VideoMAE finetuning: --reprob 0.25 --remode pixel
    --recount 1; VideoMAE's random_erasing.py, cube=True). Per clip, with prob `prob`: `count`
    boxes, each of area U(area) / count of a frame and aspect h / w log-uniform in `aspect` (timm's
    RandomErasing defaults; 100 tries for a box inside the frame), at the same place in every frame,
    filled with N(0, 1) per pixel and frame ("pixel"), per channel and frame ("rand") or 0 ("const").
    Draws from the numpy rng (the noise too, seeded by it). video (B, C, T, H, W) -> new tensor."""
    if prob <= 0:
        return video
    B, C, T, H, W = video.shape
    gen = torch.Generator(device=video.device)
    gen.manual_seed(int(rng.integers(2 ** 62)))
    video = video.clone()
    for b in range(B):
        if rng.random() > prob:
            continue
        for _ in range(count):
            for _ in range(100):
                target = rng.uniform(*area) * H * W / count
                r = np.exp(rng.uniform(*np.log(aspect)))
                h, w = int(round(np.sqrt(target * r))), int(round(np.sqrt(target / r)))
                if h < H and w < W:
                    y, x = int(rng.integers(H - h + 1)), int(rng.integers(W - w + 1))
                    shape = (C, T, h, w) if mode == "pixel" else (C, T, 1, 1)
                    fill = torch.randn(shape, generator=gen, device=video.device, dtype=video.dtype)
                    video[b, :, :, y:y + h, x:x + w] = fill if mode != "const" else 0.0
                    break
    return video


def mix_batch(video, target, rng, mixup, cutmix, switch_prob=0.5):
    """Mixup (alpha 0.8) or CutMix (alpha 1.0), one lam per batch, each sample mixed with the batch
    reversed (timm's batch mode); the CutMix box is the same in every frame. video (B, C, T, H, W),
    target (B, K) soft."""
    if mixup <= 0 and cutmix <= 0:
        return video, target
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < switch_prob)
    lam = rng.beta(cutmix, cutmix) if use_cutmix else rng.beta(mixup, mixup)
    if use_cutmix:
        H, W = video.shape[-2:]
        ch, cw = int(H * np.sqrt(1 - lam)), int(W * np.sqrt(1 - lam))
        cy, cx = rng.integers(H), rng.integers(W)
        y0, y1, x0, x1 = (max(cy - ch // 2, 0), min(cy + ch // 2, H), max(cx - cw // 2, 0),
                          min(cx + cw // 2, W))
        video = video.clone()
        video[..., y0:y1, x0:x1] = video.flip(0)[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)   # the area actually pasted
    else:
        video = lam * video + (1 - lam) * video.flip(0)
    return video, lam * target + (1 - lam) * target.flip(0)


# ----------------------------------------------------------------------------- device RandAugment
# The same RandAugment split in two, for a loader worker that should not spend ~25 ms of CPU per
# clip on it (docs/performance.md, "The finetuning loader"): the worker draws (randaug_sample:
# randaug_draw, as above, from the sample's rng) and ships the draw as two small tensors
# (randaug_params); the training step applies every clip's ops to the batch on whatever device it
# runs on (randaugment_batch), one implementation for every device. Each op follows PIL's
# arithmetic (tools/benchkit.randaug_frame's, pinned to timm's): tests/test_augment_device.py.

AFFINE_BLOCK = 1 << 17   # samples per block of _affine on the CPU
AFFINE_OPS = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
NO_OP = -1   # an op slot that did not apply


def _pil_rotation(angle, width, height):
    """Image.rotate's inverse matrix (about the frame's centre, expand off), in its arithmetic:
    the angle taken mod 360 first, cos / sin rounded to 15 decimals, the centre folded in last."""
    angle = angle % 360.0
    if angle == 0:   # rotate copies the frame
        return (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    rad = -math.radians(angle)
    a, b = round(math.cos(rad), 15), round(math.sin(rad), 15)
    d, e = round(-math.sin(rad), 15), round(math.cos(rad), 15)
    cx, cy = width / 2, height / 2
    c, f = a * -cx + b * -cy + 0.0, d * -cx + e * -cy + 0.0
    return (a, b, c + cx, d, e, f + cy)


def randaug_params(ops, n, height, width):
    """One clip's randaug_draw as tensors for the batch (the worker's half of randaugment_batch).
    ops: randaug_draw's [(name, args)]; n: its slots (RandAug.n); height x width: the frames'. ->
    {"randaug_op": int64 (n,), the op's index in RANDAUG_OPS or NO_OP, "randaug_arg": float64 (n, 6),
    the op's argument in [0], or a geometric op's inverse matrix (output pixel -> source point)}."""
    op, arg = torch.full((n,), NO_OP, dtype=torch.int64), torch.zeros(n, 6, dtype=torch.float64)
    for j, (name, args) in enumerate(ops):
        op[j] = RANDAUG_OPS.index(name)
        v = float(args[0]) if args else 0.0
        affine = {"ShearX": (1, v, 0, 0, 1, 0), "ShearY": (1, 0, 0, v, 1, 0),
                  "TranslateXRel": (1, 0, v * width, 0, 1, 0),
                  "TranslateYRel": (1, 0, 0, 0, 1, v * height)}
        arg[j] = torch.tensor(_pil_rotation(v, width, height) if name == "Rotate" else
                              affine.get(name, (v, 0, 0, 0, 0, 0)), dtype=torch.float64)
    return {"randaug_op": op, "randaug_arg": arg}


def randaug_sample(cfg, frames, rng):
    """finetune.py's augment (the dataset's augment(frames, rng) -> (frames, entries)) when the
    device applies RandAugment: the clip's draw (randaug_draw: the ops timm would apply,
    from the same rng), shipped beside the untouched frames as randaug_params' tensors."""
    return frames, randaug_params(randaug_draw(cfg, rng), cfg.n, *frames.shape[1:3])


def _f64(device):
    """PIL's double precision where the device has it (MPS has no float64: float32 there)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _lut(x, lut):
    """lut[x] per clip (lut (n, 256)) or clip, channel and frame (n, C, T, 256); x uint8 (n, C, T, H, W)."""
    n, C, T, H, W = x.shape
    lut = lut.clamp(0, 255).to(torch.uint8)
    lut = lut[:, None].expand(n, C * T, 256) if lut.dim() == 2 else lut.reshape(n, C * T, 256)
    return torch.gather(lut, 2, x.reshape(n, C * T, H * W).long()).view(x.shape)


def _histograms(x):
    """-> int64 (n, C, T, 256): each frame's histogram per channel (PIL's image.histogram())."""
    n, C, T, H, W = x.shape
    idx = x.reshape(n * C * T, H * W).long()
    h = torch.zeros(n * C * T, 256, dtype=torch.int64, device=x.device)
    h.scatter_add_(1, idx, torch.ones((), dtype=torch.int64, device=x.device).expand_as(idx))
    return h.view(n, C, T, 256)


def _autocontrast(x, a):
    """ImageOps.autocontrast (cutoff 0) per frame and channel: [lo, hi] -> [0, 255], truncated."""
    h, v = _histograms(x), torch.arange(256, device=x.device)
    lo = torch.where(h > 0, v, 256).amin(-1, keepdim=True)
    hi = torch.where(h > 0, v, -1).amax(-1, keepdim=True)
    # 255 / (hi - lo) as a true division (a Python float over a tensor is 255 * reciprocal)
    scale = torch.full_like(lo, 255, dtype=_f64(x.device)) / (hi - lo).clamp_min(1)
    lut = (v.to(scale.dtype) * scale + -lo.to(scale.dtype) * scale).trunc()
    return _lut(x, torch.where(hi <= lo, v, lut.long()))


def _equalize(x, a):
    """ImageOps.equalize per frame and channel: lut[i] = (step // 2 + #pixels below i) // step,
    step = (#pixels - #pixels at the top value) // 255; identity for one value or step 0."""
    h, v = _histograms(x), torch.arange(256, device=x.device)
    top = torch.where(h > 0, v, -1).amax(-1, keepdim=True)
    step = (h.sum(-1, keepdim=True) - h.gather(-1, top)) // 255
    lut = (step // 2 + h.cumsum(-1) - h) // step.clamp_min(1)
    keep = ((h > 0).sum(-1, keepdim=True) <= 1) | (step == 0)
    return _lut(x, torch.where(keep, v, lut))


def _point(fn):
    """A per-clip LUT op: fn(v (1, 256) int64, arg (n, 1) float64) -> (n, 256)."""
    return lambda x, a: _lut(x, fn(torch.arange(256, device=x.device)[None], a[:, :1]))


def _gray(x):
    """PIL's RGB -> L (ITU-R 601-2 luma in 16-bit fixed point), int32 (n, 1, T, H, W)."""
    x = x.int()
    return (x[:, :1] * 19595 + x[:, 1:2] * 38470 + x[:, 2:] * 7471 + 0x8000) >> 16


def _smooth(x):
    """ImageFilter.SMOOTH ((1 1 1 / 1 5 1 / 1 1 1) / 13, rounded; the border kept), in integers:
    PIL's float32 sum is never near a rounding edge (a sum / 13 is at least 1 / 26 from one)."""
    (H, W), f = x.shape[-2:], x.short()
    s = 4 * f[..., 1:-1, 1:-1]
    for dy in range(3):
        for dx in range(3):
            s = s + f[..., dy:H - 2 + dy, dx:W - 2 + dx]
    out = x.clone()
    out[..., 1:-1, 1:-1] = (2 * s + 13) // 26
    return out


def _enhance(degenerate):
    """An ImageEnhance op: Image.blend(degenerate, frame, factor) in PIL's float32 arithmetic,
    clipped and truncated. degenerate(x) -> float (broadcasting to x)."""
    def op(x, a):
        deg, f = degenerate(x).float(), a[:, 0].float().view(-1, 1, 1, 1, 1)
        return (deg + f * (x.float() - deg)).clamp(0, 255).trunc().to(torch.uint8)
    return op


def _contrast_mean(x):
    """ImageEnhance.Contrast's grey: int(mean of the frame's L + 0.5), exactly."""
    (H, W), s = x.shape[-2:], _gray(x).long().sum((-2, -1), keepdim=True)
    return (2 * s + H * W) // (2 * H * W)


def _cubic(v1, v2, v3, v4, d):
    """PIL's bicubic (a = -1) through four samples at offset d in [0, 1), in its Horner form and
    order of operations (v3 - v1 == -v1 + v3 exactly): flat samples give their value exactly."""
    p3, p4 = 2 * (v1 - v2) + v3 - v4, v2 - v1 - v3 + v4
    return v2 + d * ((v3 - v1) + d * (p3 + d * p4))


def _cubic_int(v1, v2, v3, v4, d):
    """_cubic of integer samples: the coefficients exact in int16, the Horner steps in d's dtype."""
    v1, v2, v3, v4 = (v.short() for v in (v1, v2, v3, v4))
    p3, p4 = (2 * (v1 - v2) + v3 - v4).to(d.dtype), (v2 - v1 - v3 + v4).to(d.dtype)
    return v2.to(d.dtype) + d * ((v3 - v1).to(d.dtype) + d * (p3 + d * p4))


def _affine(x, a, fill=RANDAUG_FILL):
    """Image.transform(AFFINE, BICUBIC, fillcolor): output pixel centre (x + .5, y + .5) -> source
    point by the clip's matrix a (n, 6) in float64 as PIL; a point outside the frame takes the
    fill, inside the a = -1 bicubic of its 4 x 4 neighbours (clamped to the border), truncated."""
    n, C, T, H, W = x.shape
    dev = x.device
    xs = torch.arange(W, device=dev, dtype=_f64(dev)) + 0.5
    ys = (torch.arange(H, device=dev, dtype=_f64(dev)) + 0.5)[:, None]
    a = a.to(xs.dtype)[:, :, None, None]   # (n, 6, 1, 1)
    u = a[:, 0] * xs + a[:, 1] * ys + a[:, 2]   # (n, H, W)
    v = a[:, 3] * xs + a[:, 4] * ys + a[:, 5]
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
    u, v = u - 0.5, v - 0.5
    u0, v0 = u.floor(), v.floor()
    du, dv = (u - u0)[..., None], (v - v0)[..., None]   # (n, H, W, 1)
    u0, v0 = u0.long(), v0.long()
    # channels last: each tap reads a pixel's C x T samples as one row
    src = x.permute(0, 3, 4, 1, 2).reshape(n * H * W, C * T)
    base = torch.arange(n, device=dev).view(n, 1, 1) * (H * W)
    out = torch.empty(n, H, W, C * T, dtype=torch.uint8, device=dev)
    # output rows in blocks: on the CPU a block's float64 temporaries stay in cache
    step = H if dev.type != "cpu" else max(1, AFFINE_BLOCK // (n * W * C * T))
    for r in range(0, H, step):
        b = slice(r, r + step)
        rows = []
        for j in range(4):
            yy = base + (v0[:, b] + j - 1).clamp(0, H - 1) * W
            taps = [src[(yy + (u0[:, b] + i - 1).clamp(0, W - 1)).view(-1)].view(n, -1, W, C * T)
                    for i in range(4)]
            rows.append(_cubic_int(*taps, du[:, b]))
        out[:, b] = _cubic(*rows, dv[:, b]).clamp(0, 255).trunc()
    out = out.view(n, H, W, C, T).permute(0, 3, 4, 1, 2)
    grey = torch.tensor(fill, device=dev, dtype=torch.uint8).view(1, 3, 1, 1, 1)
    return torch.where(inside[:, None, None], out, grey).contiguous()


# name -> op(x uint8 (n, C, T, H, W), arg float64 (n, 6) on x's device) -> uint8
DEVICE_OPS = {
    "AutoContrast": _autocontrast,
    "Equalize": _equalize,
    "Invert": _point(lambda v, a: 255 - v.expand(len(a), 256)),
    "PosterizeIncreasing": _point(lambda v, a: v // 2 ** (8 - a.clamp(0, 8)).long()
                                  * 2 ** (8 - a.clamp(0, 8)).long()),
    "SolarizeIncreasing": _point(lambda v, a: torch.where(v < a, v, 255 - v)),
    "SolarizeAdd": _point(lambda v, a: torch.where(v < 128, (v + a.long()).clamp(max=255), v)),
    "ColorIncreasing": _enhance(_gray),
    "ContrastIncreasing": _enhance(_contrast_mean),
    "BrightnessIncreasing": _enhance(lambda x: torch.zeros((), device=x.device)),
    "SharpnessIncreasing": _enhance(_smooth),
    **{name: _affine for name in AFFINE_OPS},
}


def randaugment_batch(video, op, arg):
    """The training step's half of RandAugment: each clip's ops (randaug_params', stacked by the
    collate) applied in slot order to all its frames, on video's device.

    video: uint8 (B, C, T, H, W) on any device; op int64 (B, n) and arg float64 (B, n, 6) on the
    CPU, as the loader delivers them: the clips are grouped by op from these host copies, so the
    step reads nothing back from the device (no host sync). -> uint8 (B, C, T, H, W): video if no op."""
    if op.device.type != "cpu":
        raise ValueError("randaugment_batch groups the clips on the host: pass the loader's CPU "
                         f"op tensor, not one on {op.device} (reading it back would sync)")
    args = arg.to(video.device, _f64(video.device), non_blocking=True)
    out = video
    for j in range(op.shape[1]):
        for k in sorted(set(op[:, j].tolist()) - {NO_OP}):
            rows = torch.nonzero(op[:, j] == k)[:, 0]
            fn = DEVICE_OPS[RANDAUG_OPS[k]]
            if len(rows) == len(video):
                out = fn(out, args[:, j])
                continue
            rows = rows.to(video.device, non_blocking=True)
            some = fn(out.index_select(0, rows), args.index_select(0, rows)[:, j])
            out = out.index_copy(0, rows, some)
    return out
