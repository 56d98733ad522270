"""A miniature of the paper's Table 7 (learning without natural video), and of Table 4g, on a
2-core CPU.

    python -m tools.table7                 # 5 seeds, all rows, a quarter of the budget: ~70 min
                                          # on 2 cores, and its rows cannot be told apart
    python -m tools.table7 --budget demo   # 5 seeds, all rows at the demo's own budget (the tiny
                                          # presets unchanged): ~3 hours on a fast 2-core machine
    python -m tools.table7 --budget demo32 # the same at the previous demo's 32 pretraining epochs:
                                          # docs/table7.md's 5 x 6 table, 132 min measured
    python -m tools.table7 --seeds 0 1 2 --rows motion nomotion none      # a subset: the rows by tag
    python -m tools.table7 --seeds 0 --quick   # one seed, 2 pretraining / 1 finetuning epochs:
                                              # a smoke run
    python -m tools.table7 --table-only        # the table of the seeds finished in out/table7
                                              # (with --budget B: in that budget's folder)

Rows (tags in brackets), all pretrained with `train.py --preset tiny` (the demo's model, grid, lr
and pixel targets; Table 7's "no natural video" setting) for --pretrain-epochs on a different
background:
  stills + motion [motion]       synthetic landscape stills, objects pasted along trajectories,
                                 trajectory masking
  stills, no motion [nomotion]   the same stills, no objects (tube masking)
  stills + motion, tube masking [tube]   Table 4g: the motion row with --masking tube
  noise + motion [noise]         uniform-noise background + objects (the paper's headline row)
  black + motion [black]         black background + objects
  not pretrained [none]          a random encoder
Each encoder is evaluated twice, as Table 7 does and as a second view: full finetuning on the
synthetic `motion` dataset (8 classes that only the motion tells apart) and the mean-pooled linear
probe (Table 16) on the same data. Same seeds, same budgets for every row; the seed sets the
initialisation, the pretraining stream and the `motion` data. Below the table, a paired comparison:
per seed, the difference between two rows, its mean ± std, and in how many seeds it has the sign of
the mean.

Every step is a plain command of this repository (printed before it runs), so any cell can be rerun
by hand; a step whose output is already in --out-dir is not run again, so an interrupted run
continues where it stopped. The stills are train.py's `--dataset stills`: motion.still_image
landscapes (the generator that draws the `motion` dataset's image backgrounds), so nothing is
downloaded. Two (seed, row) cells run at a time (--jobs), each on one thread.
"""
import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time

import numpy as np

from runtime import Parser, nonneg_int, positive_float, positive_int

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository

# (name, tag, train.py flags on top of --preset tiny); None = not pretrained
ROWS = [
    ("stills + motion", "motion",
     ["--dataset", "stills", "--strategy", "single"]),
    ("stills, no motion", "nomotion",
     ["--dataset", "stills", "--strategy", "none"]),
    ("stills + motion, tube masking", "tube",
     ["--dataset", "stills", "--strategy", "single", "--masking", "tube"]),
    ("noise + motion", "noise", ["--dataset", "noise"]),
    ("black + motion", "black", ["--dataset", "black"]),
    ("not pretrained", "none", None),
]
# paired comparisons (a - b, per seed) and what each one asks
COMPARISONS = [
    ("stills + motion", "stills, no motion", "Table 7: motion vs no motion"),
    ("stills + motion", "not pretrained", "motion pretraining vs none"),
    ("stills, no motion", "not pretrained", "pretraining without motion vs none"),
    ("noise + motion", "not pretrained", "noise + motion vs none"),
    ("black + motion", "not pretrained", "black + motion vs none"),
    ("stills + motion", "stills + motion, tube masking", "Table 4g: trajectory vs tube masking"),
]
METRICS = (("finetune", "finetune top-1"), ("probe", "linear probe top-1"))


def run(cmd, log, threads=None):
    """Run one command of this repository, its output to log; threads: OMP/torch threads."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    print("$ " + " ".join(cmd), flush=True)
    t = time.time()
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, *cmd], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                           env=env)
    if r.returncode:
        raise RuntimeError(f"failed ({r.returncode}): {' '.join(cmd)}; see {log}")
    print(f"  done in {time.time() - t:.0f} s: {log}", flush=True)


def given(*pairs):
    """(flag, value) pairs -> command-line words; a None value passes no flag (the preset's own)."""
    return [w for flag, value in pairs if value is not None for w in (flag, str(value))]


def finished(log):
    """A train.py run is complete when its output ends with 'done: N steps'."""
    return os.path.isfile(log) and "\ndone: " in open(log).read()


def last_loss(log_path):
    rows = [json.loads(line) for line in open(log_path) if line.strip()]
    rows = [r for r in rows if "loss" in r]
    tail = rows[-max(1, len(rows) // 10):]         # mean over the last tenth of the log
    return {k: float(np.mean([r[k] for r in tail])) for k in ("loss", "floor_zero", "floor_mean")}


def token_rms(checkpoint, size, frames, patch):
    """RMS of the encoder's output tokens on 64 `motion` validation clips: how far pretraining grew
    the residual stream (a random init gives ~2)."""
    import torch
    import data
    import evaluation
    from model import MODEL_SIZES, VideoClassifier, load_encoder
    ds = evaluation.MotionClassDataset("val", 64, mode="test", img_size=size, num_frames=frames)
    video = data.normalize(torch.stack([ds[i]["video"][0] for i in range(64)]))
    model = VideoClassifier(img_size=size, patch_size=patch, num_frames=frames, num_classes=8,
                            **MODEL_SIZES["tiny"])
    if checkpoint:
        load_encoder(model, checkpoint, verbose=False)
    with torch.no_grad():
        return model.eval().forward_tokens(video).pow(2).mean().sqrt().item()


def collect(out, seeds, tags):
    """The table's rows from the run folders: every seed whose cells have all finished (a run
    interrupted mid-seed gives the table of its finished seeds) -> (rows, those seeds, the setting
    the runs saved in their args.json: grid, epochs, lrs)."""
    def paths(seed, tag):
        return (os.path.join(out, f"pretrain-{tag}-s{seed}"),
                *(os.path.join(out, f"{k}-{tag}-s{seed}", "results.json") for k in ("ft", "probe")))
    done = [s for s in seeds if all(os.path.isfile(ft) and os.path.isfile(pr) for _, tag, _ in tags
                                    for _, ft, pr in [paths(s, tag)])]
    rows, setting = {name: {} for name, _, _ in tags}, {}
    for seed in done:
        for name, tag, flags in tags:
            r, ckpt = rows[name], None
            d, ft, pr = paths(seed, tag)
            saved = json.load(open(os.path.join(os.path.dirname(ft), "args.json")))
            grid = saved["img_size"], saved["num_frames"], saved["patch_size"]
            setting.setdefault("grid", grid)
            setting.setdefault("finetune_epochs", saved["epochs"])
            if flags is not None:
                ckpt = os.path.join(d, "checkpoint-latest.pth")
                r.setdefault("pretrain", []).append(last_loss(os.path.join(d, "log.jsonl")))
                saved = json.load(open(os.path.join(d, "args.json")))
                setting.setdefault("pretrain_epochs", saved["epochs"])
                setting.setdefault("pretrain_lr", saved["lr"])
            r.setdefault("token_rms", []).append(token_rms(ckpt, *grid))
            r.setdefault("finetune", []).append(json.load(open(ft))["top1"])
            r.setdefault("probe", []).append(json.load(open(pr))["top1"])
    return rows, done, setting


def budgets():
    """--budget: the per-seed budgets of a whole table; explicit flags win. quarter fits 5 seeds x
    6 rows in about an hour on 2 cores and cannot tell its rows apart; demo is the README demo's
    own budget: no budget flag at all, the tiny presets of train.py and finetune.py as they are
    (~3 hours for 5 x 6); demo32 is the previous demo's (32 pretraining epochs), where
    docs/table7.md's 5 x 6 table was measured (132 min)."""
    return {
        "quarter": dict(pretrain_epochs=8, pretrain_batch=32, pretrain_lr=4e-3, finetune_epochs=3,
                        finetune_lr=1.6e-2, out_dir="out/table7"),
        "demo32": dict(pretrain_epochs=32, pretrain_batch=16, pretrain_lr=4e-3, finetune_epochs=10,
                       finetune_lr=4e-3, out_dir="out/table7-demo32"),
        "demo": dict(out_dir="out/table7-demo"),
    }


def get_args(argv=None):
    budget_table = budgets()
    p = Parser(description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=nonneg_int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--rows", nargs="+", default=[t for _, t, _ in ROWS],
                   choices=[t for _, t, _ in ROWS],
                   help="which rows to run, by tag (default: all)")
    p.add_argument("--budget", default="quarter", choices=sorted(budget_table),
                   help="per-seed budgets (the flags below override them): quarter = "
                   f"{budget_table['quarter']}; demo = the tiny presets' own (no budget flag "
                   f"passed); demo32 = {budget_table['demo32']}, the previous demo's")
    p.add_argument("--out-dir", default=None, help="default: by --budget")
    p.add_argument("--pretrain-epochs", type=positive_int, default=None,
                   help="train.py --epochs (1,024 clips each); quarter: 8, a quarter of the "
                   "previous demo's steps; demo32: 32; demo: the tiny preset's")
    p.add_argument("--finetune-epochs", type=positive_int, default=None,
                   help="finetune.py --epochs; quarter: 3, demo32: 10, demo: its tiny preset's")
    p.add_argument("--pretrain-lr", type=positive_float, default=None,
                   help="train.py --lr (base lr for 256 clips); quarter, demo32: 4e-3; demo: the "
                   "tiny preset's")
    p.add_argument("--pretrain-batch", type=positive_int, default=None,
                   help="train.py --batch-size; quarter: 32, the demo's batch before it moved "
                   "to 16; demo: the tiny preset's")
    p.add_argument("--finetune-lr", type=positive_float, default=None,
                   help="finetune.py --lr (per 256); quarter: 1.6e-2, the tiny preset's before it "
                   "moved; demo: the tiny preset's")
    p.add_argument("--grid", nargs=3, type=positive_int, default=None, metavar=("SIZE", "FRAMES", "PATCH"),
                   help="clip size, frames and patch of every run (tubelet 2); "
                   "default: the tiny presets' own")
    p.add_argument("--jobs", type=positive_int, default=2,
                   help="(seed, row) cells run at a time, each on 1 thread (default 2: on 2 cores "
                   "the tiny model runs ~2x faster as two 1-thread jobs than as one 2-thread job)")
    p.add_argument("--table-only", action="store_true",
                   help="print the table of a finished run in --out-dir")
    p.add_argument("--quick", action="store_true", help="2 pretraining epochs, 1 finetuning epoch")
    args = p.parse_args(argv)
    for k, v in budget_table[args.budget].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.quick:
        args.pretrain_epochs, args.finetune_epochs = 2, 1
    return args


def main():
    args = get_args()
    out = args.out_dir
    os.makedirs(out, exist_ok=True)
    grid = given(*zip(("--img-size", "--num-frames", "--patch-size"), args.grid or [None] * 3))
    common = ["--preset", "tiny", *grid, "--log-every", "32", "--save-every", "0",
              *given(("--epochs", args.pretrain_epochs), ("--lr", args.pretrain_lr),
                     ("--batch-size", args.pretrain_batch))]
    tags = [(name, tag, flags) for name, tag, flags in ROWS if tag in args.rows]
    if args.table_only:          # the table of the finished seeds in --out-dir, nothing run
        rows, args.seeds, setting = collect(out, args.seeds, tags)
        if not args.seeds:
            sys.exit(f"tools/table7.py --table-only: no seed has finished every row in {out} "
                     "(a seed counts once its finetune and probe results.json exist for every row)")
        return write_table(rows, args.seeds, setting, out)

    def cell_runs(seed, tag, flags):
        """One (seed, row): pretrain (unless not pretrained), finetune, probe; a step whose output
        exists is skipped."""
        threads = 1 if args.jobs > 1 else None   # 1 thread a job: 2 jobs on 2 cores ~ 2x one
        ckpt = None
        if flags is not None:
            d = os.path.join(out, f"pretrain-{tag}-s{seed}")
            if not finished(d + ".log"):
                run(["train.py", *common, *flags, "--seed", str(seed), "--out-dir", d, "--resume"],
                    d + ".log", threads)
            ckpt = os.path.join(d, "checkpoint-latest.pth")
        ck = ["--checkpoint", ckpt] if ckpt else []
        ft, pr = os.path.join(out, f"ft-{tag}-s{seed}"), os.path.join(out, f"probe-{tag}-s{seed}")
        if not os.path.isfile(os.path.join(ft, "results.json")):
            run(["finetune.py", "--preset", "tiny", *grid, *ck, "--seed", str(seed),
                 *given(("--epochs", args.finetune_epochs), ("--lr", args.finetune_lr)),
                 "--out-dir", ft], ft + ".log", threads)
        if not os.path.isfile(os.path.join(pr, "results.json")):
            run(["probe.py", "--preset", "tiny", *grid, *ck, "--seed", str(seed),
                 "--out-dir", pr], pr + ".log", threads)

    t0 = time.time()
    # --jobs cells at a time, in seed order, so an interrupted run holds whole seeds
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(cell_runs, seed, tag, flags)
                   for seed in args.seeds for _, tag, flags in tags]
        for f in futures:
            f.result()                                   # re-raises a failed step
    print(f"all runs done in {(time.time() - t0) / 60:.1f} min", flush=True)
    rows, args.seeds, setting = collect(out, args.seeds, tags)
    write_table(rows, args.seeds, setting, out)


def cell(v, digits=1):
    return (f"{np.mean(v):.{digits}f} ± {np.std(v):.{digits}f}" if len(v) > 1
            else f"{v[0]:.{digits}f}")


def paired(a, b):
    """Per-seed differences a - b -> (differences, 'mean ± std', 'k/n'): k = seeds with the mean's
    sign."""
    d = np.asarray(a, float) - np.asarray(b, float)
    sign = np.sign(d.mean())
    return d, cell(d), f"{int((np.sign(d) == sign).sum())}/{len(d)}" if sign else "—"


def format_table(rows, seeds, setting):
    """The markdown of the table, the per-seed values and the paired comparisons. setting:
    collect's (grid, finetune_epochs, and for pretrained rows pretrain_epochs, pretrain_lr)."""
    grid = setting["grid"]
    pretraining = (f"pretraining {setting['pretrain_epochs']} epochs at lr "
                   f"{setting['pretrain_lr']:g} (per 256 clips), " if "pretrain_epochs" in setting
                   else "")
    lines = ["| pretraining (tiny, pixel targets) | loss / mean floor | finetune top-1 | "
             "linear probe top-1 | token RMS |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        ratio = (cell([x["loss"] / x["floor_mean"] for x in r["pretrain"]], 2) if "pretrain" in r
                 else "—")
        lines.append(f"| {name} | {ratio} | {cell(r['finetune'])} | {cell(r['probe'])} | "
                     f"{cell(r['token_rms'])} |")
    lines.append(f"\n`motion` dataset, 8 classes (chance 12.5%); "
                 f"mean ± std over seeds {', '.join(map(str, seeds))}; "
                 f"{pretraining}finetuning {setting['finetune_epochs']} epochs; grid {grid[0]} px, "
                 f"{grid[1]} frames, "
                 f"2x{grid[2]}x{grid[2]} tubelets.")
    lines += ["", "Per seed (" + ", ".join(f"seed {s}" for s in seeds) + "):", "",
              "| pretraining | finetune top-1 | linear probe top-1 |", "|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {' / '.join(f'{v:.1f}' for v in r['finetune'])} | "
                     f"{' / '.join(f'{v:.1f}' for v in r['probe'])} |")
    lines += ["",
              "Paired by seed (row a minus row b, the same seed; "
              "'agree' = seeds with the sign of the mean):",
              "",
              "| comparison | a − b | finetune: per seed | mean ± std | agree | "
              "probe: per seed | mean ± std | agree |",
              "|---|---|---|---|---|---|---|---|"]
    for a, b, what in COMPARISONS:
        if a not in rows or b not in rows:
            continue
        cells = []
        for metric, _ in METRICS:
            d, ms, agree = paired(rows[a][metric], rows[b][metric])
            cells += [" / ".join(f"{x:+.1f}" for x in d), ms, agree]
        lines.append(f"| {what} | {a} − {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(rows, seeds, setting, out_dir):
    text = format_table(rows, seeds, setting)
    with open(os.path.join(out_dir, "table7.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out_dir, "table7.json"), "w") as f:
        json.dump({"seeds": seeds, "rows": rows, "setting": setting}, f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
