"""Features of a frozen SMILE (or any VideoMAE-family) encoder, for downstream tools: paper Table
10's temporal action localisation (ActionFormer on THUMOS-14) and users' own work.

    python -m tools.extract --preset tiny --list videos.csv --out-dir out/feats      # the demo's grid
    python -m tools.extract --preset thumos14 --checkpoint CK --video-dir /data/thumos14 --out-dir D
    torchrun --nproc_per_node=8 -m tools.extract --preset thumos14 --checkpoint CK --video-dir V \
        --out-dir D
    python -m tools.extract --mode video --list val.csv --checkpoint CK --out-dir D   # a vector per video
    python -m tools.extract --mode tokens --list val.csv --layer 6 --out-dir D        # (t, h, w, D) grids
    python -m tools.extract -h                                                         # every flag

Modes, the array saved per video (D = encoder width; t, h, w = the token grid of one clip):
  snippets  (num_snippets, D): a window of T frames at --stride every --snippet-stride frames over
            the whole video, short side resized and centre-cropped, tokens mean-pooled. The (T, C)
            layout ActionFormer and OpenTAD read; --preset thumos14 = VideoMAEv2's THUMOS-14
            features (extract_tad_feature.py: 16 consecutive frames every 4 frames). The OpenTAD
            config for them: docs/extract.md.
  video     (D,): pooled tokens averaged over --test-clips x --test-crops views (probe.py's views).
  tokens    (t, h, w, D): the tokens of the centre clip, centre crop, for dense tasks.
--layer L takes block L's output (1-based, as tools/segment.py; default the last). Pooled features go
through the checkpoint's fc_norm when it has one (a finetuned model: VideoMAE's forward_features)
and L is the last block; a pretraining checkpoint has none: the raw token mean, as probe.py uses.

Written to --out-dir: <name>.npy per video (float32; --fp16 halves it), atomically; index.jsonl, one
JSON line per video in list order (path, file, shape, fps, frame count, and for every snippet or
clip its first and last frame and its start and end in seconds); bad.txt (unreadable videos, with
the error) and missing_files.txt (their names: OpenTAD's block_list); args.json; log.jsonl.
<name> is the file's stem; videos sharing a stem take their path below the group's common folder
('a/x.mp4', 'b/x.mp4' -> a__x, b__x). A rerun skips every video whose .npy loads (an interrupted
run resumes) and retries the bad ones. Under torchrun video i goes to rank i % world; each rank
appends its records to parts/index.<rank>.jsonl as it goes, rank 0 merges them into index.jsonl.
"""
import argparse
import glob
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import data
from evaluation import (VideoClipDataset, add_data_args, frozen_encoder, read_checkpoint,
                        three_crops)
from model import MODEL_SIZES
from runtime import (Log, Parser, all_reduce, amp_setup, apply_presets, check_paths, fail,
                     fmt_time, make_out_dir, positive_int, save_args, setup_dist, teardown)

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")
PRESETS = {
    # the demo's grid (train.py / probe.py --preset tiny): ViT-tiny, 32 px, 8 frames, 2x8x8
    "tiny": dict(model="tiny", img_size=32, num_frames=8, patch_size=8, tubelet=2, workers=1,
                 out_dir="out/extract-tiny"),
    # THUMOS-14 as VideoMAEv2's extract_tad_feature.py and OpenTAD's VideoMAE features ("16x4x1"):
    # 16 consecutive frames every 4 frames at the videos' own frame rate, 224 px
    "thumos14": dict(mode="snippets", num_frames=16, stride=1, snippet_stride=4, img_size=224),
}
# flags that make other features: a rerun into the same --out-dir must keep them
SETTINGS = ("checkpoint", "model", "patch_size", "tubelet", "mode", "layer", "fc_norm",
            "num_frames", "img_size", "stride", "snippet_stride", "sampling", "test_clips",
            "test_crops", "fp16", "seed")
# the flags of evaluation.add_data_args (probe.py's and finetune.py's) that this script takes
SHARED = ("--data-root", "--num-frames", "--img-size", "--sampling", "--stride", "--test-clips",
          "--test-crops", "--workers", "--checkpoint", "--model", "--patch-size", "--tubelet",
          "--amp", "--device", "--seed")


# ============================================================================= flags


def get_args(argv=None):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", choices=sorted(PRESETS), help="tiny = the demo's grid (32 px, 8 frames, "
      "2x8x8 tubelets, ViT-tiny); thumos14 = 16 consecutive frames every 4 frames, 224 px (VideoMAEv2, OpenTAD)")
    a("--list", default=None, help="list file, one '<path> [label]' per line (VideoMAE's format, "
      "the label optional); '#' comments; relative paths against --data-root, else the list's "
      "folder")
    a("--video-dir", default=None, help="instead of --list: every video under this folder "
      "(recursive; " + " ".join(VIDEO_EXTS) + ")")
    a("--mode", default="snippets", choices=["snippets", "video", "tokens"],
      help="snippets: (num_snippets, D) per video, for TAL (ActionFormer / OpenTAD); video: (D,), "
      "test views averaged; tokens: (t, h, w, D) of the centre clip")
    a("--out-dir", default="out/extract", help="<name>.npy per video, index.jsonl, bad.txt")
    a("--snippet-stride", type=positive_int, default=4, help="frames between snippet starts (OpenTAD's "
      "feature_stride; THUMOS-14 VideoMAEv2 features: 4)")
    a("--layer", type=positive_int, default=None, help="features of encoder block L, 1-based (default last)")
    a("--fc-norm", default="auto", choices=["auto", "on", "off"], help="pooled features through "
      "the checkpoint's fc_norm; auto: when it has one and --layer is the last (pretraining "
      "checkpoints have none: the raw token mean, as probe.py)")
    a("--fp16", action="store_true", help="float16 .npy files (half the disk; OpenTAD casts them "
      "to fp32)")
    a("--batch-size", type=positive_int, default=32, help="snippets (or views) per encoder forward")
    a("--log-every", type=positive_int, default=10, help="videos between progress lines")
    add_data_args(lambda *flags, **kw: a(*flags, **kw) if flags[0] in SHARED else None)
    args = apply_presets(p, [("preset", PRESETS)], argv)
    if (args.list is None) == (args.video_dir is None):
        fail("give exactly one of --list and --video-dir")
    check_paths(("--checkpoint", args.checkpoint, "file"))
    return args


# ============================================================================= videos and names


def read_items(path, data_root=None):
    """'<path> [label]' lines (data.list_entries, the label optional) -> [(video path, label
    string or None, 'FILE:LINE')]; a negative label raises naming FILE:LINE."""
    items = []
    for e in data.list_entries(path, data_root, optional_label=True):
        label = e["label"]
        if label is not None and label.startswith("-") and label != "-":
            raise ValueError(f"{path}:{e['line']}: label {label!r} is negative")
        if e["reason"]:
            raise ValueError(f"{path}:{e['line']}: {e['reason']}")
        items.append((e["video"], label, f"{path}:{e['line']}"))
    if not items:
        raise ValueError(f"list file {path} has no entries")
    return items


def dir_items(folder):
    """Every video under folder, sorted -> [(path, None, None)]."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--video-dir {folder} is not a folder")
    paths = sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in VIDEO_EXTS)
    if not paths:
        raise ValueError(f"--video-dir {folder} holds no videos ({' '.join(VIDEO_EXTS)})")
    return [(p, None, None) for p in paths]


def output_names(paths):
    """A unique file name (no extension) per video: its stem, what OpenTAD's annotations key videos
    by. Videos sharing a stem take their path below the group's common folder, '/' -> '__', the
    extension dropped (kept where that still clashes). The same path twice is an error."""
    if len(set(paths)) < len(paths):
        raise ValueError(f"{next(p for p in paths if paths.count(p) > 1)} is listed twice")
    names = [Path(p).stem for p in paths]
    for drop_ext in (True, False):
        for stem in {n for n in names if names.count(n) > 1}:
            group = [i for i, n in enumerate(names) if n == stem]
            root = os.path.commonpath([os.path.dirname(os.path.abspath(paths[i])) for i in group])
            for i in group:
                rel = os.path.relpath(os.path.abspath(paths[i]), root)
                names[i] = (os.path.splitext(rel)[0] if drop_ext else rel).replace(os.sep, "__")
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash is not None:
        raise ValueError(f"two videos would both be saved as {clash}.npy: rename one")
    return names


def is_done(path):
    """The .npy exists and its header and size check out (np.load as a memory map)."""
    try:
        np.load(path, mmap_mode="r")
        return True
    except (OSError, ValueError):
        return False


# ============================================================================= frames


def snippet_frames(n, T, stride, snippet_stride):
    """Frame indices (num_snippets, T) of the windows over a video of n frames: window k starts at
    frame k * snippet_stride and takes T frames at stride, while it fits (VideoMAEv2, THUMOS-14:
    range(0, n - 15, 4)): num_snippets = (n - span) // snippet_stride + 1, span = (T-1)*stride + 1.
    A video shorter than one span gets one window, its last frame repeated."""
    span = (T - 1) * stride + 1
    k = max(1, (n - span) // snippet_stride + 1)
    starts = np.arange(k)[:, None] * snippet_stride                          # (k, 1)
    return np.minimum(starts + stride * np.arange(T), max(n - 1, 0))         # (k, T)


def decoded_chunks(path, size, chunk=32):
    """Every frame in decoding order (frame i = the i-th decoded frame, as decord counts), short
    side resized to size, centre crop: uint8 (k, size, size, 3) chunks in one pass. One decoder
    thread, as data.decode_frames: the loader's workers are the parallelism."""
    import av
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        frames = []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))               # (H, W, 3)
            if len(frames) == chunk:
                yield three_crops(np.stack(frames), size, 1)[0]
                frames = []
        if frames:
            yield three_crops(np.stack(frames), size, 1)[0]


def batch_tensor(windows):
    """list of uint8 (T, S, S, 3) -> uint8 (B, C, T, S, S)."""
    if not windows:
        return torch.zeros(0, 3, 0, 0, 0, dtype=torch.uint8)
    return torch.from_numpy(np.stack(windows)).permute(0, 4, 1, 2, 3).contiguous()


def snippet_batches(path, args):
    """A video's snippets as a stream: yields (uint8 (B, C, T, S, S), None) batches, the last one
    with the info (frame count, each window's first and last frame). Only the frames of unfinished
    windows are kept: a long video (THUMOS-14: up to ~1 h) needs no more memory than a short one."""
    T, s, ss, B = args.num_frames, args.stride, args.snippet_stride, args.batch_size
    span = (T - 1) * s + 1
    buf, base, n, k, windows = None, 0, 0, 0, []       # buf (n - base, S, S, 3): frames base..n-1
    for chunk in decoded_chunks(path, args.img_size):
        buf = chunk if buf is None else np.concatenate([buf, chunk])
        n += len(chunk)
        while k * ss + span <= n:                      # window k is complete
            windows.append(buf[k * ss - base:k * ss - base + span:s])   # (T, S, S, 3)
            k += 1
            if len(windows) == B:
                yield batch_tensor(windows), None
                windows = []
        drop = min(k * ss, n) - base                   # frames no later window needs
        buf, base = buf[drop:], base + drop
    if n == 0:
        raise ValueError(f"{path}: no frame could be decoded")
    idx = snippet_frames(n, T, s, ss)
    if k == 0:                                         # shorter than one window
        windows.append(buf[idx[0]])
    yield batch_tensor(windows), {"num_frames": n, "frames": idx[:, [0, -1]].tolist()}


def clip_views(path, args):
    """video / tokens: probe.py's test views (evaluation.VideoClipDataset: --test-clips clips x
    --test-crops crops; tokens: the centre clip and crop) -> one batch, with the info."""
    clips, crops = (args.test_clips, args.test_crops) if args.mode == "video" else (1, 1)
    ds = VideoClipDataset([(path, 0)], mode="test", num_classes=1, num_frames=args.num_frames,
                          stride=args.stride, sampling=args.sampling, img_size=args.img_size,
                          num_clips=clips, num_crops=crops)
    video = torch.cat([ds[v]["video"] for v in range(clips)])       # (clips * crops, C, T, S, S)
    n = data.video_info(path)[0]
    frames = [ds.frame_indices(n, None, v) for v in range(clips)]
    yield video, {"num_frames": n, "frames": [[int(f[0]), int(f[-1])] for f in frames]}


class VideoStream(torch.utils.data.IterableDataset):
    """A rank's videos as a stream of {"video": uint8 (B, C, T, S, S), "vid", "info", "error"}; the
    last item of a video carries its info (None before), or its error (a bad video, not fatal).
    Loader worker w takes videos w, w + workers, ...: each video is streamed in order by one."""

    def __init__(self, todo, args):
        self.todo, self.args = todo, args

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, nw = (info.id, info.num_workers) if info else (0, 1)
        make = snippet_batches if self.args.mode == "snippets" else clip_views
        for vid, path in self.todo[w::nw]:
            try:
                for video, meta in make(path, self.args):
                    yield {"video": video, "vid": vid, "info": meta, "error": None}
            except Exception as e:   # noqa: BLE001 -- any decode error makes the video bad
                yield {"video": batch_tensor([]), "vid": vid, "info": None,
                       "error": f"{type(e).__name__}: {e}"}


def keep(item):
    return item


# ============================================================================= the encoder


def build_encoder(args, verbose):
    """-> (frozen VideoClassifier, whether pooled features take fc_norm); sets --layer 1..depth."""
    state = read_checkpoint(args)
    model, args.layer, keys = frozen_encoder(
        state, model=args.model, patch_size=args.patch_size, tubelet=args.tubelet,
        img_size=args.img_size, num_frames=args.num_frames, layer=args.layer,
        path=args.checkpoint, verbose=verbose)
    auto = "fc_norm.weight" in keys and args.layer == MODEL_SIZES[args.model]["depth"]
    return model, {"on": True, "off": False, "auto": auto}[args.fc_norm] and args.mode != "tokens"


def features(model, video, args, fc_norm):
    """uint8 (B, C, T, H, W) on the device -> float32 (B, D) pooled, or (B, t, h, w, D) tokens."""
    x = model.forward_tokens(data.normalize(video), args.layer).float()   # (B, N, D)
    if args.mode == "tokens":
        B, _, T, H, W = video.shape
        return x.view(B, T // args.tubelet, H // args.patch_size, W // args.patch_size, -1)
    x = x.mean(1)                                                    # (B, D)
    return model.fc_norm(x).float() if fc_norm else x


# ============================================================================= output


def save_npy(array, path):
    """Atomic: a temporary file renamed over the target; a killed run leaves no half-written one."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def finish_video(out, info, item, name, args, part):
    """A video's features -> its index record, then its .npy (in that order: the merge drops a
    record whose .npy never landed). out: (B, D) arrays (snippets, views) or one (1, t, h, w, D)."""
    path, label, source = item
    fps = data.video_info(path)[1]
    if args.mode == "snippets":
        array = np.concatenate(out)                                  # (num_snippets, D)
    elif args.mode == "video":
        array = np.concatenate(out).mean(0)                          # (D,): the mean over views
    else:
        array = out[0][0]                                            # (t, h, w, D)
    array = array.astype(np.float16 if args.fp16 else np.float32)
    times = [[round(a / fps, 4), round((b + 1) / fps, 4)] for a, b in info["frames"]]
    record = {"path": path, "file": f"{name}.npy", "label": label, "source": source,
              "shape": list(array.shape), "dtype": str(array.dtype), "fps": fps,
              "num_frames": info["num_frames"], "mode": args.mode, "layer": args.layer,
              "frames": info["frames"], "times": times}
    part.write(json.dumps(record) + "\n")
    part.flush()
    save_npy(array, os.path.join(args.out_dir, f"{name}.npy"))


def read_records(out_dir):
    """file -> latest record, over all ranks' parts/index.*.jsonl (this run's and earlier ones)."""
    records = {}
    for part in sorted(glob.glob(os.path.join(out_dir, "parts", "index.*.jsonl"))):
        for line in open(part):
            try:
                r = json.loads(line)
            except ValueError:          # a blank line, or one cut short by a killed run
                continue
            records[r["file"]] = r
    return records


def merge_outputs(args, names, items):
    """Rank 0, once every rank is done: index.jsonl (each video whose .npy is there, in list order);
    bad.txt and missing_files.txt from this run's parts/bad.*.txt. -> number of bad videos."""
    records = read_records(args.out_dir)
    with open(os.path.join(args.out_dir, "index.jsonl"), "w") as f:
        for name in names:
            r = records.get(f"{name}.npy")
            if r is not None and os.path.isfile(os.path.join(args.out_dir, r["file"])):
                f.write(json.dumps(r) + "\n")
    bad = []
    for part in sorted(glob.glob(os.path.join(args.out_dir, "parts", "bad.*.txt"))):
        bad += [line.rstrip("\n").split("\t", 1) for line in open(part) if line.strip()]
        os.remove(part)
    bad.sort(key=lambda b: int(b[0]))
    with open(os.path.join(args.out_dir, "bad.txt"), "w") as f:
        for i, err in bad:
            path, _, source = items[int(i)]
            f.write(f"{path}: {err}{f' [{source}]' if source else ''}\n")
    with open(os.path.join(args.out_dir, "missing_files.txt"), "w") as f:
        f.writelines(f"{names[int(i)]}\n" for i, _ in bad)
    return len(bad)


def check_settings(args):
    """A rerun into the same --out-dir resumes only with the same features, or fails."""
    path = os.path.join(args.out_dir, "args.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        saved = json.load(f)
    diff = [f"--{k.replace('_', '-')} {saved[k]} (this run: {getattr(args, k)})" for k in SETTINGS
            if k in saved and saved[k] != getattr(args, k)]
    if diff:
        fail(f"--out-dir {args.out_dir} holds features made with {', '.join(diff)}; "
             "use another --out-dir")


# ============================================================================= main


def run_shard(model, todo, items, names, args, device, fc_norm, log, rank, world):
    """Extract this rank's videos (bf16 autocast on GPU). -> (extracted, bad) counts."""
    autocast, _, _ = amp_setup(device, args.amp)
    stream = data.loader(VideoStream(todo, args), None, None, args.workers, device, keep, 2)
    part = open(os.path.join(args.out_dir, "parts", f"index.{rank}.jsonl"), "a")
    bad_file = open(os.path.join(args.out_dir, "parts", f"bad.{rank}.txt"), "w")
    pending, done, bad, clips, t0 = {}, 0, 0, 0, time.time()
    for batch in stream:
        vid, out = batch["vid"], pending.setdefault(batch["vid"], [])
        if batch["error"] is not None:
            pending.pop(vid)
            bad_file.write(f"{vid}\t{batch['error']}\n")
            bad_file.flush()
            bad += 1
            continue
        if len(batch["video"]):
            video = batch["video"].to(device, non_blocking=True)      # (B, C, T, S, S) uint8
            with torch.no_grad(), autocast():
                out.append(features(model, video, args, fc_norm).float().cpu().numpy())
            clips += len(video)
        if batch["info"] is None:
            continue
        finish_video(pending.pop(vid), batch["info"], items[vid], names[vid], args, part)
        done += 1
        if done == 1 or done % args.log_every == 0 or done + bad == len(todo):
            secs = time.time() - t0
            rate = done / secs
            log({"videos": done, "bad": bad, "videos_per_s": rate * world, "time": secs},
                f"  {done + bad}/{len(todo)} videos on rank 0 | {rate * world:.2f} videos/s "
                f"({world} rank(s)) | {clips / secs:.1f} clips/s per rank | eta "
                f"{fmt_time((len(todo) - done - bad) / rate)}")
    part.close()
    bad_file.close()
    return done, bad


def main(argv=None):
    args = get_args(argv)
    check_paths(("--list", args.list, "file"), ("--video-dir", args.video_dir, "folder"),
                ("--data-root", args.data_root, "folder"))
    rank, world, device = setup_dist(args.device)
    master = rank == 0
    make_out_dir(args.out_dir)
    os.makedirs(os.path.join(args.out_dir, "parts"), exist_ok=True)
    try:
        items = read_items(args.list, args.data_root) if args.list else dir_items(args.video_dir)
        names = output_names([p for p, _, _ in items])
    except (OSError, ValueError) as e:
        fail(str(e))
    torch.manual_seed(args.seed)              # a random encoder (no --checkpoint): one on all ranks
    model, fc_norm = build_encoder(args, verbose=master)
    model.to(device)
    check_settings(args)
    log = Log(args.out_dir, master)
    if master:
        save_args(args, args.out_dir)
    mine = range(rank, len(items), world)     # video i on rank i % world
    todo = [(i, items[i][0]) for i in mine
            if not is_done(os.path.join(args.out_dir, f"{names[i]}.npy"))]
    if master:
        print(f"extract {args.mode}: {len(items)} videos ({len(mine) - len(todo)} of rank 0's "
              f"already done) | {args.model} encoder, block {args.layer}"
              f"{' + fc_norm' if fc_norm else ''} | {args.num_frames} frames at stride "
              f"{args.stride}, {args.img_size} px | {world} rank(s) on {device}", flush=True)
    t0 = time.time()
    done, bad = run_shard(model, todo, items, names, args, device, fc_norm, log, rank, world)
    counts = torch.tensor([done, bad, len(mine) - len(todo)], dtype=torch.float64, device=device)
    all_reduce(counts)
    teardown(world, device)
    if not master:
        return None
    merge_outputs(args, names, items)
    done, bad, skipped = (int(c) for c in counts.tolist())
    summary = {"extracted": done, "skipped": skipped, "bad": bad, "videos": len(items),
               "time": time.time() - t0}
    log(summary, f"extracted {done}, skipped {skipped} (already done), bad {bad}"
        f"{f' (see {args.out_dir}/bad.txt)' if bad else ''} of {len(items)} videos in "
        f"{fmt_time(time.time() - t0)} -> {args.out_dir}/index.jsonl")
    return summary


if __name__ == "__main__":
    main()
