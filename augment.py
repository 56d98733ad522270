"""Finetuning's clip augmentation (paper Table 17, "follow VideoMAE"; SPEC 6): RandAugment in
timm's convention (rand-m9-mstd0.5-inc1, n 2), the same ops and magnitudes on every frame of a clip;
random erasing (p 0.25, one box per clip, the same in every frame); mixup (alpha 0.8) and CutMix
(alpha 1.0) per batch. Pure functions of an explicit random generator, so that finetune.py's
--resume replays them; tests/test_finetune.py pins each against timm's definitions.

    aug = RandAug(n=2, m=9, mstd=0.5)
    frames = randaugment_clip(aug, frames, rng)          # uint8 (T, H, W, 3), one draw per clip
    video = random_erase(video, 0.25, rng)               # (B, C, T, H, W), normalised
    video, target = mix_batch(video, target, rng, 0.8, 1.0)

The crop boxes of the training clips are here too: pretraining's MultiScaleCrop (Table 18) and
finetuning's random resized crop; data.crop_and_flip applies them.
"""
from typing import NamedTuple

import numpy as np
import torch


# ----------------------------------------------------------------------------- crop boxes

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
    whole clip. The SMILE reference draws scale (0.25, 1.0), VideoMAE (0.08, 1.0).
    -> (y, x, h, w)."""
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


# ----------------------------------------------------------------------------- RandAugment

class RandAug(NamedTuple):
    """timm's RandAugment settings (`rand-m{m}-n{n}-mstd{mstd}-inc1`, p 0.5 per op): Table 17's
    (9, 0.5)."""
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
    _LEVEL_DENOM = 10: m=9 is 9/10 of each range). sign (+1/-1) is timm's _randomly_negate
    of signed ops.
    -> the op's arguments (a tuple, empty for the parameter-free ops)."""
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


def randaug_frame(img, name, args):
    """One RandAugment op on one PIL RGB frame, as timm's NAME_TO_OP does it (geometric ops bicubic,
    as the reference's --train_interpolation, grey fill)."""
    from PIL import Image, ImageEnhance, ImageOps
    geo = dict(resample=Image.Resampling.BICUBIC, fillcolor=RANDAUG_FILL)
    affine = {"ShearX": lambda v: (1, v, 0, 0, 1, 0), "ShearY": lambda v: (1, 0, 0, v, 1, 0),
              "TranslateXRel": lambda v: (1, 0, v * img.size[0], 0, 1, 0),
              "TranslateYRel": lambda v: (1, 0, 0, 0, 1, v * img.size[1])}
    enhance = {"ColorIncreasing": ImageEnhance.Color, "ContrastIncreasing": ImageEnhance.Contrast,
               "BrightnessIncreasing": ImageEnhance.Brightness,
               "SharpnessIncreasing": ImageEnhance.Sharpness}
    if name in affine:
        return img.transform(img.size, Image.Transform.AFFINE, affine[name](*args), **geo)
    if name in enhance:
        return enhance[name](img).enhance(*args)
    if name == "Rotate":
        return img.rotate(*args, **geo)
    if name == "SolarizeAdd":                               # pixels below 128 brightened by args[0]
        lut = [min(255, i + args[0]) if i < 128 else i for i in range(256)]
        return img.point(lut * 3)
    if name == "PosterizeIncreasing":
        # keep args[0] high bits: ImageOps.posterize's LUT, also for 0 bits (m=10: black)
        lut = [i & ~(2 ** (8 - args[0]) - 1) for i in range(256)]
        return img.point(lut * 3)
    ops = {"AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize,
           "Invert": ImageOps.invert, "SolarizeIncreasing": ImageOps.solarize}
    return ops[name](img, *args)


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
        chosen.append((RANDAUG_OPS[k],
                       randaug_level_args(RANDAUG_OPS[k], float(np.clip(m, 0, 10)), sign)))
    return chosen


def randaugment_clip(cfg, frames, rng):
    """RandAugment in timm's convention (Table 17: RandAug (9, 0.5); VideoMAE's video RandAugment):
    ONE draw of ops, magnitudes and signs (from the sample's numpy rng; Python's and torch's global
    RNGs untouched) applied to every frame, per frame with PIL as timm. cfg: RandAug. Runs after the
    crop (the reference's before it, on the decoded frames; translations are relative to the side
    either way). uint8 (T, H, W, 3) -> uint8 (T, H, W, 3)."""
    from PIL import Image
    ops = randaug_draw(cfg, rng)
    if not ops:
        return frames
    out = []
    for frame in frames:
        img = Image.fromarray(np.ascontiguousarray(frame))
        for name, args in ops:
            img = randaug_frame(img, name, args)
        out.append(np.asarray(img))
    return np.stack(out)


def random_erase(video, prob, rng, mode="pixel", count=1, area=(0.02, 1 / 3),
                 aspect=(0.3, 1 / 0.3)):
    """Random erasing after normalisation (VideoMAE finetuning: --reprob 0.25 --remode pixel
    --recount 1; VideoMAE's random_erasing.py, cube=True). Per clip, with prob `prob`: `count`
    boxes, each of area U(area) / count of a frame and aspect h / w log-uniform in `aspect` (timm's
    RandomErasing defaults; 100 tries for a box inside the frame), at the same place in every frame
    (one box per clip, not per frame), filled with N(0, 1) per pixel and frame ("pixel"), per
    channel and frame ("rand") or 0 ("const"). Draws from the numpy rng (the noise from a generator
    seeded by it). video (B, C, T, H, W) -> new tensor."""
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
