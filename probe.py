"""Linear probe of a frozen SMILE encoder (paper Table 16, Sec. 4.2).

    python probe.py --preset tiny                                      # random encoder: the baseline
    python probe.py --preset tiny --checkpoint out/tiny/checkpoint-latest.pth
    torchrun --nproc_per_node=8 probe.py --dataset k400 --data-root /data/k400 --checkpoint smile_k400.pth
    python probe.py -h                                                 # every flag, with the paper's values

Protocol (Table 16): frozen encoder, tokens mean-pooled, a linear layer; AdamW lr 1e-3, wd 0.05, betas
(0.9, 0.999), batch 128, cosine; epochs K400 30, UCF 100, HMDB 100, SSv2 50, GYM 100, EPIC 100; horizontal
flips for all but SSv2. The features get a parameter-free normalisation, standardisation with the
training features' mean and std: what MAE's BatchNorm1d(affine=False) converges to.

The encoder is frozen, so features are computed ONCE: each training video's centre clip (and its
mirror image where flips are on), each validation video's test views. The head then trains on the
cached features for all epochs, each sample taking the flipped or the plain feature at random per
epoch. That is N (or 2N with flips) encoder forwards instead of N per epoch: 15x fewer for K400's 30
epochs, 50x fewer for UCF's 100. The price: no crop or temporal jitter beyond the flip. Validation views
are averaged in feature space (for a linear head, the same as averaging the views' logits).
"""
import argparse
import os
import time

import numpy as np
import torch
import torch.nn as nn

import torch.nn.functional as F

from evaluation import (DATASETS, add_data_args, build_classifier, build_datasets, check_data_args,
                        compute_metrics, per_video, read_checkpoint, write_results)
from runtime import (Log, amp_setup, apply_presets, cosine_schedule, fail, fmt_time, make_out_dir,
                     save_args, save_checkpoint, set_lr, setup_dist, teardown)

# Table 16: probe epochs per dataset (flips come with the dataset preset: all but SSv2 and motion).
PROBE_EPOCHS = {"k400": dict(epochs=30), "ucf101": dict(epochs=100), "hmdb51": dict(epochs=100),
                "ssv2": dict(epochs=50), "gym99": dict(epochs=100), "epic": dict(epochs=100)}
# --preset tiny: the 2-core CPU demo, the grid of train.py's tiny pretraining (64 px, 16 frames, 2x16x16).
# Measured: 22.7% top-1 (chance 12.5%) from a random encoder, ~12 s on 2 cores.
PRESETS = {
    "tiny": dict(dataset="motion", model="tiny", patch_size=8, tubelet=2, img_size=32, num_frames=8,
                 motion_train=1024, motion_val=256, epochs=100, workers=1, out_dir="out/probe-tiny"),
}


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", choices=sorted(PRESETS), help="tiny = the 2-core CPU demo on synthetic motion")
    add_data_args(a)
    a("--epochs", type=int, default=100, help="Table 16: K400 30, UCF 100, HMDB 100, SSv2 50, GYM 100, EPIC 100")
    a("--warmup-epochs", type=float, default=0, help="Table 16 gives none")
    a("--batch-size", type=int, default=128, help="head batch (Table 16: 128)")
    a("--feature-batch", type=int, default=16, help="videos per encoder forward per rank when caching features")
    a("--lr", type=float, default=1e-3, help="base lr for a batch of 256 (Table 16: 1e-3; actual = lr x "
      "batch / 256, the rule of Table 17's same words and of MAE's linear probe)")
    a("--min-lr", type=float, default=0.0, help="cosine floor, scaled like --lr")
    a("--weight-decay", type=float, default=0.05, help="Table 16: 0.05")
    a("--betas", type=float, nargs=2, default=[0.9, 0.999], help="Table 16: (0.9, 0.999)")
    a("--out-dir", default="out/probe", help="everything a run writes goes here")
    a("--results-file", default=None, help="append the result as a JSON row to this file")
    a("--eval-every", type=int, default=10, help="epochs between validation lines in the log")
    # dataset tables first, the preset last: a preset's values win over its dataset's; flags win over both
    tables = [("preset", PRESETS), ("dataset", DATASETS), ("dataset", PROBE_EPOCHS), ("preset", PRESETS)]
    args = apply_presets(p, tables, argv)
    if args.task == "count":
        fail("probe.py classifies (single or multi); repetition counting is finetune.py's (--task count)")
    args.metric = "map" if args.task == "multi" else "top1"
    check_data_args(args)
    return args


def main(argv=None):
    # ------------------------------------------------------------------ args
    args = get_args(argv)

    # ------------------------------------------------------------------ dist
    rank, world, device = setup_dist()
    device = torch.device(args.device) if args.device else device
    master = rank == 0
    make_out_dir(args.out_dir)
    state = read_checkpoint(args)
    torch.manual_seed(args.seed)
    log = Log(args.out_dir, master)
    if master:
        save_args(args, args.out_dir)

    # ------------------------------------------------------------------ data: one centre view per training video
    try:
        train_set, val_set = build_datasets(args, train_mode="test")   # train: one centre clip x one centre crop
    except (OSError, ValueError) as e:
        fail(str(e))

    # ------------------------------------------------------------------ frozen encoder
    # fc_norm is a finetuning layer (absent from pretraining checkpoints): the probe reads the raw mean of
    # the last block's tokens, normalised below without parameters.
    encoder = build_classifier(args, 1, state, verbose=master).to(device)   # its 1-output head is never used
    encoder.fc_norm = nn.Identity()
    encoder.eval().requires_grad_(False)
    autocast, _, _ = amp_setup(device, args.amp)
    D = encoder.head.in_features

    def features(video, flip=False):        # video (B, C, T, H, W) -> (B, D) or (B, 2D) with the mirror image
        with torch.no_grad(), autocast():
            f = encoder.forward_features(video).float()
            return torch.cat([f, encoder.forward_features(video.flip(-1)).float()], 1) if flip else f

    # ------------------------------------------------------------------ features, computed once
    t0 = time.time()
    n_train, n_val = len(train_set.targets()), len(val_set.targets())
    if master:
        print(f"probing {args.model} on {args.dataset}: caching features of {n_train} training videos"
              f"{' (and their mirror images)' if args.flip else ''} and {n_val} validation videos ("
              f"{1 if args.dataset == 'motion' else args.test_clips * args.test_crops} views each) | "
              f"{world} rank(s) on {device}", flush=True)
    f_train = per_video(lambda v: features(v, args.flip), train_set, D * (2 if args.flip else 1), args.feature_batch,
                        args.workers, rank, world, device, log, "train features")
    f_train = f_train.view(n_train, -1, D)                                   # (N, 1 or 2, D)
    f_val = per_video(features, val_set, D, args.feature_batch, args.workers, rank, world, device, log, "val features")
    forwards = n_train * f_train.shape[1]
    log({"feature_time": time.time() - t0, "encoder_forwards": forwards, "forwards_without_cache": n_train * args.epochs},
        f"features cached in {fmt_time(time.time() - t0)}: {forwards} encoder forwards for the training set instead "
        f"of {n_train * args.epochs} ({args.epochs} epochs x {n_train})")
    # parameter-free normalisation with training statistics (MAE: BatchNorm1d without affine)
    mean, std = f_train.flatten(0, 1).mean(0), f_train.flatten(0, 1).std(0) + 1e-6
    f_train, f_val = (f_train - mean) / std, (f_val - mean) / std

    # ------------------------------------------------------------------ head, trained on the device
    # every rank trains the same head on the same cached features, in lockstep (no collective needed)
    head = nn.Linear(D, args.num_classes).to(device)
    nn.init.trunc_normal_(head.weight, std=0.01)   # as MAE's linear probe
    nn.init.zeros_(head.bias)
    y_train, y_val = train_set.targets().to(device), val_set.targets().to(device)
    train_head(head, f_train, y_train, f_val, y_val, args, log)

    # ------------------------------------------------------------------ results + teardown
    metrics = head_metrics(head, f_val, y_val, args.task)
    if master:
        save_checkpoint({"head": head.state_dict(), "feature_mean": mean.cpu(), "feature_std": std.cpu(),
                         "args": vars(args)}, os.path.join(args.out_dir, "probe-head.pth"))
        write_results(args, metrics, args.metric, "probe")
    teardown(world, device)
    return metrics


def head_loss(task, out, y):
    """Cross-entropy (single-label) or BCE on sigmoids (multi-label, multi-hot y)."""
    return F.binary_cross_entropy_with_logits(out, y) if task == "multi" else F.cross_entropy(out, y)


@torch.no_grad()
def head_metrics(head, f_val, y_val, task):
    out = head(f_val)
    return compute_metrics(task, out.sigmoid() if task == "multi" else out.softmax(-1), y_val)


def train_head(head, f_train, y_train, f_val, y_val, args, log):
    """AdamW + cosine over the cached features (Table 16); each sample takes its plain or mirrored
    feature at random per epoch. The lr follows the linear scaling rule (lr x batch / 256)."""
    n_train = len(f_train)
    lr, min_lr = args.lr * args.batch_size / 256, args.min_lr * args.batch_size / 256
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, betas=tuple(args.betas),
                                  weight_decay=args.weight_decay)
    steps_per_epoch = (n_train + args.batch_size - 1) // args.batch_size
    lrs = cosine_schedule(lr, min_lr, args.epochs * steps_per_epoch, int(args.warmup_epochs * steps_per_epoch))
    step, t0 = 0, time.time()
    for epoch in range(args.epochs):
        gen = torch.Generator().manual_seed(int(np.random.default_rng([args.seed, epoch]).integers(2 ** 62)))
        order = torch.randperm(n_train, generator=gen).to(f_train.device)
        view = torch.randint(f_train.shape[1], (n_train,), generator=gen).to(f_train.device)
        total = torch.zeros((), device=f_train.device)
        for b in range(steps_per_epoch):
            idx = order[b * args.batch_size:(b + 1) * args.batch_size]
            set_lr(optimizer, lrs[step])
            loss = head_loss(args.task, head(f_train[idx, view[idx]]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            total += loss.detach()
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            metrics = head_metrics(head, f_val, y_val, args.task)
            eta = (args.epochs - epoch - 1) * (time.time() - t0) / (epoch + 1)
            loss = total.item() / steps_per_epoch
            log({"epoch": epoch + 1, "loss": loss, "lr": float(lrs[step - 1]), **metrics},
                f"epoch {epoch + 1}/{args.epochs} | loss {loss:.4f} | lr {lrs[step - 1]:.2e} | "
                + " | ".join(f"val {k} {v:.2f}" for k, v in metrics.items()) + f" | eta {fmt_time(eta)}")


if __name__ == "__main__":
    main()
