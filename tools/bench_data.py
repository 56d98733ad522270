"""Section data of tools/bench.py: decoding before and after `python -m tools.prepare encode`,
overlay and masks on one core, uint8 against float32 clips, and loaders against the model's
training speed. Run through `python -m tools.bench --only data`."""
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from tools.benchkit import ROOT, race, row

# ----------------------------------------------------------------------------- data

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
    """The loader before clips stayed uint8: each worker normalises its clips to float32
    (data.normalize, now run on the device), and 4x the bytes go through shared memory, pinning and
    the copy."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        import data
        sample = self.dataset[index]
        return {**sample, "video": data.normalize(sample["video"])}


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
    """Section data: decode before/after prepare, overlay and masks on one core, loaders vs
    the model."""
    import data
    import masking
    import motion
    tmp = tempfile.mkdtemp()
    os.makedirs(os.path.join(tmp, "src"))
    write_mp4(os.path.join(tmp, "src", "clip.mp4"), 64 if a.quick else 150)
    with open(os.path.join(tmp, "src", "train.csv"), "w") as f:
        f.write("clip.mp4 0\n")
    short = 160 if a.quick else 320
    # the tool as a user runs it (a tool imports no other tool)
    subprocess.run([sys.executable, "-m", "tools.prepare", "encode",
                    os.path.join(tmp, "src", "train.csv"), os.path.join(tmp, "prepared"),
                    "--short-side", str(short), "--workers", "1"],
                   cwd=ROOT, check=True, capture_output=True)
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
        # the float round trip data.resize used before (uint8 -> float -> interpolate -> uint8)
        x = F.interpolate(crop.float(), size=(224, 224), mode="bilinear", antialias=True,
                          align_corners=False)
        x.round_().clamp_(0, 255).byte()
    img = 64 if a.quick else 224   # the loader rows' larger clips
    # uint8 (3, 16, img, img), as the loader now ships it
    clip = data.to_tensor(frames[:, :img, :img])
    r = race({"overlay": paste, "mask": mask,
              "resize": lambda: data.resize(crop.permute(0, 2, 3, 1).numpy(), 224),
              "resize_float": resize_float, "normalize": lambda: data.normalize(clip)},
             4 * a.rounds)
    torch.set_num_threads(threads)
    norm = r["normalize"]
    row("overlay of 2 objects on 16x224, one core (motion.overlay)",
        f"{1000 * r['overlay']:.1f} ms/clip", "10 ms budget", f"{0.010 / r['overlay']:.2f}x",
        "<= 10 ms", r["overlay"] <= 0.010)
    row("trajectory mask of 16x224, one core (masking)", f"{1000 * r['mask']:.2f} ms/clip",
        "-", "-")
    row("crop resize 16x320x320 -> 224, one core: data.resize (uint8) vs float round trip",
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
    clip_bytes = 3 * 16 * 224 * 224 * video[0]["video"].element_size()
    row("bytes per 16x224 clip through the loader: uint8 (now) vs float32",
        f"{clip_bytes / 1e6:.2f} MB", f"{3 * 16 * 224 * 224 * 4 / 1e6:.2f} MB",
        f"{3 * 16 * 224 * 224 * 4 / clip_bytes:.2f}x")
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


# ----------------------------------------------------------------------------- the loader check

def synthetic_data(folder, quick):
    """A stand-in for a user's data: mp4s re-encoded by `python -m tools.prepare encode` (as a run
    on prepared videos reads them) and RGBA PNG objects of the PIN bank's size (512 px), so the
    check runs without any download. -> (list file, objects folder)."""
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
    subprocess.run([sys.executable, "-m", "tools.prepare", "encode", os.path.join(src, "train.csv"),
                    os.path.join(folder, "prepared"), "--short-side", "160" if quick else "320",
                    "--workers", "1"], cwd=ROOT, check=True, capture_output=True)
    for i, obj in enumerate(motion.synthetic_objects(4 if quick else 8, np.random.default_rng(0))):
        h, w = obj.shape[:2]
        big = Image.fromarray(obj, "RGBA").resize((512 * w // max(h, w), 512 * h // max(h, w)))
        big.save(os.path.join(objects, f"{i}.png"))
    return os.path.join(folder, "prepared", "train.csv"), objects


def stamped_collate(samples):
    """data.collate, stamped with the CPU seconds the worker has spent so far (time.process_time
    in the worker: its decoder, its torch ops, its collate, all its threads)."""
    import data
    return {**data.collate(samples), "cpu": time.process_time()}


def worker_cpu(dataset, batches, videos_per_batch):
    """CPU seconds one loader worker spends per clip over `batches` batches of videos_per_batch
    videos (num_sample clips each), its first batch (start-up) not counted."""
    import data
    loader = torch.utils.data.DataLoader(dataset, batch_size=videos_per_batch, num_workers=1,
                                         collate_fn=stamped_collate,
                                         worker_init_fn=data.worker_init, prefetch_factor=2)
    stamps = [(b["cpu"], len(b["mask"])) for _, b in zip(range(batches + 1), loader)]
    return (stamps[-1][0] - stamps[0][0]) / sum(n for _, n in stamps[1:])


def worker_check(a):
    """`python -m tools.bench data`: the loader on the user's data (or synthetic stand-ins) at the
    paper's setting, the new path (the step renders the objects) against today's (overlay in the
    worker), one worker each, CPU time; how many workers an H100 then needs. Ends with the line
    'worker CPU per clip: NEW ms (today's path: OLD ms, RATIO x)'."""
    import data
    import motion
    import teacher as teacher_lib
    from tools.bench_gpu import gpu_peak, teacher_flops
    from tools.benchkit import step_flops
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
        for render in best:
            cpu = worker_cpu(data.PretrainDataset("video", render=render, **kw), batches,
                             per_batch)
            best[render] = min(best[render], cpu)
    new, old = 1000 * best["step"], 1000 * best["worker"]
    # where a clip's CPU goes, in this process on one thread: decoding (half a video), reading
    # two objects, and the rest (crop, draws, tokens, mask, tiles, collate) by difference
    ds, rng, t = data.PretrainDataset("video", **kw), np.random.default_rng(0), time.process_time()
    for i in range(videos):
        ds.background(i, rng)
    decode, t = 1000 * (time.process_time() - t) / (2 * videos), time.process_time()
    for i in range(2 * videos):
        np.asarray(bank[i % len(bank)])
    read = 1000 * (time.process_time() - t) / videos
    student = step_flops("base", 224, 768)
    clip_teacher = teacher_flops(teacher_lib.Teacher("ViT-B-16", pretrained=None))
    flops, peak = student + clip_teacher, gpu_peak("H100")
    print(f"loader check: {listed} ({len(set(items))} videos), objects {objects}; 16x224, 2 "
          f"objects, trajectory masks, 2 clips per video, one worker, {2 * videos} clips per path in "
          f"batches of {2 * per_batch}, best of {a.rounds} rounds; load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"per clip: decoding {decode:.1f} ms, reading 2 objects {read:.1f} ms, the rest "
          f"{new - decode - read:.1f} ms (today's path: {old - decode - read:.1f} ms)")
    print(f"ViT-B step with the CLIP ViT-B/16 teacher: {flops / 1e9:.0f} GFLOP per clip (student "
          f"{student / 1e9:.0f} + teacher {clip_teacher / 1e9:.0f}); H100 bf16 peak "
          f"{peak / 1e12:.0f} TFLOP/s")
    for mfu in (0.4, 0.6):
        rate = mfu * peak / flops
        print(f"H100 at {100 * mfu:.0f}% MFU: {rate:.0f} clips/s -> {math.ceil(rate * new / 1000)} "
              f"workers (cores) at this rate (today's path: {math.ceil(rate * old / 1000)})")
    print(f"worker CPU per clip: {new:.1f} ms (today's path: {old:.1f} ms, {old / new:.2f}x)")
