"""The measuring kit of tools/bench.py and its sections (tools/bench_gpu.py, tools/bench_data.py):
timing races, the one results table, hand-counted FLOPs and a matmul peak. A library of the
toolbox: run nothing here, run `python -m tools.bench`."""
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch

import augment
import data
import masking
import motion
from model import MODEL_SIZES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository
ROWS = []


def race(fns, rounds):
    """Run the callables alternately `rounds` times after one warm-up call each -> {name: best
    seconds}."""
    for f in fns.values():
        f()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, f in fns.items():
            t = time.perf_counter()
            f()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def row(what, ours, base, ratio, goal="-", met=None):
    """ours, base: strings with units; ratio: how many times better ours is (or a share
    of a peak)."""
    ROWS.append((what, ours, base, ratio, goal, "-" if met is None else "yes" if met else "NO"))


def print_table():
    head = ("what", "ours", "baseline", "ratio", "goal", "met?")
    widths = [max(len(r[i]) for r in ROWS + [head]) for i in range(6)]
    for r in [head, tuple("-" * w for w in widths)] + ROWS:
        print(" | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths))))


def machine():
    cpu = platform.processor() or "cpu"
    if os.path.exists("/proc/cpuinfo"):
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                    if ln.startswith("model name")), cpu)
    gpu = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"
    return (f"{cpu} | {os.cpu_count()} cores | torch {torch.__version__} | "
            f"{torch.get_num_threads()} threads | {gpu} | load average {os.getloadavg()[0]:.2f}")


def device_race(fns, steps, rounds, device):
    """race() for device work: per round each callable runs `steps` times back to back, timed from
    its first launch to its last kernel's end (CUDA events; perf_counter on a CPU) -> {name: best s
    per call}. Two warm-up calls each first (compilation, cuDNN autotuning, the
    allocator's pools)."""
    for f in fns.values():
        f()
        f()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, f in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
                start, end = (torch.cuda.Event(enable_timing=True),
                              torch.cuda.Event(enable_timing=True))
                start.record()
                for _ in range(steps):
                    f()
                end.record()
                end.synchronize()
                dt = start.elapsed_time(end) / 1000
            else:
                t = time.perf_counter()
                for _ in range(steps):
                    f()
                dt = time.perf_counter() - t
            best[name] = min(best[name], dt / steps)
    return best


def step_flops(size, img, out_dim=768, ratio=0.8):
    """Matmul FLOPs of one training step per clip at 16 frames, counted by hand (2 per
    multiply-add). Forward: patch embedding of the visible tubelets; per block qkv + proj + MLP
    (12 D^2 per token) and attention (q k^T and attn v: 2 N^2 D); encoder_to_decoder; decoder
    blocks over all N tokens; the head on the masked ones. Backward = 2x forward, but 1x for the
    patch embedding (pixels need no grad)."""
    c, hw = MODEL_SIZES[size], (img // 16) ** 2
    n, nm = 8 * hw, 8 * int(ratio * hw)
    D, Dd, nv = c["embed_dim"], c["decoder_embed_dim"], n - nm
    blocks = lambda n, d, depth: depth * (12 * n * d * d + 2 * n * n * d)   # noqa: E731
    macs = (blocks(nv, D, c["depth"]) + nv * D * Dd + blocks(n, Dd, c["decoder_depth"])
            + nm * Dd * out_dim)
    return 2 * (3 * macs + 2 * nv * 3 * 2 * 16 * 16 * D)


def matmul(n, dtype, device="cpu"):
    """An n x n x n torch.mm in dtype (its best time gives this machine's matmul peak)
    -> (callable, FLOPs)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype),
            torch.randn(n, n, device=device, dtype=dtype))
    return (lambda: (a @ b, torch.cuda.synchronize() if a.is_cuda else None)), 2 * n ** 3


def flop_s(x):
    """FLOP/s with a unit that suits the size: TFLOP/s on a GPU, GFLOP/s on a CPU."""
    return f"{x / 1e12:.1f} TFLOP/s" if x >= 1e12 else f"{x / 1e9:.1f} GFLOP/s"


def small_clip_config():
    """A small open_clip config (ViT of width 192, 4 blocks, 64 px) written to a temporary
    JSON file."""
    path = os.path.join(tempfile.mkdtemp(), "bench_small_clip.json")
    with open(path, "w") as f:
        json.dump({"embed_dim": 64,
                   "text_cfg": dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
                   "vision_cfg": dict(image_size=64, patch_size=16, width=192, layers=4,
                                      head_width=64)}, f)
    return path


# ------------------------------------------------- the decoders before (bench's decode baselines)

def decode_through(path, indices):
    """The decoder before short GOPs (data.decode_frames until issue 26), the baseline: seek to the
    key frame before the first index, then decode every frame up to the last one."""
    import av
    got, want = {}, sorted(set(int(i) for i in indices))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        fps, tb, start = float(stream.average_rate or 25), stream.time_base, stream.start_time or 0
        if want[0] > 0:
            container.seek(start + int(want[0] / fps / tb), stream=stream, backward=True,
                           any_frame=False)
        for frame in container.decode(stream):
            i = int(round(float((frame.pts - start) * tb) * fps))
            if i in want:
                got[i] = frame.to_ndarray(format="rgb24")
            if i >= want[-1]:
                break
    return np.stack([got[i] for i in indices])


def torchcodec_frames(path, indices):
    """torchcodec's CPU decoder, one FFmpeg thread, as a loader worker would use it."""
    from torchcodec.decoders import VideoDecoder
    decoder = VideoDecoder(str(path), device="cpu", num_ffmpeg_threads=1, seek_mode="approximate",
                           dimension_order="NHWC")
    return decoder.get_frames_at([int(i) for i in indices]).data.numpy()


def demuxed_frames(path, indices):
    """data.decode_frames as it read every file before the reader of prepared videos: FFmpeg's
    demuxer, the wanted GOPs only (data._demuxed_frames), each video its own decoder."""
    from av.video.reformatter import VideoReformatter
    (got, indices), rgb = data._demuxed_frames(path, indices), VideoReformatter()
    return np.stack([rgb.reformat(got[int(i)], format="rgb24").to_ndarray() for i in indices])


class TodaysPath(data.PretrainDataset):
    """The loader before issue 26, bench's baseline (frozen, as the reference student is): each
    worker decodes RGB frames, crops, resizes and flips them, pastes the objects (motion.overlay),
    reads the object tokens off their pixel footprints and ships the finished clips, contiguous. Its
    own work is frozen; the sampling it shares (make_sample's draws, mask) is data.PretrainDataset's,
    so the same seed gives the same masks and data.infuse's clips within 2 / 255 (tests/test_data.py)."""

    def background(self, index, rng):   # RGB frames, not YUV planes
        if self.source != "video":
            return super().background(index, rng)
        return demuxed_frames(self.items[index][0], lambda n: data.clip_indices(
            n, self.num_frames, self.stride, rng))

    __getitems__ = None   # sample by sample, collated as before

    def make_sample(self, index, rng, buf=None):   # contiguous (S, C, T, H, W): one copy, as before
        sample = super().make_sample(index, rng)
        return {**sample, "video": sample["video"].contiguous()}

    def infuse(self, clip, with_objects, rng):
        clip, flipped = clip
        clip = np.ascontiguousarray(clip[:, :, ::-1]) if flipped else clip
        obj = None
        if with_objects:
            clip, footprints = motion.overlay(clip, self.objects, rng, **self.overlay_kw)
            obj = masking.object_tokens(footprints, self.tubelet, self.patch)
        return {"video": torch.from_numpy(np.ascontiguousarray(clip)),   # (T, H, W, C)
                "mask": torch.from_numpy(self.mask(obj, rng).reshape(-1))}


# ------------------------------------------- finetuning's RandAugment before issue 26: PIL, in the worker

def randaug_frame(img, name, args):
    """One RandAugment op on one PIL RGB frame, as timm's NAME_TO_OP does it (geometric ops bicubic,
    as the reference's --train_interpolation, grey fill)."""
    from PIL import Image, ImageEnhance, ImageOps
    geo = dict(resample=Image.Resampling.BICUBIC, fillcolor=augment.RANDAUG_FILL)
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


def randaugment_clip(cfg, frames, rng):
    """RandAugment in timm's convention (Table 17: RandAug (9, 0.5); VideoMAE's video RandAugment):
    ONE draw of ops, magnitudes and signs (from the sample's numpy rng; Python's and torch's global
    RNGs untouched) applied to every frame, per frame with PIL as timm. cfg: RandAug. After the crop
    (the reference's before it; translations are relative to the side): uint8 (T, H, W, 3) -> same."""
    from PIL import Image
    ops = augment.randaug_draw(cfg, rng)
    if not ops:
        return frames
    out = []
    for frame in frames:
        img = Image.fromarray(np.ascontiguousarray(frame))
        for name, args in ops:
            img = randaug_frame(img, name, args)
        out.append(np.asarray(img))
    return np.stack(out)
