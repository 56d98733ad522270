"""segment.py (Table 10): the mIoU metric pinned by hand-made cases, k-means, feature upsampling,
the synthetic and DAVIS-layout datasets, and `python -m tools.segment --preset tiny` end to end."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import motion
from tools import segment
from model import MODEL_SIZES, PretrainModel

ROOT = Path(__file__).resolve().parent.parent
# One thread per subprocess: on a busy 2-core machine, OpenMP threads spinning on many small k-means
# steps make a 7 s run take minutes.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(args, ok=True):
    r = subprocess.run([sys.executable, "-m", "tools.segment", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=ENV)
    if ok:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


# ----------------------------------------------------------------------------- metric


def test_perfect_clustering_under_any_permutation_scores_one():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, size=(3, 8, 8))
    for perm in ([7, 2, 9, 4], [0, 1, 2, 3], [3, 2, 1, 0]):
        pred = np.array(perm)[gt]
        assert segment.clip_miou(gt, pred) == 1.0
        assert segment.clip_miou(gt, pred, many_to_one=True) == 1.0


def test_partial_overlap_has_its_hand_computed_value():
    # gt: 6 background pixels, 4 object pixels; clusters 5 (pixels 0-4) and 7 (pixels 5-9).
    gt = np.array([0] * 6 + [1] * 4)
    pred = np.array([5] * 5 + [7] * 5)
    # Hungarian: 5 -> background (IoU 5 / (6 + 5 - 5)), 7 -> object (IoU 4 / (4 + 5 - 4)).
    assert segment.clip_miou(gt, pred) == pytest.approx((5 / 6 + 4 / 5) / 2)
    assert segment.clip_miou(gt, pred, many_to_one=True) == pytest.approx((5 / 6 + 4 / 5) / 2)
    # A label that no cluster gets scores 0 and still counts in the mean (background included).
    three = segment.clip_miou(np.array([0, 0, 1, 2]), np.array([0, 0, 1, 1]))
    assert three == pytest.approx((1 + 0.5 + 0) / 3)


def test_overclustering_merges_many_clusters_into_one_label():
    gt = np.array([0] * 6 + [1] * 4)
    pred = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])       # two clusters per label
    assert segment.clip_miou(gt, pred, many_to_one=True) == 1.0
    # One-to-one: 0 -> background, 2 -> object; unmatched 1 and 3 are merged into the background:
    # background = pixels 0-5 and 8-9 (IoU 6 / 8), object = pixels 6-7 (IoU 2 / 4).
    assert segment.clip_miou(gt, pred) == pytest.approx((6 / 8 + 2 / 4) / 2)


def test_many_to_one_matches_on_precision_not_iou():
    # Cluster 1 holds 5 background and 3 object pixels: best IoU with the object (3 / 10), best
    # precision with the background (5 / 8), so TimeTuning's precision-based matching gives it to
    # the background. Cluster 2 = the other 2 object pixels.
    gt = np.array([0] * 100 + [1] * 5)
    pred = np.array([0] * 95 + [1] * 5 + [1] * 3 + [2] * 2)
    gt_ids, conf = segment.confusion(gt, pred)
    assert segment.match_clusters(conf, gt_ids, many_to_one=True).tolist() == [0, 0, 1]
    assert segment.clip_miou(gt, pred, many_to_one=True) == pytest.approx((100 / 103 + 2 / 5) / 2)


# ----------------------------------------------------------------------------- k-means, features


def test_kmeans_recovers_separated_blobs_deterministically():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0] * 5, [10.0] * 5, [-10.0, 10.0, -10.0, 10.0, 0.0]])
    truth = torch.arange(3).repeat_interleave(200)
    x = centres[truth] + torch.randn(600, 5, generator=g)
    labels = segment.kmeans(x, 3, seed=1)
    # the blobs, up to a permutation
    assert segment.clip_miou(truth, labels) == 1.0
    assert torch.equal(labels, segment.kmeans(x, 3, seed=1))
    # past 256 points per centroid it trains on a subsample (faiss' default) and still finds them
    assert segment.clip_miou(truth, segment.kmeans(x, 3, seed=2, max_points=50)) == 1.0


def test_kmeans_on_duplicates_splits_empty_clusters():
    x = torch.tensor([[0.0, 0.0]] * 50 + [[1.0, 1.0]] * 50)
    labels = segment.kmeans(x, 2, seed=0, restarts=1)
    assert sorted(torch.bincount(labels).tolist()) == [50, 50]


def test_upsample_shape_and_tubelet_repeat():
    feats = torch.randn(2, 3, 4, 5)                                 # (t, h, w, d)
    up = segment.upsample(feats, 4, (12, 16))
    assert up.shape == (4, 12, 16, 5)                               # (T, H, W, d)
    assert torch.equal(up[0], up[1]) and torch.equal(up[2], up[3]) and not torch.equal(up[1], up[2])
    const = segment.upsample(torch.ones(1, 2, 2, 3), 2, (7, 9))
    assert torch.allclose(const, torch.ones(2, 7, 9, 3))
    x = segment.standardize_pca(torch.randn(40, 8), dim=3)
    assert x.shape == (40, 3) and torch.allclose(x.mean(0), torch.zeros(3), atol=1e-5)


# ----------------------------------------------------------------------------- data


def test_synthetic_masks_are_motions_footprints():
    objects = motion.synthetic_objects(4, np.random.default_rng(0))
    for index in range(3):                        # black, noise, image backgrounds
        frames, labels, fps = segment.synthetic_video(index, 5, objects, 8, 48, 2, (64, 160))
        rng = np.random.default_rng([5, index])   # the documented recipe
        kind = ("black", "noise", "image")[index]
        image = motion.still_image(48, 48, rng) if kind == "image" else None
        ref, ref_fp = motion.overlay(motion.background(kind, 8, 48, 48, rng, image=image), objects,
                                     rng, num_objects=2, size_range=(64, 160))
        assert np.array_equal(frames, ref) and np.array_equal(fps, ref_fp)
        assert np.array_equal(labels == 0, ~ref_fp.any(0))
        assert np.array_equal(labels == 2, ref_fp[1])                # the later object occludes
        assert np.array_equal(labels == 1, ref_fp[0] & ~ref_fp[1])


def make_davis(root, videos=("bear", "car"), num_frames=4, size=(40, 32)):
    """A DAVIS-2017 layout: JPEGs, palette PNGs (object 1 a left box, object 2 a right box moving
    down), ImageSets/2017/val.txt listing the videos. -> {video: labels (T, H, W)}."""
    W, H = size
    truth = {}
    for v in videos:
        (root / "JPEGImages" / "480p" / v).mkdir(parents=True)
        (root / "Annotations" / "480p" / v).mkdir(parents=True)
        labels = np.zeros((num_frames, H, W), np.uint8)
        for t in range(num_frames):
            labels[t, 4:12, 2:10] = 1
            labels[t, 8 + 2 * t:20 + 2 * t, 20:36] = 2
            frame = (np.stack([labels[t] * 100, np.full((H, W), 30 * t), labels[t] * 50], -1)
                     .astype(np.uint8))
            Image.fromarray(frame).save(root / "JPEGImages" / "480p" / v / f"{t:05d}.jpg")
            png = Image.fromarray(labels[t], mode="P")
            png.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
            png.save(root / "Annotations" / "480p" / v / f"{t:05d}.png")
        truth[v] = labels.astype(np.int64)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    # not the first
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(videos[1:]) + "\n")
    return truth


def test_davis_layout_loads_with_the_right_labels(tmp_path):
    truth = make_davis(tmp_path)
    videos = segment.folder_videos("davis", str(tmp_path), "val")
    assert [v["name"] for v in videos] == ["car"]                   # from ImageSets/2017/val.txt
    # no such list: all folders
    assert len(segment.folder_videos("davis", str(tmp_path), "test-dev")) == 2
    frames, labels = segment.load_folder_clip(videos[0]["pairs"], 4, 32)
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    ref = torch.nn.functional.interpolate(torch.from_numpy(truth["car"]).float()[:, None],
                                          size=(32, 32))
    # palette indices, nearest resize
    assert np.array_equal(labels, ref[:, 0].long().numpy())
    assert sorted(np.unique(labels)) == [0, 1, 2]
    # fewer frames than T: repeated
    _, repeated = segment.load_folder_clip(videos[0]["pairs"], 8, 32)
    assert np.array_equal(repeated[[0, 7]], labels[[0, 3]])


def test_bad_folders_and_annotations_fail_in_one_line(tmp_path):
    r = run(["--dataset", "davis", "--data-root", str(tmp_path / "nowhere")], ok=False)
    assert r.returncode == 2 and "nowhere" in r.stderr and "Traceback" not in r.stderr
    make_davis(tmp_path, videos=("a", "b"))
    bad = tmp_path / "Annotations" / "480p" / "b" / "00002.png"
    bad.write_bytes(b"not a png")
    r = run(["--dataset", "davis", "--data-root", str(tmp_path), "--preset", "tiny", "--out-dir",
             str(tmp_path / "out")], ok=False)
    assert r.returncode == 2 and str(bad) in r.stderr and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- end to end


def test_tiny_preset_runs_end_to_end(tmp_path):
    r = run(["--preset", "tiny", "--num-videos", "3", "--out-dir", str(tmp_path / "random")])
    assert "mIoU clustering" in r.stdout and "videos/s" in r.stdout
    random = json.loads((tmp_path / "random" / "results.json").read_text())
    # 2 objects + bg
    assert random["num_videos"] == 3 and all(v["k"] == 3 for v in random["videos"])
    assert 0 < random["miou_clustering"] <= 1 and 0 < random["miou_overclustering"] <= 1

    # a checkpoint as train.py writes it (tiny preset: pixel target, 64 px, 16 frames)
    grid = dict(model="tiny", patch_size=16, tubelet=2, img_size=64, num_frames=16)
    torch.manual_seed(1)
    net = PretrainModel(img_size=64, patch_size=16, num_frames=16, tubelet_size=2, out_dim=1536,
                        **MODEL_SIZES["tiny"])
    torch.save({"model": net.state_dict(), "args": grid}, tmp_path / "ck.pth")
    r = run(["--preset", "tiny", "--num-videos", "3", "--checkpoint", str(tmp_path / "ck.pth"),
             "--out-dir", str(tmp_path / "ck")])
    loaded = next(line for line in r.stdout.splitlines() if line.startswith("loaded encoder"))
    # the encoder loaded
    assert "blocks." not in loaded.split("|")[0] and "patch_embed" not in loaded
    assert "mIoU clustering" in r.stdout
    trained = json.loads((tmp_path / "ck" / "results.json").read_text())
    assert trained["miou_clustering"] != random["miou_clustering"]


def test_davis_folder_end_to_end(tmp_path):
    make_davis(tmp_path)
    r = run(["--dataset", "davis", "--data-root", str(tmp_path), "--preset", "tiny", "--layer", "2",
             "--out-dir", str(tmp_path / "out")])
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [v["name"] for v in res["videos"]] == ["car"] and res["videos"][0]["k"] == 3
    assert "mIoU clustering" in r.stdout


def test_torchrun_splits_videos_and_matches_one_process(tmp_path):
    """Two ranks take videos 0, 2 and 1, 3; the summed per-video scores equal one process's."""
    args = ["--preset", "tiny", "--num-videos", "4", "--kmeans-restarts", "2"]
    run([*args, "--out-dir", str(tmp_path / "one")])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]
    r = subprocess.run([*torchrun, "-m", "tools.segment", *args, "--out-dir", str(tmp_path / "two")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stdout + r.stderr
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert one["videos"] == two["videos"] and "2 rank(s)" in r.stdout
