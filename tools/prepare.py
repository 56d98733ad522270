"""Dataset commands: re-encode a list once, check a list before training, cut a stratified subset.

    python -m tools.prepare encode LIST OUT_DIR --short-side 320     # K400 320, SSv2 240
    python -m tools.prepare check LIST --num-classes 400 --write-clean clean.csv
    python -m tools.prepare subset LIST 80000 OUT_LIST --seed 0      # or a fraction: 0.5
    python -m tools.prepare objects /data/pin pin.npy --object-list object_instances.txt

encode: decoding is the loader's main cost, and it grows with the pixels of the stored video and
with the frames decoded that a clip does not use. K400/SSv2 as downloaded are up to full HD with
keyframes seconds apart; re-encoding once to the short side the crops need, all-intra (--gop 1:
data.decode_frames then decodes only a clip's 16 frames, not the 61 of its span at stride 4) with
x264's fast-decode settings, makes every later epoch cheaper: ~2x less CPU per clip than GOP 32 for
~3x its disk (`python -m tools.bench --only decode`, docs/performance.md). Resumable; bad videos
are left out of the new list.

check: reads a list the way training does (data.read_list: `<path> <label>`, label = last field,
`#` comments, relative paths against --data-root or the list's folder) and opens and decodes one
real clip of every video, so that missing files, unreadable or too-short videos, duplicates and bad
labels show up here, named FILE:LINE, and not hours into a GPU run. Exit code 0: every line good;
1: some bad (a --write-clean list leaves them out); 2: unusable arguments.

subset: a seeded, class-stratified subset (data.stratified_subset): the paper's K400_m (80K of
K400's 240K clips) and SSv2_m (50% of SSv2) for ablations, SEVERE's 10^3 low-shot sets. Output lines
are lines of the input.

objects: packs an object bank folder into one memory-mapped file (tools/packing.py) that every
loader worker shares, so that no worker decodes a PNG per object per clip; bad PNGs are named and
left out.
"""
import argparse
import multiprocessing
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

import data
from runtime import Parser, check_paths, fail, fmt_time, nonneg_int, positive_int
from tools.packing import PACK_TILE, pack_objects

PREPARE_GOP = 1   # all-intra: a clip decodes its own frames only (docs/performance.md)


# ------------------------------------------------------------------------ shared: pool and progress

def pool_map(fn, jobs, workers, chunksize=1):
    """imap_unordered over `workers` processes (in this process when 1). Yields fn's results."""
    if workers <= 1:
        yield from map(fn, jobs)
        return
    with multiprocessing.Pool(workers) as pool:   # leaving the block (error, Ctrl-C) terminates it
        yield from pool.imap_unordered(fn, jobs, chunksize)
        pool.close()
        pool.join()


class Progress:
    """One line on stderr: rewritten in place on a TTY, else a new line every ~10 s (logs stay
    short)."""

    def __init__(self, label, total, quiet=False, unit="videos"):
        self.label, self.total, self.quiet, self.unit = label, total, quiet, unit
        self.tty, self.t0, self.last = sys.stderr.isatty(), time.time(), 0.0

    def update(self, i, counts):
        now = time.time()
        if self.quiet or not (self.tty or now - self.last > 10 or i == self.total):
            return
        rate = i / max(now - self.t0, 1e-9)
        lead, end = ("\r", "") if self.tty else ("", "\n")
        print(f"{lead}{self.label} {i}/{self.total} | {counts} | {rate:.1f} {self.unit}/s | eta "
              f"{fmt_time((self.total - i) / rate)}", end=end, file=sys.stderr, flush=True)
        self.last = now

    def close(self):
        if self.tty and not self.quiet:
            print(file=sys.stderr)


# ----------------------------------------------------------------------------- encode

def decodes(path):
    """True when path opens and its first video frame decodes (a finished encode output)."""
    import av
    try:
        with av.open(str(path)) as container:
            next(container.decode(video=0))
        return True
    except Exception:   # noqa: BLE001 -- missing, truncated or garbage: not usable
        return False


def reencode(src, dst, short_side, codec="libx264", threads=0, gop=PREPARE_GOP,
             tune="fastdecode"):
    """Re-encode the video stream of src to dst (mp4): short side short_side, same frame rate, no
    audio, a key frame every `gop` frames (1: all-intra). tune: x264's tune (fastdecode: no CABAC,
    no deblocking, no weighted prediction; "" for none). Written to a temporary file and renamed, so
    dst exists only when complete. -> number of frames."""
    import av
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    # x264 veryfast + fastdecode: quick to write, cheap to read; crf 23 is x264's default quality
    options = {"preset": "veryfast", "crf": "23"} if codec == "libx264" else {}
    if codec == "libx264" and tune:
        options["tune"] = tune
    options["g"] = str(gop)
    n = 0
    try:
        with av.open(str(src)) as inp, av.open(str(tmp), "w", format="mp4") as out:
            ist = inp.streams.video[0]
            ist.thread_type = "AUTO"
            rate = ist.average_rate or Fraction(25)
            width, height = data.prepared_size(ist.codec_context.width, ist.codec_context.height,
                                          short_side)
            ost = out.add_stream(codec, rate=rate, options=options)
            ost.width, ost.height, ost.pix_fmt = width, height, "yuv420p"
            ost.codec_context.thread_count = threads
            # constant quality (ffmpeg's -q:v 3) instead of the 200 kb/s default
            if codec == "mpeg4":
                ost.codec_context.qscale, ost.codec_context.global_quality = True, 3 * 118
            for frame in inp.decode(ist):
                frame = frame.reformat(width, height, "yuv420p", interpolation="AREA")
                # frame i at i / fps: the timestamp decode_frames reads the index off
                frame.pts, frame.time_base = n, 1 / Fraction(rate)
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


def _encode_one(job):
    """Pool worker: (src, dst, short_side, codec, threads, gop, tune) -> (src, status, error);
    never raises."""
    src, dst, short_side, codec, threads, gop, tune = job
    if decodes(dst):
        return src, "skipped", None
    try:
        reencode(src, dst, short_side, codec, threads, gop, tune)
        return src, "done", None
    except Exception as e:   # noqa: BLE001 -- one unreadable video must not stop the others
        return src, "bad", f"{type(e).__name__}: {e}"


def output_paths(items, root):
    """{source path: output path relative to OUT_DIR}: the folders below root kept, suffix .mp4."""
    rel_of, used = {}, set()
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
    return rel_of


def encode(list_path, out_dir, short_side=320, workers=None, data_root=None, codec="libx264",
           quiet=False, gop=PREPARE_GOP, tune="fastdecode"):
    """Re-encode every video of a list file into out_dir and write out_dir/<list name> (same labels,
    paths relative to out_dir, bad videos left out). Parallel over processes; resumable: outputs
    that already exist and decode are skipped. -> dict(list, done, skipped, bad=[(path, error)])."""
    list_path, out_dir = Path(list_path), Path(out_dir)
    # multi_label: "3" -> [3], so multi-label lists work too
    items = data.read_list(list_path, data_root, multi_label=True)
    new_list = out_dir / list_path.name
    if new_list.resolve() == list_path.resolve():
        raise ValueError(f"encode would overwrite its input list {list_path}: "
                         f"choose another OUT_DIR")
    out_dir.mkdir(parents=True, exist_ok=True)
    rel_of = output_paths(items, Path(data_root) if data_root else list_path.parent)
    workers = max(1, min(workers or os.cpu_count() or 1, len(rel_of)))
    # codec threads per process: no oversubscription
    threads = max(1, (os.cpu_count() or 1) // workers)
    jobs = [(src, str(out_dir / rel), short_side, codec, threads, gop, tune)
            for src, rel in rel_of.items()]
    counts, bad = {"done": 0, "skipped": 0, "bad": 0}, []
    progress = Progress("prepare", len(jobs), quiet)
    for i, (src, status, err) in enumerate(pool_map(_encode_one, jobs, workers), 1):
        counts[status] += 1
        if err:
            bad.append((src, err))
        progress.update(i, f"{counts['done']} re-encoded, {counts['skipped']} already there, "
                           f"{counts['bad']} bad")
    progress.close()
    bad_paths = {src for src, _ in bad}
    lines = [f"{rel_of[src]} {','.join(map(str, labels)) if labels else '-'}"
             for src, labels in items if src not in bad_paths]
    new_list.write_text("".join(line + "\n" for line in lines))
    if not quiet:
        print(f"wrote {new_list}: {len(lines)} of {len(items)} videos "
              f"({counts['done']} re-encoded, {counts['skipped']} already there)")
        if bad:
            print(f"{len(bad)} bad video(s) left out of the list:")
            for src, err in bad:
                print(f"  {src}: {err}")
    return {"list": str(new_list), "done": counts["done"], "skipped": counts["skipped"], "bad": bad}


# ----------------------------------------------------------------------------- check

def scan_list(path, data_root=None, num_classes=None, multi_label=False):
    """Every entry line of a list, bad ones included (data.list_entries, data.parse_label):
    [dict(line, text, video, label, kind, reason)]. kind is None for a good line, else "malformed",
    "label" or "duplicate" (a path seen on an earlier good line, compared after resolving it)."""
    entries, first = data.list_entries(path, data_root), {}
    for e in entries:
        e["kind"] = "malformed" if e["reason"] else None
        if e["kind"]:
            continue
        e["video"] = os.path.normpath(e["video"])
        e["label"], reason = data.parse_label(e["label"], multi_label, num_classes)
        if reason:
            e.update(kind="label", reason=reason)
        elif e["video"] in first:
            e.update(kind="duplicate", reason=f"duplicate of line {first[e['video']]} "
                     f"({e['text'].rsplit(None, 1)[0]})")
        else:
            first[e["video"]] = e["line"]
    return entries


def _check_one(job):
    """Pool worker: open one video and decode one real clip, as the loader would; never raises.
    (line, video, num_frames, stride) -> (line, dict(frames, fps, size, ms) or None, kind,
    reason)."""
    # imported before the clock starts: the first clip of a worker is not slower
    import av  # noqa: F401
    line, video, num_frames, stride = job
    if not os.path.isfile(video):
        return line, None, "missing", f"{video}: no such file"
    if os.path.getsize(video) == 0:
        return line, None, "unreadable", f"{video}: empty file (0 bytes)"
    try:
        t0 = time.perf_counter()
        n, fps = data.video_info(video)
        if n < num_frames:
            return line, None, "too short", f"{video}: {n} frames, a clip needs {num_frames}"
        rng = np.random.default_rng([0, line])
        frames = data.decode_frames(video, data.clip_indices(n, num_frames, stride, rng))
        ms = 1000 * (time.perf_counter() - t0)
    except Exception as e:   # noqa: BLE001 -- any open/decode error makes the video bad
        why = str(e).replace(f": '{video}'", "")   # PyAV names the file again
        return line, None, "unreadable", f"{video}: {type(e).__name__}: {why}"
    size = (frames.shape[2], frames.shape[1])   # (width, height) of what the loader gets
    return line, {"frames": n, "fps": fps, "size": size, "ms": ms}, None, None


def decode_all(entries, num_frames, stride, workers, quiet=False):
    """Run _check_one on every good entry over a pool; marks the bad ones. -> {line: stats}."""
    todo = {e["line"]: e for e in entries if e["kind"] is None}
    jobs = [(n, e["video"], num_frames, stride) for n, e in todo.items()]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    # big enough to amortise IPC, small for balance
    chunk = max(1, min(32, len(jobs) // (8 * workers)))
    stats, bad = {}, 0
    progress = Progress("check", len(jobs), quiet)
    for i, (n, st, kind, reason) in enumerate(pool_map(_check_one, jobs, workers, chunk), 1):
        if kind:
            todo[n].update(kind=kind, reason=reason)
            bad += 1
        else:
            stats[n] = st
        progress.update(i, f"{i - bad} good, {bad} bad")
    progress.close()
    return stats


def spread(values, fmt="{:g}"):
    """min / median / max of a list of numbers, as text."""
    v = np.sort(np.asarray(values))
    return " / ".join(fmt.format(x) for x in (v[0], v[len(v) // 2], v[-1]))


def print_report(list_path, entries, stats, num_frames, stride):
    """The bad lines (FILE:LINE: reason), counts per kind, then what the good videos look like."""
    bad = [e for e in entries if e["kind"]]
    kinds = {}
    for e in bad:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    for e in bad:
        print(f"{list_path}:{e['line']}: {e['kind']}: {e['reason']}")
    detail = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
    print(f"{list_path}: {len(entries)} lines, {len(entries) - len(bad)} good, {len(bad)} bad"
          + (f" ({detail})" if detail else ""))
    if not stats:
        return
    s = list(stats.values())
    sizes = sorted((st["size"] for st in s), key=lambda wh: (wh[0] * wh[1], wh))
    span = (num_frames - 1) * stride + 1
    ms = [st["ms"] for st in s]
    print(f"  frames      {spread([st['frames'] for st in s])} (min / median / max)")
    print(f"  resolution  {' / '.join('%dx%d' % sizes[i] for i in (0, len(sizes) // 2, -1))}")
    print(f"  fps         {spread([st['fps'] for st in s], '{:.2f}')}")
    print(f"  decode      {np.median(ms):.1f} ms/clip median, {np.percentile(ms, 90):.1f} p90 "
          f"(open + {num_frames} frames at stride {stride}, one process)")
    short = sum(st["frames"] < span for st in s)
    if short:
        print(f"  {short} video(s) shorter than {span} frames: their clips cover them evenly "
              "(stride shrinks)")


def write_lines(out_list, lines, list_path, data_root=None, header=None, quiet=False):
    """Write lines of list_path (paths as written) to out_list. Relative paths resolve against the
    list's folder when no --data-root is given: say so when out_list lives in another folder."""
    out_list = Path(out_list)
    out_list.parent.mkdir(parents=True, exist_ok=True)
    out_list.write_text("".join(f"{x}\n" for x in ([header] if header else []) + lines))
    root = Path(data_root or Path(list_path).parent).resolve()
    if not quiet and not data_root and out_list.parent.resolve() != root:
        print(f"note: its relative paths are relative to {root}: read it with --data-root {root}")


def check(list_path, data_root=None, num_classes=None, num_frames=16, stride=4, workers=None,
          write_clean=None, multi_label=False, quiet=False):
    """Preflight a list (see the module docstring); prints the report unless quiet.
    -> dict(entries (scan_list's, with video errors filled in), stats {line: dict}, bad, clean)."""
    entries = scan_list(list_path, data_root, num_classes, multi_label)
    if not entries:
        raise ValueError(f"list file {list_path} has no entries")
    stats = decode_all(entries, num_frames, stride, workers, quiet)
    if not quiet:
        print_report(list_path, entries, stats, num_frames, stride)
    good = [e["text"] for e in entries if e["kind"] is None]
    if write_clean:
        if not quiet:
            print(f"wrote {write_clean}: {len(good)} good lines of {len(entries)}")
        write_lines(write_clean, good, list_path, data_root, quiet=quiet)
    return {"entries": entries, "stats": stats, "bad": [e for e in entries if e["kind"]],
            "clean": str(write_clean) if write_clean else None}


# ----------------------------------------------------------------------------- subset

def subset_size(n, total):
    """N as given (a count, or a fraction like 0.5 of the list) -> a number of videos."""
    text = str(n)
    try:
        fraction = any(c in text for c in ".eE")
        count = round(float(text) * total) if fraction else int(text)
    except (ValueError, OverflowError):   # not a number, NaN, infinity
        raise ValueError(f"N={text!r} is neither a count nor a fraction") from None
    if fraction and not 0 < float(text) <= 1:
        raise ValueError(f"N={text}: a fraction must lie in (0, 1]")
    if not 1 <= count <= total:
        raise ValueError(f"N={text} gives {count} videos; the list has {total}")
    return count


def subset(list_path, n, out_list, seed=0, data_root=None, multi_label=False, quiet=False):
    """Write a seeded, class-stratified subset of n videos (or a fraction) of a list to out_list;
    its lines are the input's lines, in the input's order. -> the lines written."""
    entries = scan_list(list_path, data_root, multi_label=multi_label)
    bad = [e for e in entries if e["kind"] and e["kind"] != "duplicate"]
    if bad:
        raise ValueError(f"{list_path}:{bad[0]['line']}: {bad[0]['reason']} "
                         f"({len(bad)} bad line(s): "
                         "run `python -m tools.prepare check` and --write-clean first)")
    if not entries:
        raise ValueError(f"list file {list_path} has no entries")
    count = subset_size(n, len(entries))
    lines = [text for text, _ in data.stratified_subset([(e["text"], e["label"]) for e in entries],
                                                        count, seed)]
    if not quiet:
        # as stratified_subset counts them: a multi-label line by its first label
        labels = (e["label"] for e in entries)
        classes = len({lab if isinstance(lab, int) else tuple(lab)[:1] for lab in labels})
        print(f"wrote {out_list}: {len(lines)} of {len(entries)} videos, {classes} classes, "
              f"seed {seed}")
    header = f"# {count} of {len(entries)} lines of {Path(list_path).name}, stratified, seed {seed}"
    write_lines(out_list, lines, list_path, data_root, header, quiet)
    return lines


# ----------------------------------------------------------------------------- objects

def objects(folder, out, tile=PACK_TILE, object_list=None, workers=None, quiet=False):
    """Pack a folder bank into out (packing.pack_objects); bad PNGs are named and left out."""
    progress = Progress("objects", 0, quiet, unit="objects")
    r = pack_objects(folder, out, tile, object_list, workers or os.cpu_count() or 1,
                     lambda i, n: (setattr(progress, "total", n), progress.update(i, "PNGs read")))
    progress.close()
    if not quiet:
        print(f"wrote {out}: {r['count']} objects at {tile} px, {os.path.getsize(out) / 1e9:.2f} GB"
              + "".join(f"\n  left out: {err}" for err in r["bad"]))
    return 0


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    root_help = "folder the list's relative paths are relative to (default: the list's folder)"
    p = sub.add_parser("encode",
                       help="re-encode a list once for fast decoding: encode LIST OUT_DIR")
    p.add_argument("list", help="list file '<path> <label>' (VideoMAE convention)")
    p.add_argument("out_dir",
                   help="re-encoded videos and the new list (OUT_DIR/<list name>) go here")
    p.add_argument("--short-side", type=positive_int, default=320,
                   help="K400 320, SSv2 240 (never upscales)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="processes (default: one per CPU core)")
    p.add_argument("--data-root", default=None, help=root_help)
    p.add_argument("--codec", default="libx264", choices=["libx264", "mpeg4"])
    p.add_argument("--gop", type=positive_int, default=PREPARE_GOP,
                   help=f"a key frame every N frames (default {PREPARE_GOP}: all-intra, the least "
                   "decoding; 32: ~3x less disk, ~2x the decode CPU; docs/performance.md)")
    p.add_argument("--tune", default="fastdecode", choices=["fastdecode", "none"],
                   help="libx264's tune: fastdecode (no CABAC, no deblocking) decodes faster")
    c = sub.add_parser("check", help="preflight a list: missing, unreadable, short videos, labels")
    c.add_argument("list", help="list file '<path> <label>'")
    c.add_argument("--data-root", default=None, help=root_help)
    c.add_argument("--num-classes", type=positive_int, default=None, help="labels must lie in [0, K)")
    c.add_argument("--num-frames", type=positive_int, default=16, help="frames per clip (T)")
    c.add_argument("--stride", type=positive_int, default=4, help="frame stride of a clip")
    c.add_argument("--workers", type=positive_int, default=None,
                   help="processes (default: one per CPU core)")
    c.add_argument("--multi-label", action="store_true",
                   help="labels are '3,17,42' lists ('-': none)")
    c.add_argument("--write-clean", default=None, metavar="OUT_LIST",
                   help="write the good lines here")
    s = sub.add_parser("subset", help="seeded class-stratified subset: subset LIST N OUT_LIST")
    s.add_argument("list", help="list file '<path> <label>'")
    s.add_argument("n", help="videos to keep: a count (80000) or a fraction of the list (0.5)")
    s.add_argument("out_list", help="the subset list (lines of LIST)")
    s.add_argument("--seed", type=nonneg_int, default=0)
    s.add_argument("--data-root", default=None, help=root_help)
    s.add_argument("--multi-label", action="store_true",
                   help="stratify on the first label of each line")
    o = sub.add_parser("objects", help="pack an object bank once: objects DIR OUT (one "
                       "memory-mapped file for --objects)")
    o.add_argument("folder", help="folder of RGBA object PNGs (searched recursively)")
    o.add_argument("out", help="the packed bank to write, a .npy (train.py --objects OUT)")
    o.add_argument("--object-list", default=None,
                   help="pack only these PNGs (paths relative to DIR, one per line)")
    o.add_argument("--tile", type=positive_int, default=PACK_TILE,
                   help=f"objects capped at N px (default {PACK_TILE}: draws up to 128 px at 224, "
                   "scaled with --img-size)")
    o.add_argument("--workers", type=positive_int, default=None,
                   help="processes (default: one per CPU core)")
    return parser.parse_args(argv)


def validate(a):
    """Unusable arguments: one line and exit code 2 (runtime.fail) before any work."""
    if a.command == "objects":
        return check_paths(("DIR", a.folder, "folder"), ("--object-list", a.object_list, "file"),
                           ("OUT", a.out, "out-file"))
    out = getattr(a, "write_clean", None) or getattr(a, "out_list", None)
    check_paths(("list file", a.list, "file"), ("--data-root", a.data_root, "folder"),
                ("OUT_DIR", getattr(a, "out_dir", None), "out-dir"),
                ("--write-clean" if getattr(a, "write_clean", None) else "OUT_LIST", out,
                 "out-file"))
    if out and Path(out).resolve() == Path(a.list).resolve():
        fail(f"{out} is the input list: write it somewhere else")


def main(argv=None):
    """-> exit code. check: 0 all good, 1 some lines bad; encode: 1 when no video survived."""
    a = parse_args(argv)
    validate(a)
    try:
        if a.command == "objects":
            return objects(a.folder, a.out, a.tile, a.object_list, a.workers)
        if a.command == "encode":
            r = encode(a.list, a.out_dir, a.short_side, a.workers, a.data_root, a.codec,
                       gop=a.gop, tune="" if a.tune == "none" else a.tune)
            return 1 if r["bad"] and not (r["done"] + r["skipped"]) else 0
        if a.command == "check":
            r = check(a.list, a.data_root, a.num_classes, a.num_frames, a.stride, a.workers,
                      a.write_clean, a.multi_label)
            return 1 if r["bad"] else 0
        subset(a.list, a.n, a.out_list, a.seed, a.data_root, a.multi_label)
        return 0
    except ValueError as e:   # read_list's and subset's errors name the file and line
        fail(str(e))


if __name__ == "__main__":
    raise SystemExit(main())
