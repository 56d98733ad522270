"""Section data of tools/bench.py: decoding before and after `python -m tools.prepare encode`,
overlay and masks on one core, uint8 against float32 clips, and loaders against the model's
training speed. Run through `python -m tools.bench --only data`."""
import math
import os
import subprocess
import sys
import tempfile
import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from tools.benchkit import (ROOT, TodaysPath, decode_through, demuxed_frames, race,
                            randaugment_clip, row, step_flops, torchcodec_frames)

# ----------------------------------------------------------------------------- data

def prepare(*args):
    """`python -m tools.prepare ARGS --workers 1` as a user runs it (a tool imports no other tool)."""
    subprocess.run([sys.executable, "-m", "tools.prepare", *map(str, args), "--workers", "1"],
                   cwd=ROOT, check=True, capture_output=True)


def write_mp4(path, num_frames, height=360, width=640, fps=25):
    """A stand-in for a downloaded video: moving colour waves plus film grain, libx264 defaults
    (long GOP)."""
    import av
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    grain = np.random.default_rng(0).normal(0, 8, (height, width, 3)).astype(np.float32)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            f = np.stack([np.sin(xx / 23 + i / 6) * np.cos(yy / 31 - i / 9),
                          np.sin((xx + yy) / 41 + i / 11),
                          np.cos(np.hypot(xx - width / 2 - 80 * np.sin(i / 10),
                                          yy - height / 2) / 19)], -1)
            f = (128 + 70 * f + np.roll(grain, 2 * i, axis=1)).clip(0, 255).astype(np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())


class FloatClips(torch.utils.data.Dataset):
    """The loader before clips stayed uint8: each worker finishes its clips (data.infuse) and
    normalises them to float32 (data.normalize), both now run on the device, and 4x the bytes go
    through shared memory, pinning and the copy."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        import data
        s = self.dataset[index]
        return {"video": data.normalize(data.infuse(s)), "mask": s["mask"], "bad": s["bad"]}


def loader_rate(dataset, workers, batches):
    """Clips/s a DataLoader delivers once running (the first batch, with worker start-up, not
    counted). workers=0: in this process on one thread, i.e. what one loader worker delivers."""
    import data
    threads = torch.get_num_threads()
    if not workers:
        torch.set_num_threads(1)   # as data.worker_init does in a worker
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=workers,
                                         collate_fn=data.collate, worker_init_fn=data.worker_init,
                                         prefetch_factor=4 if workers else None)
    it, clips = iter(loader), 0
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        clips += len(next(it)["mask"])
    rate = clips / (time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return rate


def bench_data(a, model_rate):
    """Section data: decode before/after prepare, overlay and masks on one core, loaders."""
    import augment
    import data
    import masking
    import motion
    tmp = tempfile.mkdtemp()
    os.makedirs(os.path.join(tmp, "src"))
    write_mp4(os.path.join(tmp, "src", "clip.mp4"), 64 if a.quick else 150)
    with open(os.path.join(tmp, "src", "train.csv"), "w") as f:
        f.write("clip.mp4 0\n")
    short = 160 if a.quick else 320
    prepare("encode", os.path.join(tmp, "src", "train.csv"), os.path.join(tmp, "prepared"),
            "--short-side", short)
    src, dst = os.path.join(tmp, "src", "clip.mp4"), os.path.join(tmp, "prepared", "clip.mp4")
    # 4 clips: 16 frames at stride 4
    starts = [s * (data.video_info(src)[0] - 61) // 3 for s in range(4)]

    def decode(path):
        return lambda: [data.decode_frames(path, s + 4 * np.arange(16)) for s in starts]
    r = race({"after": decode(dst), "before": decode(src)}, a.rounds)
    row(f"decode 16 frames at stride 4, one thread: `tools/prepare.py encode` (short side {short}) "
        f"vs 640x360 source", f"{250 * r['after']:.1f} ms/clip", f"{250 * r['before']:.1f} ms/clip",
        f"{r['before'] / r['after']:.2f}x")

    threads = torch.get_num_threads()   # one core, as in a loader worker
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    objects = motion.synthetic_objects(16, rng, size=128)
    frames, out = rng.integers(0, 256, (16, 224, 224, 3), dtype=np.uint8), {}

    def paste():
        out["footprints"] = motion.overlay(frames, objects, rng, num_objects=2)[1]

    def mask():
        masking.trajectory_mask(masking.object_tokens(out["footprints"]), 0.8, rng)
    crop = torch.from_numpy(rng.integers(0, 256, (16, 320, 320, 3),
                                         dtype=np.uint8)).permute(0, 3, 1, 2)

    def resize_float():
        # the float round trip augment.resize replaced (uint8 -> float -> interpolate -> uint8)
        x = F.interpolate(crop.float(), size=(224, 224), mode="bilinear", antialias=True,
                          align_corners=False)
        x.round_().clamp_(0, 255).byte()
    img = 64 if a.quick else 224   # the loader rows' larger clips
    # uint8 (3, 16, img, img), as the loader now ships it
    clip = data.to_tensor(frames[:, :img, :img])
    r = race({"overlay": paste, "mask": mask,
              "resize": lambda: augment.resize(crop.permute(0, 2, 3, 1).numpy(), 224),
              "resize_float": resize_float, "normalize": lambda: data.normalize(clip)},
             4 * a.rounds)
    torch.set_num_threads(threads)
    norm = r["normalize"]
    row("overlay of 2 objects on 16x224, one core (motion.overlay)",
        f"{1000 * r['overlay']:.1f} ms/clip", "10 ms budget", f"{0.010 / r['overlay']:.2f}x",
        "<= 10 ms", r["overlay"] <= 0.010)
    row("trajectory mask of 16x224, one core (masking)", f"{1000 * r['mask']:.2f} ms/clip", "-", "-")
    row("crop resize 16x320x320 -> 224, one core: augment.resize (uint8) vs float round trip",
        f"{1000 * r['resize']:.1f} ms/clip", f"{1000 * r['resize_float']:.1f} ms/clip",
        f"{r['resize_float'] / r['resize']:.2f}x")

    # enough batches that every worker delivers several: the rate is the steady one, not
    # the start-up's
    batches = 3 if a.quick else max(12, 4 * a.workers)

    def dataset(source, img):
        return data.PretrainDataset(
            source, items=[(dst, 0)] * 4 * (batches + 2) if source == "video" else None,
            length=4 * (batches + 2), num_frames=16, stride=4, img_size=img, num_sample=2,
            objects=objects, object_size=(64, 160) if img == 64 else (32, 128))
    # the CPU rows: loaders against the CPU step measured in this run (section step)
    for img_, size, source in ((64, "tiny", "black"), (64, "tiny", "video"),
                               (img, "small", "video")):
        if size not in model_rate:
            continue
        clips, goal = (loader_rate(dataset(source, img_), a.workers, batches),
                       2 if size == "tiny" else 1)
        what = "mp4 (prepared)" if source == "video" else "black (the tiny demo's data)"
        row(f"loader {what} 16x{img_}, {a.workers} workers vs {size} model step",
            f"{clips:.1f} clips/s", f"{model_rate[size]:.1f} clips/s",
            f"{clips / model_rate[size]:.2f}x", f">= {goal}x", clips >= goal * model_rate[size])

    # uint8 clips: what the loader ships, and what a worker no longer computes
    video = dataset("video", img)
    C, fp32 = augment.planes_cap(224), 3 * 16 * 224 * 224 * 4   # a YUV crop's luma, chroma slots
    clip_bytes = 16 * (C * C + 2 * (C // 2 + 1) ** 2)
    row("bytes per 16x224 clip through the loader: uint8 YUV crops (now) vs float32 RGB",
        f"{clip_bytes / 1e6:.2f} MB", f"{fp32 / 1e6:.2f} MB", f"{fp32 / clip_bytes:.2f}x")
    r = {"uint8": loader_rate(video, a.workers, batches),
         "float32": loader_rate(FloatClips(video), a.workers, batches),
         "worker": loader_rate(video, 0, 3 if a.quick else 12)}
    row(f"loader mp4 (prepared) 16x{img}, {a.workers} workers: uint8 clips vs float32 normalised "
        f"in the workers", f"{r['uint8']:.1f} clips/s", f"{r['float32']:.1f} clips/s",
        f"{r['uint8'] / r['float32']:.2f}x")
    row(f"data.normalize of a 16x{img} clip, one core (moved to the device) vs a worker's whole "
        f"clip", f"{1000 * norm:.1f} ms/clip", f"{1000 / r['worker']:.1f} ms/clip",
        f"{100 * norm * r['worker']:.0f}% of it")

    # a GPU: the loader against the whole GPU step (section gpu), per GPU and per worker
    if "gpu" in model_rate and model_rate["gpu_img"] == img:
        need, cores = model_rate["gpu"], os.cpu_count() // max(torch.cuda.device_count(), 1)
        row(f"loader mp4 (prepared) 16x{img}, {a.workers} workers vs the GPU step (clips/s one GPU "
            f"needs)", f"{r['uint8']:.1f} clips/s", f"{need:.1f} clips/s",
            f"{r['uint8'] / need:.2f}x", ">= 1x", r["uint8"] >= need)
        row(f"loader workers per GPU at 16x{img}: one worker's clips/s vs the GPU step",
            f"{r['worker']:.1f} clips/s", f"{need:.1f} clips/s",
            f"{math.ceil(need / r['worker'])} workers", f"<= {cores} cores/GPU",
            need / r["worker"] <= cores)


# ----------------------------------------------------------------------------- decode (issue 26)

DECODERS = {"PyAV, decode through (before)": decode_through,
            "PyAV, FFmpeg's demuxer, wanted GOPs only (before)": demuxed_frames,
            "PyAV, data.decode_frames (prepared: no demuxer, decoders kept)": None,
            "torchcodec CPU": torchcodec_frames}


def decode_cost(paths, decoders=None, clips=24, num_frames=16, stride=4, seed=0, rounds=2):
    """CPU ms (time.process_time, one thread: a loader worker's cost) per clip of num_frames at
    stride, from random starts, frames to RGB included -> {(path, decoder name): ms, or the error
    text when a decoder cannot run}. Each round decodes the same clips with every (path, decoder)
    in turn, so the load falls on all of them alike; each keeps its best round."""
    import data
    decoders = decoders or {k: f or data.decode_frames for k, f in DECODERS.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = {}
    for name, fn in decoders.items():   # warm-up: the first call loads libraries
        try:
            fn(paths[0], np.arange(num_frames))
        except Exception:   # noqa: BLE001 -- reported below, per path
            pass
    for _ in range(rounds):
        for path in paths:
            n = data.video_info(path)[0]
            rng = np.random.default_rng(seed)
            starts = rng.integers(0, n - (num_frames - 1) * stride, size=clips)
            for name, fn in decoders.items():
                if isinstance(best.get((path, name)), str):
                    continue
                try:
                    t = time.process_time()
                    for s in starts:
                        fn(path, s + stride * np.arange(num_frames))
                    ms = 1000 * (time.process_time() - t) / clips
                except Exception as e:   # noqa: BLE001 -- e.g. torchcodec without FFmpeg
                    best[(path, name)] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
                    continue
                best[(path, name)] = min(best.get((path, name), float("inf")), ms)
    torch.set_num_threads(threads)
    return best


ENCODINGS = [("GOP 32 (before)", 32, "fastdecode"), ("GOP 32, no fastdecode", 32, ""),
             ("GOP 16", 16, "fastdecode"), ("GOP 8", 8, "fastdecode"), ("GOP 4", 4, "fastdecode"),
             ("all-intra (GOP 1)", 1, "fastdecode"), ("all-intra, no fastdecode", 1, "")]


def bench_decode(a, model_rate=None):
    """Section decode: a 640x360 textured moving source re-encoded by `prepare encode` to short
    side 320 (568x320) with each of ENCODINGS, decoded by each of DECODERS: CPU ms per 16-frame
    clip at stride 4, MB per video; then the packed object bank against its PNGs (bank_cost).
    `python -m tools.bench --only decode`."""
    tmp = tempfile.mkdtemp()
    write_mp4(os.path.join(tmp, "src.mp4"), 64 if a.quick else 300)
    with open(os.path.join(tmp, "list.csv"), "w") as f:
        f.write("src.mp4 0\n")
    paths = {}
    for name, gop, tune in ENCODINGS[:2] + ENCODINGS[-2:-1] if a.quick else ENCODINGS:
        out = os.path.join(tmp, f"gop{gop}{tune}")
        prepare("encode", os.path.join(tmp, "list.csv"), out, "--short-side",
                160 if a.quick else 320, "--gop", gop, "--tune", tune or "none")
        paths[name] = os.path.join(out, "src.mp4")
    cost = decode_cost(list(paths.values()), clips=4 if a.quick else 24, rounds=a.rounds)
    before = cost[(paths[ENCODINGS[0][0]], next(iter(DECODERS)))]
    for name, path in paths.items():
        mb = os.path.getsize(path) / 1e6
        for dec in DECODERS:
            ms = cost[(path, dec)]
            if isinstance(ms, str):
                row(f"decode 16x4, {name}, {dec}: not available ({ms})", "-", "-", "-")
                continue
            row(f"decode 16 frames at stride 4, {name} ({mb:.2f} MB/video), {dec}",
                f"{ms:.1f} ms/clip", f"{before:.1f} ms/clip", f"{before / ms:.2f}x")
    for name in (ENCODINGS[0][0], "all-intra (GOP 1)"):
        parts, old = finetune_clip_cost(paths[name], clips=2 if a.quick else 24)
        now, before = sum(parts.values()), sum(old.values())
        row(f"finetune.py's loader per clip, one core, {name}: "
            + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
            + " (before: " + ", ".join(f"{k} {v:.1f}" for k, v in old.items() if k != "decode")
            + ")", f"{now:.1f} ms/clip", f"{before:.1f} ms/clip", f"{before / now:.2f}x",
            "<= 15 ms", now <= 15)
    b = bank_cost(tmp, num=8 if a.quick else 32, clips=4 if a.quick else 20,
                  seeds=5 if a.quick else 50)
    row("read one 512 px object PNG, one core: packed bank (prepare objects) vs the PNG",
        f"{b['read packed']:.2f} ms", f"{b['read png']:.2f} ms",
        f"{b['read png'] / b['read packed']:.2f}x")
    row("overlay of 2 objects on 16x224, one core: packed bank vs PNGs (reads included)",
        f"{b['overlay packed']:.1f} ms/clip", f"{b['overlay png']:.1f} ms/clip",
        f"{b['overlay png'] / b['overlay packed']:.2f}x")
    row(f"packed (192 px) vs PNG (256 px cap) clips, same seeds: pixels differing > 2 levels, "
        f"max {b['max']}, mean {b['mean']:.2f} where any differs; footprint IoU",
        f"{100 * b['over2']:.3f}%", "0%", f"IoU {b['iou']:.4f}")


def bank_cost(tmp, num=32, clips=20, seeds=50):
    """The packed bank against the folder it was packed from: num synthetic 512 px cut-outs (PIN's
    canvas), CPU ms to read one object and to overlay 2 objects on a 16x224 clip, and how far the
    packed bank's clips lie from the folder's for the same seeds -> dict."""
    import motion
    from PIL import Image
    rng, folder = np.random.default_rng(0), os.path.join(tmp, "pngs")
    os.makedirs(folder)
    for i, obj in enumerate(motion.synthetic_objects(num, rng, size=512)):
        canvas = np.zeros((512, 512, 4), np.uint8)   # the cut-out inside transparent margins
        canvas[:obj.shape[0], :obj.shape[1]] = obj
        Image.fromarray(canvas, "RGBA").save(os.path.join(folder, f"{i}.png"))
    prepare("objects", folder, os.path.join(tmp, "pin.npy"))
    banks = {"png": motion.ObjectBank(folder), "packed": motion.ObjectBank(f"{tmp}/pin.npy")}
    frames = rng.integers(0, 256, (16, 224, 224, 3), dtype=np.uint8)
    threads, out = torch.get_num_threads(), {}
    torch.set_num_threads(1)
    for name, bank in banks.items():
        t = time.process_time()
        for i in range(2 * num):
            bank[i % num]
        out[f"read {name}"] = 1000 * (time.process_time() - t) / (2 * num)
        t, g = time.process_time(), np.random.default_rng(1)
        for _ in range(clips):
            motion.overlay(frames, bank, g)
        out[f"overlay {name}"] = 1000 * (time.process_time() - t) / clips
    torch.set_num_threads(threads)
    diff, iou = [], []
    for seed in range(seeds):
        (a, fa), (b, fb) = (motion.overlay(frames, bank, np.random.default_rng(seed))
                            for bank in banks.values())
        diff.append(np.abs(a.astype(int) - b).max(-1))
        iou.append((fa & fb).sum() / max((fa | fb).sum(), 1))
    diff = np.stack(diff)
    out.update(max=int(diff.max()), mean=float(diff[diff > 0].mean()),
               over2=float((diff > 2).mean()), iou=float(np.mean(iou)))
    return out


def finetune_clip_cost(path, clips=24, seed=0):
    """finetune.py's training loader per clip, by part (CPU ms, one core): decode 16 frames at
    stride 4, then the worker's parts now (random resized crop to 224 with the flip left to the
    step, RandAugment's draw: Table 17's m9, n2, mstd 0.5, applied in the step, the clip as a
    channels-last view) and before (crop + flip, PIL RandAugment over the 16 frames, a transposing
    to_tensor). Random erasing runs in the step. -> ({part: ms} now, {part: ms} before), both
    holding "decode"."""
    import data
    from augment import RandAug, crop_and_flip, randaug_sample
    aug, rng, now, before = RandAug(2, 9, 0.5), np.random.default_rng(seed), {}, {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    n = data.video_info(path)[0]
    crop = partial(crop_and_flip, size=224, rng=rng, flip=True, crop="rrc")
    steps = {"now": [("crop (flip in the step)", lambda f: crop(f, defer_flip=True)[0]),
                     ("RandAugment draw", lambda f: randaug_sample(aug, f, rng)[0]),
                     ("to tensor (a view)", lambda f: torch.from_numpy(f).permute(3, 0, 1, 2))],
             "before": [("crop + flip", crop), ("PIL RandAugment", lambda f: randaugment_clip(
                 aug, f, rng)), ("to tensor (a copy)", data.to_tensor)]}
    for s in rng.integers(0, n - 61, clips):
        t = time.process_time()
        decoded = data.decode_frames(path, s + 4 * np.arange(16))
        ms = 1000 * (time.process_time() - t) / clips
        for parts, path_steps in ((now, steps["now"]), (before, steps["before"])):
            parts["decode"], frames = parts.get("decode", 0) + ms, decoded
            for name, fn in path_steps:
                t = time.process_time()
                frames = fn(frames)
                parts[name] = parts.get(name, 0) + 1000 * (time.process_time() - t) / clips
    torch.set_num_threads(threads)
    return now, before
# ----------------------------------------------------------------------------- the loader check

def synthetic_data(folder, quick):
    """A stand-in for a user's data: mp4s re-encoded by `python -m tools.prepare encode` (as a run
    on prepared videos reads them) and RGBA PNG objects of the PIN bank's size (512 px), so the
    check runs without any download; the objects packed by `python -m tools.prepare objects`, as
    the README has a run read them. -> (list file, packed bank)."""
    import motion
    from PIL import Image
    src, objects = os.path.join(folder, "src"), os.path.join(folder, "objects")
    os.makedirs(src), os.makedirs(objects)
    names = [f"v{i}.mp4" for i in range(1 if quick else 3)]
    for i, name in enumerate(names):
        write_mp4(os.path.join(src, name), 70 if quick else 130, *((180, 320) if quick else
                                                                     (360, 640)))
    with open(os.path.join(src, "train.csv"), "w") as f:
        f.write("".join(f"{name} 0\n" for name in names))
    prepare("encode", os.path.join(src, "train.csv"), os.path.join(folder, "prepared"),
            "--short-side", 160 if quick else 320)
    for i, obj in enumerate(motion.synthetic_objects(4 if quick else 8, np.random.default_rng(0))):
        h, w = obj.shape[:2]
        big = Image.fromarray(obj, "RGBA").resize((512 * w // max(h, w), 512 * h // max(h, w)))
        big.save(os.path.join(objects, f"{i}.png"))
    prepare("objects", objects, os.path.join(folder, "objects.npy"))
    return os.path.join(folder, "prepared", "train.csv"), os.path.join(folder, "objects.npy")


def stamped_collate(samples):
    """data.collate, stamped with the worker's CPU seconds so far (time.process_time: all threads)."""
    import data
    return {**data.collate(samples), "cpu": time.process_time()}


def worker_cpu(dataset, batches, videos_per_batch):
    """CPU seconds one loader worker spends per clip over `batches` batches of videos_per_batch
    videos (num_sample clips each), its first batch (start-up) not counted."""
    import data
    init = partial(data.worker_init, keep_heap=not isinstance(dataset, TodaysPath))   # glibc's
    loader = torch.utils.data.DataLoader(dataset, batch_size=videos_per_batch, num_workers=1,
                                         collate_fn=stamped_collate, worker_init_fn=init)
    stamps = [(b["cpu"], len(b["mask"])) for _, b in zip(range(batches + 1), loader)]
    return (stamps[-1][0] - stamps[0][0]) / sum(n for _, n in stamps[1:])


def worker_check(a):
    """`python -m tools.bench data`: the loader on the user's data (or synthetic stand-ins) at the
    paper's setting, the new path (the step crops and renders) against today's (benchkit.TodaysPath),
    one worker each, CPU time; the workers an H100 then needs. Ends with the line 'worker CPU per
    clip: NEW ms (today's path: OLD ms, RATIO x)'."""
    import data
    import motion
    import teacher as teacher_lib
    from tools.bench_gpu import gpu_peak, teacher_flops
    torch.set_num_threads(1)   # as data.worker_init does in each worker
    listed, objects = a.list, a.objects
    if not listed or not objects:
        made = synthetic_data(tempfile.mkdtemp(), a.quick)
        listed, objects = listed or made[0], objects or made[1]
    items = data.read_list(listed, a.data_root or None)
    bank = motion.ObjectBank(objects, list_file=a.object_list)
    # batches of 8 videos (16 clips, half a GPU's share of the paper's batch of 256 on 8 GPUs): a
    # batch's own costs (shared memory, handing it over) shared as in training
    per_batch = max(min(2 if a.quick else 8, a.clips // 4), 1)   # >= 2 batches measured
    batches = max(a.clips // (2 * per_batch), 1)
    videos = batches * per_batch
    items = (items * (videos + per_batch))[:videos + per_batch]   # both paths: the same videos
    kw = dict(items=items, num_frames=16, stride=4, img_size=224, num_sample=2, objects=bank,
              num_objects=2, masking="trajectory", seed=0)
    best = {"step": float("inf"), "worker": float("inf")}
    for _ in range(a.rounds):   # alternately, so both see the same load; best round each
        for path, ds in (("step", data.PretrainDataset), ("worker", TodaysPath)):
            best[path] = min(best[path], worker_cpu(ds("video", **kw), batches, per_batch))
    new, old = round(1000 * best["step"], 1), round(1000 * best["worker"], 1)   # as printed
    # where a clip's CPU goes, in this process on one thread, each piece warmed (PyAV's import and
    # first open: ~90 ms): decoding (half a video: YUV planes, today's RGB frames), reading two
    # objects, the rest by difference
    ds, rng, decode = data.PretrainDataset("video", **kw), np.random.default_rng(0), {}
    np.asarray(bank[0])
    for path, d in (("step", ds), ("worker", TodaysPath("video", **kw))):
        d.background(0, rng)
        t = time.process_time()
        for i in range(videos):
            d.background(i, rng)
        decode[path] = 1000 * (time.process_time() - t) / (2 * videos)
    t = time.process_time()
    for i in range(2 * videos):
        np.asarray(bank[i % len(bank)])
    read, t = 1000 * (time.process_time() - t) / videos, time.process_time()
    # the new path reads each object as the bank holds it into a tile (motion.motion_tiles)
    motion.motion_tiles(bank, {"picks": np.arange(2 * videos) % len(bank)},
                        motion.tile_sides(bank, (32, 128), 224, 224))
    tiles = 1000 * (time.process_time() - t) / videos
    student = step_flops("base", 224, 768)
    clip_teacher = teacher_flops(teacher_lib.Teacher("ViT-B-16", pretrained=None))
    flops, peak = student + clip_teacher, gpu_peak("H100")
    print(f"loader check: {listed} ({len(set(items))} videos), objects {objects}; 16x224, 2 "
          f"objects, trajectory masks, 2 clips per video, one worker, {2 * videos} clips per path in "
          f"batches of {2 * per_batch}, best of {a.rounds} rounds; load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"per clip: decoding {decode['step']:.1f} ms, reading 2 objects {tiles:.1f} ms, the rest "
          f"{new - decode['step'] - tiles:.1f} ms (today's path: {decode['worker']:.1f}, {read:.1f}, "
          f"{old - decode['worker'] - read:.1f} ms)")
    if not os.path.isfile(objects):   # PNGs read each time an object is drawn
        print(f"objects read from PNGs: {tiles:.1f} ms of each clip; pack them once (python -m "
              f"tools.prepare objects {objects} OUT, then --objects OUT) and a clip reads its two "
              f"objects off one memory-mapped file (~0.1-0.5 ms)")
    print(f"ViT-B step with the CLIP ViT-B/16 teacher: {flops / 1e9:.0f} GFLOP per clip (student "
          f"{student / 1e9:.0f} + teacher {clip_teacher / 1e9:.0f}); H100 bf16 peak "
          f"{peak / 1e12:.0f} TFLOP/s")
    for mfu in (0.4, 0.6):
        rate = round(mfu * peak / flops)
        print(f"H100 at {100 * mfu:.0f}% MFU: {rate:.0f} clips/s -> {math.ceil(rate * new / 1000)} "
              f"workers (cores) at this rate (today's path: {math.ceil(rate * old / 1000)})")
    print(f"worker CPU per clip: {new:.1f} ms (today's path: {old:.1f} ms, {old / new:.2f}x)")
