"""A miniature of the paper's Table 7 (learning without natural video) on a 2-core CPU.

    python docs/table7.py                      # 2 seeds, ~30 minutes on 2 cores; writes out/table7/table7.md
    python docs/table7.py --seeds 0 --quick    # one seed, shorter budgets: a smoke run of the protocol
    python docs/table7.py --grid 64 16 16 --pretrain-epochs 12 --out-dir out/table7-64   # the demo's grid

Rows: the tiny model pretrained (pixel targets, Table 7's "no natural video" setting) on synthetic still
images WITH synthetic motion (objects pasted along trajectories, trajectory masking), on the same stills
WITHOUT motion (tube masking), and not pretrained at all. Each encoder is evaluated twice, as Table 7 does
and as a second view: full finetuning on the synthetic `motion` dataset (8 classes that only the motion
tells apart) and the mean-pooled linear probe (Table 16) on the same data. Same seeds, same budgets.

Every step is a plain command of this repository (printed before it runs), so any row can be rerun by
hand. The stills are motion.still_image landscapes written to out/table7/stills/ (the same generator
that draws the `motion` dataset's image backgrounds), so nothing is downloaded.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run(cmd, log):
    print("$ " + " ".join(cmd), flush=True)
    t = time.time()
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, *cmd], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        sys.exit(f"failed ({r.returncode}); see {log}")
    print(f"  done in {time.time() - t:.0f} s", flush=True)


def write_stills(folder, n, size, seed):
    import motion
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng([seed, 99])
    for i in range(n):
        Image.fromarray(motion.still_image(size, size, rng)).save(os.path.join(folder, f"{i:04d}.png"))


def last_loss(log_path):
    rows = [json.loads(line) for line in open(log_path) if line.strip()]
    rows = [r for r in rows if "loss" in r]
    tail = rows[-max(1, len(rows) // 10):]                      # mean over the last tenth of the log
    return {k: float(np.mean([r[k] for r in tail])) for k in ("loss", "floor_zero", "floor_mean")}


def token_rms(checkpoint, size, frames, patch):
    """RMS of the encoder's output tokens on 64 `motion` validation clips: how far pretraining grew the
    residual stream (a random init gives ~2)."""
    import torch
    import data
    import evaluation
    from model import MODEL_SIZES, VideoClassifier, load_encoder
    ds = evaluation.MotionClassDataset("val", 64, mode="test", img_size=size, num_frames=frames)
    video = data.normalize(torch.stack([ds[i]["video"][0] for i in range(64)]))
    model = VideoClassifier(img_size=size, patch_size=patch, num_frames=frames, num_classes=8, **MODEL_SIZES["tiny"])
    if checkpoint:
        load_encoder(model, checkpoint, verbose=False)
    with torch.no_grad():
        return model.eval().forward_tokens(video).pow(2).mean().sqrt().item()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out-dir", default="out/table7")
    p.add_argument("--pretrain-epochs", type=int, default=48, help="effective epochs of 1024 stills x 2 clips")
    p.add_argument("--finetune-epochs", type=int, default=20)
    p.add_argument("--pretrain-lr", type=float, default=4e-3, help="train.py --lr (base lr for 256 clips): 4e-3 "
                   "(5e-4 at batch 32); the demo preset's 1.6e-2 grows the token scale 7-13x and hurts finetuning")
    p.add_argument("--grid", nargs=3, type=int, default=[32, 8, 8], metavar=("SIZE", "FRAMES", "PATCH"),
                   help="clip size, frames and patch of every run (tubelet 2); see the README for why 32/8/8")
    p.add_argument("--table-only", action="store_true", help="print the table of a finished run in --out-dir")
    p.add_argument("--quick", action="store_true", help="2 pretraining epochs, 1 finetuning epoch")
    args = p.parse_args()
    if args.quick:
        args.pretrain_epochs, args.finetune_epochs = 2, 1
    out = args.out_dir
    if args.table_only:                                          # redraw the table from a finished run
        return write_table(json.load(open(os.path.join(out, "table7.json"))), args)
    stills = os.path.join(out, "stills")
    write_stills(stills, 1024, 2 * args.grid[0], 0)                            # 1024 stills x 2 clips: the demo's steps per epoch

    # the demo's optimizer settings (train.py --preset tiny) on --grid: 32 px, 8 frames, 2x8x8 tubelets = 64
    # tokens by default, where the `motion` task is learnable from scratch in minutes (README, Table 7)
    grid = ["--img-size", str(args.grid[0]), "--num-frames", str(args.grid[1]), "--patch-size", str(args.grid[2])]
    common = ["--preset", "tiny", *grid, "--dataset", "images", "--image-dir", stills, "--log-every", "50",
              "--epochs", str(args.pretrain_epochs), "--save-every", "0"]
    rows = {}
    for seed in args.seeds:
        pre = [("stills + motion", "motion", ["--strategy", "single"]),
               ("stills, no motion", "nomotion", ["--strategy", "none"])]
        ckpts = {"not pretrained": None}
        for name, tag, extra in pre:
            d = os.path.join(out, f"pretrain-{tag}-s{seed}")
            lr = ["--lr", str(args.pretrain_lr)] if args.pretrain_lr else []
            run(["train.py", *common, *extra, *lr, "--seed", str(seed), "--out-dir", d], d + ".log")
            ckpts[name] = os.path.join(d, "checkpoint-latest.pth")
            rows.setdefault(name, {}).setdefault("pretrain", []).append(last_loss(os.path.join(d, "log.jsonl")))
        for name, ckpt in ckpts.items():
            tag = name.replace(" ", "_").replace(",", "").replace("+", "plus")
            ck = ["--checkpoint", ckpt] if ckpt else ["--model", "tiny"]
            ft, pr = os.path.join(out, f"ft-{tag}-s{seed}"), os.path.join(out, f"probe-{tag}-s{seed}")
            run(["finetune.py", "--preset", "tiny", *grid, *ck, "--seed", str(seed), "--epochs", str(args.finetune_epochs),
                 "--out-dir", ft], ft + ".log")
            run(["probe.py", "--preset", "tiny", *grid, *ck, "--seed", str(seed), "--out-dir", pr], pr + ".log")
            r = rows.setdefault(name, {})
            r.setdefault("token_rms", []).append(token_rms(ckpt, *args.grid))
            r.setdefault("finetune", []).append(json.load(open(os.path.join(ft, "results.json")))["top1"])
            r.setdefault("probe", []).append(json.load(open(os.path.join(pr, "results.json")))["top1"])

    write_table(rows, args)


def write_table(rows, args):
    def cell(v, digits=1):
        return f"{np.mean(v):.{digits}f} ± {np.std(v):.{digits}f}" if len(v) > 1 else f"{v[0]:.{digits}f}"

    lines = ["| pretraining (tiny, pixel targets) | loss / mean floor | finetune top-1 | linear probe top-1 | token RMS |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        ratio = cell([x["loss"] / x["floor_mean"] for x in r["pretrain"]], 2) if "pretrain" in r else "—"
        lines.append(f"| {name} | {ratio} | {cell(r['finetune'])} | {cell(r['probe'])} | {cell(r['token_rms'])} |")
    lines.append(f"\n`motion` dataset, 8 classes (chance 12.5%); mean ± std over seeds {args.seeds}; pretraining "
                 f"{args.pretrain_epochs} epochs at lr {args.pretrain_lr or 1.6e-2} (per 256), finetuning {args.finetune_epochs} "
                 f"epochs; grid {args.grid}.")
    text = "\n".join(lines)
    with open(os.path.join(args.out_dir, "table7.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out_dir, "table7.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
