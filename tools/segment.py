"""Unsupervised video object segmentation with a frozen SMILE encoder (paper Table 10).

    python -m tools.segment --preset tiny                     # CPU demo: synthetic motion, random encoder
    python -m tools.segment --preset tiny --checkpoint out/tiny/checkpoint-latest.pth
    python -m tools.segment --dataset davis --data-root /data/DAVIS --checkpoint smile_vitb_k400.pth
    torchrun --nproc_per_node=8 -m tools.segment --dataset ytvos --data-root /data/ytvos --checkpoint CK
    python -m tools.segment -h                                # every flag

SMILE (Table 10) follows SIGMA (ECCV 2024), whose project page (github.com/QUVA-Lab/SIGMA,
index.html, Table "Unsupervised video object segmentation") says: "We follow the evaluation protocol
from TimeTuning and report mIoU for clustering and overclustering. The clip-length is set to 16 and
4 for DAVIS and YTVOS. For clustering, the Hungarian algorithm matches the unsupervised segmentation
clusters (K) with the ground truth per clip. For overclustering, we use K=10. The matching protocol
is greedy many-to-one." SIGMA's repository holds no evaluation code for it (its utils.py
cluster_features is a visualisation helper), so the details come from TimeTuning (Salehi et al.,
ICCV 2023, github.com/SMSD75/Timetuning), its "sample-wise" protocol, read in evaluation.py,
clustering.py, metrics.py, my_utils.py, data_loader.py:

    1. a clip of T frames, resized to S x S (TimeTuning: 224), ImageNet-normalised, through the
       frozen encoder; the last block's tokens, a (t, h, w, D) grid
                                                        (evaluation.py: model(data, use_head=False))
    2. per-dimension standardisation, then PCA to 50 dimensions   (my_utils.normalize_and_transform)
    3. the feature maps upsampled bilinearly to the mask resolution S x S
                                                                       (clustering.cluster_features)
    4. k-means over all pixels of the clip: faiss.Kmeans(niter=50, nredo=5), Euclidean; K = the
       number of labels in the clip's annotation for "clustering" (cluster_features' annotations
       branch), K = 10 for "overclustering"                            (clustering.cluster_features)
    5. clustering: Hungarian one-to-one matching on IoU (scipy linear_sum_assignment(1 - IoU));
       clusters left unmatched are merged into the background. Overclustering: each cluster goes to
       the ground-truth label with the best precision (README: many_to_one and precision_based),
       i.e. the label holding most of its pixels, many clusters to one label
                                                                    (metrics.PredsmIoU.compute_miou)
    6. per clip, the IoU of every label present in its annotation, background included (Evaluator
       builds PredsmIoU(involve_bg=True)), averaged; mIoU = the mean over clips
                                                                            (evaluate_localizations)

Our k-means (written here, no faiss) does what faiss.Kmeans does by default: seeded random initial
centroids drawn from the points, at most 256 training points per centroid (max_points_per_centroid;
all pixels are then assigned to the nearest centroid), an empty cluster re-seeded by splitting the
largest one, the lowest-inertia restart kept.

Deviations, and why:
  - A video model sees a clip, not frames: the features of a tubelet (2 frames) are repeated over
    its frames (nearest in time), bilinear in space. TimeTuning's models are image models, one map
    per frame.
  - Standardisation and PCA are fitted per clip (on its t*h*w tokens) rather than on a loader batch
    of 16 clips, so a clip's score depends neither on the batch it falls in nor on the number of
    ranks.
  - T frames are taken evenly spaced over the annotated frames (repeated when fewer), not a random
    sorted sample: the score is deterministic. Masks are resized with nearest neighbour.
  - The features are the last block's output without the pretraining encoder's final LayerNorm (the
    VideoClassifier layout has none); standardisation removes the LayerNorm's affine part anyway.
  - YouTube-VOS: its released valid/ split annotates only first frames, so the default split is
    train/ (every 5th frame annotated); TimeTuning evaluated a split of its own (val1/) that is not
    released.

Datasets: DAVIS-2017 (<root>/JPEGImages/480p/<video>/00000.jpg,
<root>/Annotations/480p/<video>/00000.png palette PNGs, videos from
<root>/ImageSets/2017/<split>.txt or all folders), YouTube-VOS
(<root>/<split>/JPEGImages/<video>/*.jpg, <root>/<split>/Annotations/<video>/*.png), and the default
"synthetic": motion.py's objects pasted on black, noise and still-image backgrounds, whose pixel
footprints are exact masks (object k is label k + 1, background 0, later objects occlude earlier
ones). Under torchrun, video i goes to rank i % world and the per-video IoUs are summed over ranks.
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.optimize import linear_sum_assignment

import augment
import data
import motion
from evaluation import frozen_encoder, read_checkpoint
from model import MODEL_SIZES
from runtime import (Log, Parser, all_reduce, amp_setup, apply_presets, check_paths, fail,
                     fmt_time, make_out_dir, nonneg_int, positive_int, setup_dist, teardown)

# Clip length per dataset (SIGMA: 16 for DAVIS, 4 for YTVOS); the split each one reads by default.
VOS_DATASETS = {
    "synthetic": dict(num_frames=16),
    "davis": dict(num_frames=16, split="val"),
    "ytvos": dict(num_frames=4, split="train"),
}
# --preset tiny: the grid of train.py's tiny preset (model tiny, 32 px, 8 frames, 2x8x8
# tubelets), so out/tiny/checkpoint-latest.pth loads; objects as large as in that pretraining
# (object_size 64-160).
PRESETS = {
    "tiny": dict(model="tiny", img_size=32, num_frames=8, patch_size=8, tubelet=2,
                 object_size=[64, 160], out_dir="out/segment-tiny"),
}
SYNTHETIC_VIDEOS = 30        # as many clips as DAVIS-2017 val has videos
MAX_POINTS_PER_CENTROID = 256  # faiss.Kmeans' default training subsample


# ============================================================================= k-means


def _sq_dist(x, x2, c):
    """Squared distances (P, K) between points x (P, d), with x2 = |x|^2 (P,), and centroids c (K,
    d)."""
    return (x2[:, None] - 2 * x @ c.T + (c * c).sum(1)[None]).clamp_(min=0)


def _split_empty(c, counts, gen):
    """faiss' fix for empty clusters: each takes a copy of the largest cluster's centroid and the
    two are pushed apart by a tiny step (1/1024 of the centroid's scale; here in a seeded random
    direction, so that no tie between them survives); the largest one's count is shared between
    them."""
    counts = counts.clone()
    for e in torch.nonzero(counts == 0).flatten().tolist():
        big = int(counts.argmax())
        direction = torch.randn(c.shape[1], generator=gen).to(c)
        step = direction * (c[big].abs().mean().clamp(min=1e-6) / 1024)
        c[e], c[big] = c[big] + step, c[big] - step
        counts[e] = counts[big] // 2
        counts[big] -= counts[e]
    return c


def kmeans(x, k, iters=50, restarts=5, seed=0, max_points=MAX_POINTS_PER_CENTROID):
    """Lloyd's k-means, deterministic given seed. x (P, d) float -> labels (P,) long in [0, k).

    As faiss.Kmeans (TimeTuning's clustering.py: niter=50, nredo=5): trains on at most
    max_points * k points drawn at random, initial centroids are k distinct training points, the
    restart with the lowest training inertia wins, then every point goes to its nearest centroid.
    """
    gen = torch.Generator().manual_seed(seed)
    k = min(k, x.shape[0])
    train = x
    if max_points and x.shape[0] > max_points * k:
        train = x[torch.randperm(x.shape[0], generator=gen)[:max_points * k].to(x.device)]
    t2 = (train * train).sum(1)
    best, best_inertia = None, float("inf")
    for _ in range(restarts):
        # (K, d)
        c = train[torch.randperm(train.shape[0], generator=gen)[:k].to(x.device)].clone()
        labels = None
        for _ in range(iters):
            new = _sq_dist(train, t2, c).argmin(1)                                        # (P',)
            if labels is not None and torch.equal(new, labels):
                break
            labels = new
            counts = torch.bincount(labels, minlength=k)
            sums = torch.zeros_like(c).index_add_(0, labels, train)
            c = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None].to(c.dtype), c)
            if (counts == 0).any():
                c = _split_empty(c, counts, gen)
        inertia = float(_sq_dist(train, t2, c).min(1).values.sum())
        if inertia < best_inertia:
            best, best_inertia = c, inertia
    return _sq_dist(x, (x * x).sum(1), best).argmin(1)


# ============================================================================= features


def standardize_pca(x, dim=50):
    """x (P, D) -> (P, min(dim, D)): per-dimension standardisation (sklearn StandardScaler:
    population std, a constant dimension left at zero), then projection on the top principal
    components (faiss PCAMatrix without whitening), as TimeTuning's
    my_utils.normalize_and_transform(feats, 50)."""
    x = x.double()
    std = x.std(0, unbiased=False)
    x = (x - x.mean(0)) / torch.where(std > 0, std, torch.ones_like(std))
    _, vecs = torch.linalg.eigh(x.T @ x / x.shape[0])          # ascending eigenvalues
    return (x @ vecs[:, -min(dim, x.shape[1]):].flip(1)).float()


def upsample(feats, num_frames, size):
    """Token features (t, h, w, d) -> per-pixel features (T, H, W, d): bilinear in space
    (TimeTuning's F.interpolate(mode="bilinear"), align_corners=False), each tubelet's map repeated
    over its frames."""
    t = feats.shape[0]
    x = F.interpolate(feats.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
    # (t, d, H, W) -> (T, d, H, W)
    x = x.repeat_interleave(num_frames // t, dim=0)
    return x.permute(0, 2, 3, 1)


def cluster_clip(tokens, grid, num_frames, size, ks, pca_dim, iters, restarts, seed):
    """tokens (N, D) of one clip on grid (t, h, w) -> one cluster map (T, S, S) long per K in ks."""
    x = standardize_pca(tokens.float(), pca_dim).view(*grid, -1)           # (t, h, w, d)
    x = upsample(x, num_frames, (size, size)).reshape(-1, x.shape[-1])     # (T*S*S, d)
    return [kmeans(x, k, iters, restarts, seed).view(num_frames, size, size) for k in ks]


# ============================================================================= metric


def confusion(gt, pred):
    """gt, pred: integer label maps of one clip, any equal shape
    -> (gt label values (G,), counts (G, C)): counts[g, c] = pixels of ground-truth label g in
    cluster c, over the C clusters that occur."""
    gt, pred = torch.as_tensor(gt).flatten(), torch.as_tensor(pred).flatten()
    gt_ids, g = torch.unique(gt, return_inverse=True)
    _, c = torch.unique(pred, return_inverse=True)
    G, C = len(gt_ids), int(c.max()) + 1
    conf = torch.bincount(g * C + c, minlength=G * C).view(G, C)
    return gt_ids.cpu().numpy(), conf.cpu().numpy().astype(np.int64)


def match_clusters(conf, gt_ids, many_to_one):
    """-> (C,) ground-truth row of each cluster, or -1 for none (TimeTuning metrics.PredsmIoU).

    One-to-one (clustering): Hungarian matching maximising the summed IoU; unmatched clusters (K
    larger than the number of labels) go to the background, label 0. Many-to-one (overclustering,
    precision based): each cluster to the label with the best precision tp / (tp + fp), which for
    one cluster is the label holding most of its pixels (the first such on ties)."""
    if many_to_one:
        return conf.argmax(0)
    union = conf.sum(1, keepdims=True) + conf.sum(0, keepdims=True) - conf
    rows, cols = linear_sum_assignment(-conf / union)
    bg = np.flatnonzero(gt_ids == 0)
    assign = np.full(conf.shape[1], bg[0] if len(bg) else -1)
    assign[cols] = rows
    return assign


def clip_miou(gt, pred, many_to_one=False):
    """mIoU of one clip: clusters matched to labels, then the mean IoU over the labels present in
    gt, background included (TimeTuning's Evaluator: PredsmIoU(involve_bg=True)). -> float."""
    gt_ids, conf = confusion(gt, pred)
    assign = match_clusters(conf, gt_ids, many_to_one)
    to_label = np.zeros((conf.shape[1], conf.shape[0]), np.int64)      # (C, G) one-hot of assign
    hit = assign >= 0
    to_label[np.flatnonzero(hit), assign[hit]] = 1
    tp = (conf * to_label.T).sum(1)                                   # (G,)
    predicted = conf.sum(0) @ to_label                                # pixels given to each label
    return float(np.mean(tp / (conf.sum(1) + predicted - tp)))


# ============================================================================= data


def labels_from_footprints(footprints):
    """bool (K, T, H, W) object footprints -> int64 (T, H, W): 0 background, k + 1 where object k is
    visible; later objects are drawn over earlier ones (motion.overlay), so they win."""
    labels = np.zeros(footprints.shape[1:], np.int64)
    for k, fp in enumerate(footprints):
        labels[fp] = k + 1
    return labels


def synthetic_video(index, seed, objects, num_frames, size, num_objects=2, object_size=(32, 128)):
    """Synthetic clip `index`: rng = default_rng([seed, index]); background black, noise or a still
    image (index % 3, Table 7's kinds); motion.overlay pastes num_objects objects.
    -> (frames uint8 (T, S, S, 3), labels int64 (T, S, S), footprints bool (K, T, S, S))."""
    rng = np.random.default_rng([seed, index])
    kind = ("black", "noise", "image")[index % 3]
    image = motion.still_image(size, size, rng) if kind == "image" else None
    frames = motion.background(kind, num_frames, size, size, rng, image=image)
    frames, footprints = motion.overlay(frames, objects, rng, num_objects=num_objects,
                                        size_range=object_size)
    return frames, labels_from_footprints(footprints), footprints


def _pairs(img_dir, ann_dir):
    """Frames with an annotation: [(jpg, png)] sorted by file stem; a missing folder is a one-line
    error."""
    for d in (img_dir, ann_dir):
        if not os.path.isdir(d):
            fail(f"no folder {d}")
    pngs = {os.path.splitext(f)[0]: f for f in os.listdir(ann_dir) if f.lower().endswith(".png")}
    jpgs = sorted(f for f in os.listdir(img_dir) if f.lower().endswith((".jpg", ".jpeg")))
    pairs = [(os.path.join(img_dir, f), os.path.join(ann_dir, pngs[os.path.splitext(f)[0]]))
             for f in jpgs if os.path.splitext(f)[0] in pngs]
    if not pairs:
        fail(f"{img_dir}: no .jpg frame has a .png annotation in {ann_dir}")
    return pairs


def folder_videos(dataset, root, split, annotations="Annotations"):
    """DAVIS-2017 or YouTube-VOS in their released layouts -> [{"name", "pairs": [(jpg, png)]}]."""
    if dataset == "davis":
        img_root = os.path.join(root, "JPEGImages", "480p")
        ann_root = os.path.join(root, annotations, "480p")
        split_file = os.path.join(root, "ImageSets", "2017", f"{split}.txt")
    else:
        img_root = os.path.join(root, split, "JPEGImages")
        ann_root = os.path.join(root, split, annotations)
        split_file = None
    if not os.path.isdir(img_root):
        fail(f"--data-root {root}: no folder {img_root} ({dataset} layout expected, "
             f"see python -m tools.segment -h)")
    if split_file and os.path.isfile(split_file):
        with open(split_file) as f:
            names = [line.strip() for line in f if line.strip()]
    else:
        names = sorted(d for d in os.listdir(img_root) if os.path.isdir(os.path.join(img_root, d)))
    if not names:
        fail(f"--data-root {root}: no videos in {split_file or img_root}")
    return [{"name": n, "pairs": _pairs(os.path.join(img_root, n), os.path.join(ann_root, n))}
            for n in names]


def read_label_png(path, size):
    """A palette (or grayscale) annotation PNG -> int64 (size, size) label indices, nearest
    resize."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16", "1"):
                fail(f"bad annotation {path}: mode {im.mode}, "
                     f"expected a palette or grayscale label PNG")
            shape = im.size
            labels = np.array(im.resize((size, size), Image.NEAREST), dtype=np.int64)
    except OSError as e:
        fail(f"bad annotation {path}: {e}")
    return labels, shape


def load_folder_clip(pairs, num_frames, size):
    """T frames evenly spaced over the annotated ones (repeated when fewer), resized to size x size.
    -> (frames uint8 (T, S, S, 3), labels int64 (T, S, S))."""
    picks = np.round(np.linspace(0, len(pairs) - 1, num_frames)).astype(int)
    frames, labels = [], []
    for i in picks:
        jpg, png = pairs[i]
        try:
            with Image.open(jpg) as im:
                frame = np.array(im.convert("RGB"))
        except OSError as e:
            fail(f"bad frame {jpg}: {e}")
        lab, shape = read_label_png(png, size)
        if shape != (frame.shape[1], frame.shape[0]):
            fail(f"bad annotation {png}: {shape[0]}x{shape[1]} pixels, its frame {jpg} is "
                 f"{frame.shape[1]}x{frame.shape[0]}")
        frames.append(augment.resize(frame[None], size)[0])
        labels.append(lab)
    return np.stack(frames), np.stack(labels)


# ============================================================================= args


def get_args(argv=None):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", choices=sorted(PRESETS), help="tiny = the CPU demo on train.py's tiny grid")
    a("--dataset", default="synthetic", choices=sorted(VOS_DATASETS),
      help="Table 10: davis (DAVIS-2017), ytvos (YouTube-VOS); synthetic = motion.py clips, "
      "no download")
    a("--data-root", default=None,
      help="dataset folder (davis: has JPEGImages/480p; ytvos: has <split>/)")
    a("--split", default=None, help="davis: ImageSets/2017/<split>.txt (default val; all folders "
      "when absent); "
      "ytvos: the <split>/ folder (default train: valid/ annotates first frames only)")
    a("--annotations", default="Annotations", help="annotation folder name (DAVIS-2017 "
      "unsupervised: Annotations_unsupervised)")
    a("--num-videos", type=positive_int, default=None, help=f"evaluate the first N videos (synthetic: "
      f"default {SYNTHETIC_VIDEOS})")
    a("--num-frames", type=positive_int, default=16,
      help="T, frames per clip (SIGMA: 16 on DAVIS, 4 on YTVOS)")
    a("--img-size", type=positive_int, default=224,
      help="frames and masks resized to S x S (TimeTuning: 224)")
    a("--clusters", type=positive_int, default=None, help="K for clustering (default: the number of labels "
      "in the clip's annotation, objects + background, as TimeTuning)")
    a("--overcluster", type=positive_int, default=10, help="K for overclustering (SIGMA: 10)")
    a("--layer", type=positive_int, default=None,
      help="features of encoder block L, 1-based (default the last)")
    a("--pca-dim", type=positive_int, default=50,
      help="PCA dimensions after standardisation (TimeTuning: 50)")
    a("--kmeans-iters", type=positive_int, default=50,
      help="Lloyd iterations (TimeTuning's faiss.Kmeans: niter 50)")
    a("--kmeans-restarts", type=positive_int, default=5, help="restarts, best inertia kept (faiss nredo 5)")
    a("--checkpoint", default=None,
      help="a train.py checkpoint (or any VideoMAE-layout one); none: random")
    a("--model", default=None, choices=sorted(MODEL_SIZES),
      help="ViT size (default from the checkpoint)")
    a("--patch-size", type=positive_int, default=None,
      help="patch side (default from the checkpoint, else 16)")
    a("--tubelet", type=positive_int, default=None,
      help="tubelet length (default from the checkpoint, else 2)")
    a("--num-objects", type=nonneg_int, default=2, help="synthetic: objects per clip (Table 4f: 2)")
    a("--object-size", type=positive_int, nargs=2, default=[32, 128], metavar=("LO", "HI"),
      help="synthetic: object side range in pixels at 224, scaled with the frame (Sec. 4.1: 32-128)")
    a("--seed", type=nonneg_int, default=0, help="random encoder, synthetic clips and k-means seeds")
    a("--out-dir", default="out/segment", help="results.json and log.jsonl go here")
    a("--device", default=None, help="torch device (default: cuda when available)")
    a("--amp", default="auto", choices=["auto", "none", "bf16", "fp16"],
      help="encoder autocast dtype")
    a("--log-every", type=positive_int, default=10, help="videos between progress lines")
    explicit = vars(p.parse_known_args(argv)[0])  # before presets: None = the flag was not given
    args = apply_presets(p, [("dataset", VOS_DATASETS), ("preset", PRESETS)], argv)
    if args.dataset != "synthetic" and not args.data_root:
        fail(f"--dataset {args.dataset} needs --data-root")
    return args, explicit


def build_encoder(args, explicit, verbose):
    """The frozen encoder on the checkpoint's grid (or the run's), weights from the checkpoint; its
    shape: a typed flag, else the checkpoint's (a typed flag that contradicts it is an error), else
    the preset's, else base / 16 / 2 (evaluation.read_checkpoint)."""
    state = read_checkpoint(args)
    saved = (state.get("args") or {}) if state is not None else {}
    model, args.layer, _ = frozen_encoder(
        state, model=args.model, patch_size=args.patch_size, tubelet=args.tubelet,
        img_size=saved.get("img_size", args.img_size),
        num_frames=saved.get("num_frames", args.num_frames), layer=args.layer,
        path=args.checkpoint, verbose=verbose)
    return model


# ============================================================================= main


def video_list(args):
    """-> (names, load(i) -> (frames uint8 (T, S, S, 3), labels int64 (T, S, S)))."""
    T, S = args.num_frames, args.img_size
    if args.dataset == "synthetic":
        n = args.num_videos or SYNTHETIC_VIDEOS
        objects = motion.synthetic_objects(8, np.random.default_rng([args.seed, 2 ** 31]))
        load = lambda i: synthetic_video(i, args.seed, objects, T, S, args.num_objects,
                                         args.object_size)[:2]
        return [f"synthetic-{i:04d}" for i in range(n)], load
    videos = folder_videos(args.dataset, args.data_root, args.split,
                           args.annotations)[:args.num_videos]
    return [v["name"] for v in videos], lambda i: load_folder_clip(videos[i]["pairs"], T, S)


def evaluate_video(model, frames, labels, args, device, autocast, seed):
    """One clip -> (K used, clustering mIoU, overclustering mIoU)."""
    video = data.normalize(data.to_tensor(frames)[None].to(device))      # (1, C, T, H, W)
    with torch.no_grad(), autocast():
        tokens = model.forward_tokens(video, args.layer)[0]             # (N, D)
    side = args.img_size // args.patch_size
    grid = (args.num_frames // args.tubelet, side, side)                 # (t, h, w)
    gt = torch.from_numpy(labels).to(device)
    k = args.clusters or len(torch.unique(gt))
    maps = cluster_clip(tokens, grid, args.num_frames, args.img_size, (k, args.overcluster),
                        args.pca_dim, args.kmeans_iters, args.kmeans_restarts, seed)
    return k, clip_miou(gt, maps[0]), clip_miou(gt, maps[1], many_to_one=True)


def write_results(args, names, scores):
    """results.json: the two mIoUs and every video's scores."""
    out = {"dataset": args.dataset, "num_videos": len(names),
           "miou_clustering": float(scores[:, 1].mean()),
           "miou_overclustering": float(scores[:, 2].mean()), "overcluster_k": args.overcluster,
           "videos": [{"name": n, "k": int(s[0]), "clustering": float(s[1]),
                       "overclustering": float(s[2])}
                      for n, s in zip(names, scores.tolist())],
           "args": vars(args)}
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def main(argv=None):
    # ------------------------------------------------------------------ args, dist
    args, explicit = get_args(argv)
    check_paths(("--data-root", args.data_root, "folder"),
                ("--checkpoint", args.checkpoint, "file"))
    rank, world, device = setup_dist(args.device)
    master = rank == 0
    make_out_dir(args.out_dir)
    log = Log(args.out_dir, master)
    torch.manual_seed(args.seed)     # the random encoder, when there is no checkpoint

    # ------------------------------------------------------------------ data, model
    names, load = video_list(args)
    model = build_encoder(args, explicit, master).to(device)
    autocast, _, _ = amp_setup(device, args.amp)
    mine = list(range(rank, len(names), world))      # video i on rank i % world
    if master:
        which = "a random" if not args.checkpoint else "the " + args.checkpoint
        k = args.clusters or "labels per clip"
        print(f"segmenting {len(names)} {args.dataset} videos ({args.num_frames} frames, "
              f"{args.img_size} px) with {which} {args.model} encoder, block {args.layer} | "
              f"K = {k}, overclustering K = {args.overcluster} | {world} rank(s) on {device}",
              flush=True)

    # ------------------------------------------------------------------ loop
    # (videos, [K, clus, over])
    scores = torch.zeros(len(names), 3, dtype=torch.float64, device=device)
    t0 = time.time()
    for j, i in enumerate(mine):
        frames, labels = load(i)
        k, clus, over = evaluate_video(model, frames, labels, args, device, autocast, args.seed + i)
        scores[i] = torch.tensor([k, clus, over], dtype=torch.float64)
        if (j + 1) % args.log_every == 0 or j + 1 == len(mine) or j == 0:
            done, rate = min((j + 1) * world, len(names)), (j + 1) * world / (time.time() - t0)
            log({"video": done, "name": names[i], "k": k, "clustering": clus,
                 "overclustering": over, "videos_per_s": rate},
                f"[{done}/{len(names)}] {names[i]}: K {k} mIoU {clus:.3f} | "
                f"overclustering {over:.3f} | "
                f"{rate:.2f} videos/s | eta {fmt_time((len(names) - done) / rate)}")

    # ------------------------------------------------------------------ results, teardown
    scores = all_reduce(scores).cpu().numpy()
    if master:
        out = write_results(args, names, scores)
        log({"miou_clustering": out["miou_clustering"],
             "miou_overclustering": out["miou_overclustering"], "time": time.time() - t0},
            f"mIoU clustering {100 * out['miou_clustering']:.1f} | "
            f"overclustering (K={args.overcluster}) "
            f"{100 * out['miou_overclustering']:.1f} | {len(names)} videos in "
            f"{fmt_time(time.time() - t0)} | {os.path.join(args.out_dir, 'results.json')}")
    teardown(world, device)
    return scores


if __name__ == "__main__":
    main()
