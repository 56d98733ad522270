"""Probes of a frozen SMILE encoder: Table 16's linear probe (Sec. 4.2), V-JEPA's attentive probe.

    python probe.py --preset tiny                       # random encoder: the baseline
    python probe.py --preset tiny --head attentive      # the same, attentive probe
    python probe.py --preset tiny --checkpoint out/tiny/checkpoint-latest.pth
    torchrun --nproc_per_node=8 probe.py --dataset k400 --data-root /data/k400 --checkpoint s.pth
    python probe.py -h                                  # every flag, with the values

--head linear (default), Table 16's values: frozen encoder, tokens mean-pooled, a linear layer;
AdamW lr 1e-3, wd 0.05, betas (0.9, 0.999), batch 128, cosine; epochs K400 30, UCF 100, HMDB 100,
SSv2 50, GYM 100, EPIC 100; horizontal flips for all but SSv2. Table 1's numbers come from another
probe, SIGMA's (finetuning with the encoder frozen: `finetune.py --linear-probing`); which choices
differ, and the source of each: docs/evaluation.md. The features get a
parameter-free normalisation, standardisation with the training features' mean and std: what MAE's
BatchNorm1d(affine=False) converges to. The encoder is frozen, so features are computed ONCE: each
training video's centre clip (and its mirror image where flips are on), each validation video's
test views. The head then trains on the cached features, each sample taking the flipped or the
plain feature at random per epoch: N (or 2N) encoder forwards instead of N per epoch, 15x fewer for
K400's 30 epochs. The price: no crop or temporal jitter beyond the flip. Validation views are
averaged in feature space (for a linear head, the same as averaging the views' logits).

--head attentive, the probe V-JEPA made standard for frozen video encoders (facebookresearch/jepa,
evals/video_classification_frozen/eval.py, configs/evals/vitl16_k400_16x8x3.yaml): one learned
query cross-attends to all N tokens of the last block (one cross-attention block with an MLP, as
many heads as the encoder), then a linear layer. AdamW lr 1e-3 at batch 256 (4 x 64 GPUs), wd 0.01
(none on biases and norms), betas (0.9, 0.999), no warm-up, cosine to 0, 20 epochs, gradients
clipped at 1. --attn-depth > 1 adds self-attention blocks over the tokens before the pooling, as
V-JEPA 2 does (facebookresearch/vjepa2 configs/eval/vitl/k400.yaml: 4 probe blocks, 16 heads). The
tokens are layer-normalised without parameters (V-JEPA's encoder ends in a LayerNorm, our
classifier does not). Training sees the same centre clip (and mirror image) as the linear probe,
not V-JEPA's augmented 8 x 16-frame segments. Tokens are cached like the features when they fit in
--cache-gb (small sets); otherwise (K400's would take hundreds of GB) the encoder runs every epoch
under no_grad, each rank on its share of every batch, gradients all-reduced. Validation: the
head's softmax on every test view's tokens, averaged over the views (as V-JEPA), the encoder run
again at each evaluation (the tokens of all views are not kept).
"""
import argparse
import collections
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import data
from evaluation import (EVAL_DATASETS, add_data_args, build_classifier, build_datasets,
                        check_data_args, check_data_paths, compute_metrics, eval_collate, per_video,
                        read_checkpoint, write_results)
from model import Block, Mlp
from runtime import (Log, Parser, add_wandb_args, all_reduce, amp_setup, apply_presets, below_one,
                     cosine_schedule, fail, fmt_time, make_out_dir, no_weight_decay, nonneg_float,
                     positive_float, positive_int, save_args, save_checkpoint, set_lr, setup_dist,
                     teardown)

# Table 16: probe epochs per dataset (flips come with the dataset preset: all but SSv2 and motion).
PROBE_EPOCHS = {"k400": dict(epochs=30), "ucf101": dict(epochs=100), "hmdb51": dict(epochs=100),
                "ssv2": dict(epochs=50), "gym99": dict(epochs=100), "epic": dict(epochs=100)}
# Per-head defaults, applied after the dataset tables: linear = the parser's (Table 16); attentive =
# V-JEPA's K400 recipe (jepa configs/evals/vitl16_k400_16x8x3.yaml and eval.py's init_opt and
# clip_grad_norm_; 4 clips per GPU x 8 nodes x 8 GPUs = 256). V-JEPA decays wd by cosine to 1e-6,
# V-JEPA 2 keeps it constant (final_weight_decay = weight_decay): constant here.
HEADS = {"linear": {},
         "attentive": dict(epochs=20, batch_size=256, lr=1e-3, min_lr=0.0, weight_decay=0.01,
                           warmup_epochs=0, betas=[0.9, 0.999], clip_grad=1.0)}
# --preset tiny: the 2-core CPU demo, the grid of train.py's tiny pretraining (32 px, 8 frames,
# 2x8x8 tubelets). Its numbers, pretrained and random, over seeds: docs/demo.md.
PRESETS = {
    "tiny": dict(dataset="motion", model="tiny", patch_size=8, tubelet=2, img_size=32, num_frames=8,
                 motion_train=1024, motion_val=1024, epochs=100, workers=1, out_dir="out/probe-tiny"),
}
# The tiny preset's attentive run, shortened to fit the demo's minute: 10 epochs of 64 clips, 160
# steps in all, where V-JEPA's base lr 1e-3 barely moves the head (measured 17-20% top-1); 3e-2
# (7.5e-3 actual): 45.7%, against the linear probe's 23.0%, in ~50 s of CPU time.
PRESET_HEADS = {"tiny": {"attentive": dict(epochs=10, batch_size=64, lr=3e-2)}}

Run = collections.namedtuple("Run", "rank world device log")


def get_args(argv=None):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", choices=sorted(PRESETS), help="tiny = the 2-core CPU demo on synthetic motion")
    add_data_args(a, tasks=("single", "multi"))   # counting is finetune.py's (--task count)
    a("--head", default="linear", choices=sorted(HEADS), help="linear: Table 16's probe on "
      "mean-pooled features; attentive: V-JEPA's cross-attention pooler on the tokens (jepa "
      "configs/evals/vitl16_k400_16x8x3.yaml: its own defaults, marked V-JEPA below)")
    a("--attn-depth", type=positive_int, default=1, help="attentive: blocks (V-JEPA: 1 = the "
      "cross-attention block only; V-JEPA 2: 4 = 3 self-attention blocks over the tokens + the "
      "cross-attention)")
    a("--attn-heads", type=positive_int, default=None, help="attentive: heads (default the encoder's, as "
      "V-JEPA)")
    a("--cache-gb", type=nonneg_float, default=4.0, help="attentive: cache the training tokens (per rank, "
      "on the device) when they fit in this many GB, else run the encoder every epoch (0: never)")
    a("--epochs", type=positive_int, default=100, help="linear, Table 16: K400 30, UCF 100, HMDB 100, SSv2 "
      "50, GYM 100, EPIC 100; attentive, V-JEPA: 20")
    a("--warmup-epochs", type=nonneg_float, default=0, help="Table 16 gives none, V-JEPA uses none")
    a("--batch-size", type=positive_int, default=128, help="head batch (Table 16: 128; V-JEPA: 256)")
    a("--feature-batch", type=positive_int, default=16, help="videos per encoder forward per rank")
    a("--lr", type=positive_float, default=1e-3, help="base lr for a batch of 256 (Table 16: 1e-3; V-JEPA: "
      "1e-3 at 256); actual = lr x batch / 256, the rule of Table 17's same words and of MAE's "
      "linear probe")
    a("--min-lr", type=nonneg_float, default=0.0, help="cosine floor, scaled like --lr")
    a("--weight-decay", type=nonneg_float, default=0.05, help="Table 16: 0.05; V-JEPA: 0.01")
    a("--betas", type=below_one, nargs=2, default=[0.9, 0.999],
      help="Table 16 and V-JEPA: (0.9, 0.999)")
    a("--clip-grad", type=positive_float, default=None,
      help="gradient norm clip (V-JEPA: 1.0; Table 16: none)")
    a("--out-dir", default="out/probe", help="everything a run writes goes here")
    a("--results-file", default=None, help="append the result as a JSON row to this file")
    a("--eval-every", type=positive_int, default=10, help="epochs between validation lines in the log")
    add_wandb_args(a)
    # dataset tables first, then the head's recipe, the preset last: a preset's values win over its
    # dataset's and head's (its shortened head recipe last of all); flags win over every table
    preset = p.parse_known_args(argv)[0].preset
    tables = [("preset", PRESETS), ("dataset", EVAL_DATASETS), ("dataset", PROBE_EPOCHS),
              ("head", HEADS), ("preset", PRESETS), ("head", PRESET_HEADS.get(preset, {}))]
    args = apply_presets(p, tables, argv)
    args.metric = "map" if args.task == "multi" else "top1"
    check_data_args(args)
    return args


def main(argv=None):
    # ------------------------------------------------------------------ args, dist, data
    args = get_args(argv)
    check_data_paths(args)
    rank, world, device = setup_dist(args.device)
    master = rank == 0
    make_out_dir(args.out_dir)
    state = read_checkpoint(args)
    torch.manual_seed(args.seed)
    run = Run(rank, world, device, Log(args.out_dir, master, args=args))
    try:
        train_set, val_set = build_datasets(   # train mode "test": one centre view per video
            args.dataset, args.task, args.num_classes, num_frames=args.num_frames,
            img_size=args.img_size, seed=args.seed, data_root=args.data_root,
            train_list=args.train_list, val_list=args.val_list, train_samples=args.train_samples,
            sampling=args.sampling, stride=args.stride, flip=args.flip, test_clips=args.test_clips,
            test_crops=args.test_crops, motion_train=args.motion_train, motion_val=args.motion_val,
            motion_backgrounds=args.motion_backgrounds, train_mode="test")
    except (OSError, ValueError) as e:
        fail(str(e))

    # ------------------------------------------------------------------ frozen encoder
    # fc_norm is a finetuning layer (absent from pretraining checkpoints): the probes read the last
    # block's raw tokens (their mean for the linear head), normalised without parameters.
    encoder = build_classifier(   # its 1-output head: unused
        state, 1, model=args.model, patch_size=args.patch_size, tubelet=args.tubelet,
        img_size=args.img_size, num_frames=args.num_frames, path=args.checkpoint,
        verbose=master).to(device)
    encoder.fc_norm = nn.Identity()
    encoder.eval().requires_grad_(False)
    if master:   # the checkpoint has loaded: the run starts
        save_args(args, args.out_dir)
        n_train, n_val = len(train_set.targets()), len(val_set.targets())
        views = 1 if args.dataset == "motion" else args.test_clips * args.test_crops
        print(f"probing {args.model} on {args.dataset} ({args.head} head): {n_train} training "
              f"videos{' (and their mirror images)' if args.flip else ''}, {n_val} validation "
              f"videos ({views} views each) | {world} rank(s) on {device}", flush=True)

    # ------------------------------------------------------------------ head, trained on the device
    probe = linear_probe if args.head == "linear" else attentive_probe
    metrics, saved = probe(encoder, train_set, val_set, args, run)

    # ------------------------------------------------------------------ results + teardown
    if master:
        save_checkpoint({**saved, "head_type": args.head, "args": vars(args)},
                        os.path.join(args.out_dir, "probe-head.pth"))
        write_results(metrics, args.metric, "probe", setting=args.preset or args.dataset,
                      checkpoint=args.checkpoint, out_dir=args.out_dir,
                      results_file=args.results_file)
        run.log.finish(os.path.join(args.out_dir, "probe-head.pth"))
    teardown(world, device)
    return metrics


# ============================================================================= the linear probe


def linear_probe(encoder, train_set, val_set, args, run):
    """Table 16: mean-pooled features cached once, standardised, a linear layer.
    -> (metrics, what probe-head.pth keeps)."""
    autocast, _, _ = amp_setup(run.device, args.amp)
    D = encoder.head.in_features

    def features(video, flip=False):    # (B, C, T, H, W) -> (B, D), (B, 2D) with the mirror image
        with torch.no_grad(), autocast():
            f = encoder.forward_features(video).float()
            if not flip:
                return f
            return torch.cat([f, encoder.forward_features(video.flip(-1)).float()], 1)

    t0, n_train = time.time(), len(train_set.targets())
    common = (args.feature_batch, args.workers, run.rank, run.world, run.device, run.log)
    f_train = per_video(lambda v: features(v, args.flip), train_set, D * (2 if args.flip else 1),
                        *common, "train features").view(n_train, -1, D)          # (N, 1 or 2, D)
    f_val = per_video(features, val_set, D, *common, "val features")
    forwards = n_train * f_train.shape[1]
    run.log({"feature_time": time.time() - t0, "encoder_forwards": forwards,
             "forwards_without_cache": n_train * args.epochs},
            f"features cached in {fmt_time(time.time() - t0)}: {forwards} encoder forwards for the "
            f"training set instead of {n_train * args.epochs} ({args.epochs} epochs x {n_train})")
    # parameter-free normalisation with training statistics (MAE: BatchNorm1d without affine)
    mean, std = f_train.flatten(0, 1).mean(0), f_train.flatten(0, 1).std(0) + 1e-6
    f_train, f_val = (f_train - mean) / std, (f_val - mean) / std

    # every rank trains the same head on the same cached features, in lockstep (no collective)
    head = nn.Linear(D, args.num_classes).to(run.device)
    nn.init.trunc_normal_(head.weight, std=0.01)   # as MAE's linear probe
    nn.init.zeros_(head.bias)
    y_train, y_val = train_set.targets().to(run.device), val_set.targets().to(run.device)
    metrics = train_head(head, cached_batches(f_train, y_train, args.batch_size), n_train,
                         lambda: head_metrics(head, f_val, y_val, args.task), args, run)
    return metrics, {"head": head.state_dict(), "feature_mean": mean.cpu(),
                     "feature_std": std.cpu()}


def head_loss(task, out, y):
    """Cross-entropy (single-label) or BCE on sigmoids (multi-label, multi-hot y)."""
    if task == "multi":
        return F.binary_cross_entropy_with_logits(out, y)
    return F.cross_entropy(out, y)


def head_scores(task, out):
    return out.sigmoid() if task == "multi" else out.softmax(-1)


@torch.no_grad()
def head_metrics(head, f_val, y_val, task):
    return compute_metrics(task, head_scores(task, head(f_val)), y_val)


# ============================================================================= the attentive probe


class AttentiveProbe(nn.Module):
    """V-JEPA's AttentiveClassifier (jepa src/models/attentive_pooler.py), written anew: tokens
    (B, N, D) -> [depth - 1 self-attention blocks] -> one learned query cross-attends to them
    (LayerNorm on the tokens, attention, residual on the query, then an MLP) -> a linear layer.
    No position information enters: the output is invariant to the order of the tokens."""

    def __init__(self, dim, num_heads, num_classes, depth=1, mlp_ratio=4.0):
        super().__init__()
        self.num_heads = num_heads
        # V-JEPA 2's order (jepa's runs the extra blocks on the single query, where they do little)
        self.blocks = nn.ModuleList([Block(dim, num_heads, mlp_ratio) for _ in range(depth - 1)])
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.head = nn.Linear(dim, num_classes)
        for m in self.modules():                                  # V-JEPA's init: trunc normal 0.02
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.query, std=0.02)
        # and its rescaling of each residual branch's output layer by 1 / sqrt(2 x layer)
        branches = [(b.attn.proj, b.mlp.fc2) for b in self.blocks] + [(self.proj, self.mlp.fc2)]
        with torch.no_grad():
            for layer, pair in enumerate(branches, 1):
                for lin in pair:
                    lin.weight.div_((2.0 * layer) ** 0.5)

    def pool(self, x):                                            # (B, N, D) -> (B, D)
        for blk in self.blocks:
            x = blk(x)
        B, N, D = x.shape
        h = self.num_heads
        kv = self.kv(self.norm1(x)).view(B, N, 2, h, D // h)
        k, v = kv.permute(2, 0, 3, 1, 4)                                   # (B, h, N, hs) each
        q = self.q(self.query).view(1, h, 1, D // h).expand(B, -1, -1, -1)  # (B, h, 1, hs)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, 1, D)
        q = self.query + self.proj(y)                                       # (B, 1, D)
        return (q + self.mlp(self.norm2(q)))[:, 0]

    def forward(self, x):                                         # (B, N, D) -> (B, num_classes)
        return self.head(self.pool(x))


def attentive_probe(encoder, train_set, val_set, args, run):
    """The attentive head on the tokens, cached or streamed (see the docstring).
    -> (metrics, what probe-head.pth keeps)."""
    autocast, _, _ = amp_setup(run.device, args.amp)
    N, D = encoder.pos_embed.shape[1:]
    num_heads = args.attn_heads or encoder.blocks[0].attn.num_heads
    if D % num_heads:
        fail(f"--attn-heads {num_heads} does not divide the width {D}")
    if run.device.type == "cpu":   # denormal attention weights, moments: 3-10x slower CPU maths
        torch.set_flush_denormal(True)

    def tokens(video):                  # (B, C, T, H, W), normalised -> (B, N, D) float32
        with torch.no_grad(), autocast():
            x = encoder.forward_tokens(video)
        return F.layer_norm(x.float(), (D,))   # V-JEPA's encoder's final LayerNorm, less affine

    n_train, views = len(train_set), 2 if args.flip else 1
    gb = n_train * views * N * D * 4 / 2 ** 30
    cached = gb <= args.cache_gb
    if not cached and run.world > 1 and args.batch_size % run.world:
        fail(f"--batch-size {args.batch_size} must split evenly over the {run.world} ranks")
    y_train, y_val = train_set.targets().to(run.device), val_set.targets().to(run.device)
    t0 = time.time()
    if cached:
        cache = cache_tokens(tokens, train_set, views, (N, D), args, run)   # (n, views, N, D)
        batches = cached_batches(cache, y_train, args.batch_size)
    else:
        batches = streamed_batches(tokens, train_set, y_train, args, run)
    forwards = n_train * views if cached else n_train * args.epochs
    run.log({"token_cache": cached, "token_gb": gb, "encoder_forwards": forwards,
             "forwards_without_cache": n_train * args.epochs, "feature_time": time.time() - t0},
            (f"tokens cached in {fmt_time(time.time() - t0)} ({gb:.2f} GB <= --cache-gb "
             f"{args.cache_gb:g}): {forwards} encoder forwards" if cached else
             f"tokens not cached ({gb:.2f} GB > --cache-gb {args.cache_gb:g}): the encoder runs "
             f"every epoch, {forwards} forwards")
            + f" | attentive head, depth {args.attn_depth}, {num_heads} heads")

    torch.manual_seed(args.seed)          # the same head whichever path was taken
    head = AttentiveProbe(D, num_heads, args.num_classes, args.attn_depth).to(run.device)

    def evaluate():                       # every test view through encoder and head, averaged
        with torch.no_grad():
            scores = per_video(lambda v: head_scores(args.task, head(tokens(v))), val_set,
                               args.num_classes, args.feature_batch, args.workers, run.rank,
                               run.world, run.device, run.log, "val")
        return compute_metrics(args.task, scores, y_val)

    sync = not cached and run.world > 1   # streamed: each rank saw its share of each batch
    metrics = train_head(head, batches, n_train, evaluate, args, run, sync=sync)
    return metrics, {"head": head.state_dict()}


def cache_tokens(tokens, dataset, views, shape, args, run):
    """Every item's tokens (and its mirror image's, views = 2), each rank its share, all-reduced:
    -> (num_items, views, N, D) float32 on the device, the same on every rank."""
    n = len(dataset)
    cache = torch.zeros(n, views, *shape, device=run.device)
    shard = torch.utils.data.Subset(dataset, range(run.rank, n, run.world))
    loader = data.loader(shard, None, args.feature_batch, args.workers, run.device, eval_collate)
    for batch in loader:
        video = data.normalize(batch["video"].to(run.device)[:, 0])   # (B, C, T, H, W): 1 view
        ids = batch["video_id"].to(run.device)                       # = the item in "test" mode
        cache[ids] = torch.stack([tokens(video), tokens(video.flip(-1))][:views], 1)
    return all_reduce(cache)


# ============================================================================= training the head


def epoch_plan(seed, epoch, n, views):
    """The epoch's sample order and, per sample, the view (plain or mirrored) it takes."""
    seed = int(np.random.default_rng([seed, epoch]).integers(2 ** 62))
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen), torch.randint(views, (n,), generator=gen)


def cached_batches(f_train, y_train, batch_size):
    """batches(order, view) -> per step (inputs, targets, samples in the step over all ranks), from
    the cache f_train (n, views, ...). Every rank takes the whole batch: no collective needed."""
    def batches(order, view):
        order, view = order.to(f_train.device), view.to(f_train.device)
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            yield f_train[idx, view[idx]], y_train[idx], len(idx)
    return batches


def streamed_batches(tokens, train_set, y_train, args, run):
    """batches(order, view) as cached_batches, the encoder run on the fly: rank r takes samples r,
    r + world, ... of every batch (so one loader of batch / world videos over the concatenated
    shares stays aligned with the steps; the last step's share can be empty: then None)."""
    B = args.batch_size

    def batches(order, view):
        steps = [order[b:b + B] for b in range(0, len(order), B)]
        mine = torch.cat([s[run.rank::run.world] for s in steps]).tolist()
        mine = torch.utils.data.Subset(train_set, mine)
        it = iter(data.loader(mine, None, B // run.world, args.workers, run.device, eval_collate))
        for s in steps:
            batch = next(it) if len(s) > run.rank else None
            if batch is None:
                yield None, None, len(s)
                continue
            ids = batch["video_id"]
            video = data.normalize(batch["video"].to(run.device, non_blocking=True)[:, 0])
            flip = view[ids].to(run.device).bool()[:, None, None, None, None]
            video = torch.where(flip, video.flip(-1), video)
            x = torch.cat([tokens(v) for v in video.split(args.feature_batch)])
            yield x, y_train[ids.to(run.device)], len(s)
    return batches


def train_head(head, batches, n_train, evaluate, args, run, sync=False):
    """AdamW + cosine (lr x batch / 256) over batches(order, view) (cached_ or streamed_batches),
    each sample taking its plain or mirrored view at random per epoch. sync: each rank saw its
    share of the batch; the loss is weighted by that share and the gradients summed over the ranks.
    -> the last evaluation's metrics."""
    lr, min_lr = args.lr * args.batch_size / 256, args.min_lr * args.batch_size / 256
    params = list(head.named_parameters())
    if args.head == "linear":           # Table 16 / MAE: decay on all parameters
        groups = [{"params": [p for _, p in params]}]
    else:                               # V-JEPA: none on biases and 1-D parameters
        groups = [{"params": [p for n, p in params if not no_weight_decay(n, p)]},
                  {"params": [p for n, p in params if no_weight_decay(n, p)], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(args.betas),
                                  weight_decay=args.weight_decay)
    steps_per_epoch = (n_train + args.batch_size - 1) // args.batch_size
    lrs = cosine_schedule(lr, min_lr, args.epochs * steps_per_epoch,
                          int(args.warmup_epochs * steps_per_epoch))
    views = 2 if args.flip else 1
    step, t0 = 0, time.time()
    for epoch in range(args.epochs):
        total = torch.zeros((), device=run.device)
        for x, y, n in batches(*epoch_plan(args.seed, epoch, n_train, views)):
            set_lr(optimizer, lrs[step])
            optimizer.zero_grad(set_to_none=True)
            if x is not None:
                loss = head_loss(args.task, head(x), y) * (len(y) / n)   # x 1.0 without sync
                loss.backward()
                total += loss.detach()
            if sync:
                all_reduce_grads(head)
            if args.clip_grad:
                torch.nn.utils.clip_grad_norm_(head.parameters(), args.clip_grad)
            optimizer.step()
            step += 1
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            metrics = evaluate()
            eta = (args.epochs - epoch - 1) * (time.time() - t0) / (epoch + 1)
            loss = (all_reduce(total) if sync else total).item() / steps_per_epoch
            vals = " | ".join(f"val {k} {v:.2f}" for k, v in metrics.items())
            run.log({"epoch": epoch + 1, "loss": loss, "lr": float(lrs[step - 1]), **metrics},
                    f"epoch {epoch + 1}/{args.epochs} | loss {loss:.4f} | lr {lrs[step - 1]:.2e} | "
                    f"{vals} | eta {fmt_time(eta)}")
    return metrics


def all_reduce_grads(module):
    """Sum the gradients over the ranks in one collective (a rank without samples adds zeros)."""
    params = list(module.parameters())
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    all_reduce(flat)
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad = g.view_as(p)


if __name__ == "__main__":
    main()
