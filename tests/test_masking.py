"""masking.py: exact mask counts, tube structure, object tokens, trajectory masking
(True = masked)."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import masking
from conftest import ROOT

SHAPES = [(8, 14, 14), (8, 7, 7), (4, 3, 5), (1, 4, 4), (2, 1, 1), (16, 6, 2)]
RATIOS = [0.0, 0.3, 0.5, 0.75, 0.8, 0.9, 0.95, 1.0]


def rng(seed=0):
    return np.random.default_rng(seed)


def random_objects(shape, kind, g):
    """Object-token layouts: none, scattered tokens, moving boxes (like real objects),
    everywhere."""
    t, h, w = shape
    if kind == "none":
        return np.zeros(shape, bool)
    if kind == "all":
        return np.ones(shape, bool)
    if kind == "scattered":
        return g.random(shape) < g.uniform(0.02, 0.6)
    objs = np.zeros(shape, bool)  # "boxes": two boxes drifting over time
    for _ in range(2):
        bh, bw = g.integers(1, h + 1), g.integers(1, w + 1)
        y, x = g.integers(0, h - bh + 1), g.integers(0, w - bw + 1)
        for i in range(t):
            yi = int(np.clip(y + g.integers(-1, 2), 0, h - bh))
            xi = int(np.clip(x + g.integers(-1, 2), 0, w - bw))
            objs[i, yi:yi + bh, xi:xi + bw] = True
    return objs


def test_num_masked():
    assert masking.num_masked(8, 14, 14, 0.8) == 1248  # 320 visible of 1568 (SPEC 3)
    assert masking.num_masked(8, 14, 14, 0.9) == 1408
    assert masking.num_masked(8, 14, 14, 0.0) == 0
    assert masking.num_masked(4, 3, 5, 0.5) == 4 * 7


@pytest.mark.parametrize("shape", SHAPES)
def test_tube_mask(shape):
    t, h, w = shape
    for ratio in RATIOS:
        for seed in range(5):
            m = masking.tube_mask(t, h, w, ratio, rng(seed))
            assert m.shape == shape and m.dtype == bool
            assert m.sum() == masking.num_masked(t, h, w, ratio)
            assert (m == m[:1]).all()  # every time slice identical: tubes
            np.testing.assert_array_equal(m, masking.tube_mask(t, h, w, ratio, rng(seed)))
    m = [masking.tube_mask(8, 14, 14, 0.8, rng(s)) for s in range(2)]
    assert not np.array_equal(*m)


def test_object_tokens_hand_made():
    footprints = np.zeros((2, 8, 64, 64), bool)
    footprints[0, 3, 17, 40] = True  # frame 3 -> slice 1; y 17 -> row 1; x 40 -> column 2
    tok = masking.object_tokens(footprints)
    assert tok.shape == (4, 4, 4) and tok.sum() == 1 and tok[1, 1, 2]
    footprints[1, 2, 16, 32] = True  # frame 2 is the same tubelet, same patch: still one token
    footprints[1, 7, 63, 0] = True  # last frame, bottom-left pixel -> token (3, 3, 0)
    footprints[0, 4, 15, 15] = True  # frame 4 -> slice 2, patch (0, 0)
    tok = masking.object_tokens(footprints)
    assert sorted(map(tuple, np.argwhere(tok))) == [(1, 1, 2), (2, 0, 0), (3, 3, 0)]
    # Other tubelet and patch sizes.
    tok = masking.object_tokens(footprints, tubelet=4, patch=8)
    assert tok.shape == (2, 8, 8)
    assert sorted(map(tuple, np.argwhere(tok))) == [(0, 2, 4), (0, 2, 5), (1, 1, 1), (1, 7, 0)]
    assert not masking.object_tokens(np.zeros((0, 4, 32, 32), bool)).any()  # no objects at all
    with pytest.raises(ValueError):
        # 3 frames do not split into tubelets of 2
        masking.object_tokens(np.zeros((1, 3, 32, 32), bool))


@pytest.mark.parametrize("kind", ["none", "scattered", "boxes", "all"])
def test_trajectory_mask_counts_and_structure(kind):
    g = rng(123)
    for shape in SHAPES:
        t, h, w = shape
        for ratio in RATIOS:
            for _ in range(6):
                objs = random_objects(shape, kind, g)
                m = masking.trajectory_mask(objs, ratio, rng(int(g.integers(1 << 30))))
                n = masking.num_masked(t, h, w, ratio)
                assert m.shape == shape and m.dtype == bool
                assert m.sum() == n  # exact budget, always
                O, free = objs.sum(), ~objs
                want = min(round(ratio * O), n)
                if n - want <= free.sum():
                    assert (m & objs).sum() == want  # object tokens masked at the given ratio
                else:
                    # all others masked, then more object tokens
                    assert (m & free).sum() == free.sum()
                # Tube structure where there are no objects: per position, the non-object tokens are
                # all masked or all visible, except at most one partly filled position.
                hit = (m & free).sum(0)
                partial = (hit > 0) & (hit < free.sum(0))
                assert partial.sum() <= 1


def test_trajectory_mask_without_objects_is_the_tube_mask():
    for shape in SHAPES:
        for ratio in RATIOS:
            for seed in range(3):
                m = masking.trajectory_mask(np.zeros(shape, bool), ratio, rng(seed))
                np.testing.assert_array_equal(m, masking.tube_mask(*shape, ratio, rng(seed)))


def test_trajectory_mask_objects_everywhere():
    objs = np.ones((8, 14, 14), bool)
    m = masking.trajectory_mask(objs, 0.8, rng(0))
    assert m.sum() == 1248  # round(0.8 * 1568) = 1254 object tokens wanted, capped at the budget
    assert not (m == m[:1]).all()  # random tokens, no tube structure to keep


def test_trajectory_mask_masks_objects_then_tubes():
    objs = np.zeros((8, 14, 14), bool)
    objs[:, 3:7, 4:9] = True  # 160 object tokens
    m = masking.trajectory_mask(objs, 0.8, rng(0))
    assert (m & objs).sum() == 128
    rest = m & ~objs
    assert rest.sum() == 1248 - 128
    # Away from the object every position is a whole tube, bar at most one partly filled position.
    outside = np.ones((14, 14), bool)
    outside[3:7, 4:9] = False
    counts = rest.sum(0)[outside]
    assert ((counts == 0) | (counts == 8)).sum() >= outside.sum() - 1


def test_trajectory_mask_seeded():
    objs = random_objects((8, 14, 14), "boxes", rng(0))
    a = masking.trajectory_mask(objs, 0.8, rng(4))
    np.testing.assert_array_equal(a, masking.trajectory_mask(objs, 0.8, rng(4)))
    assert not np.array_equal(a, masking.trajectory_mask(objs, 0.8, rng(5)))


def test_masks_from_motion():
    import motion
    g = rng(0)
    clip = motion.background("noise", 8, 64, 64, g)
    clip, footprints = motion.overlay(clip, motion.synthetic_objects(3, g, size=64), g)
    objs = masking.object_tokens(footprints)
    assert objs.shape == (4, 4, 4) and objs.any()
    # Every object pixel lies in an object token, and every object token holds an object pixel.
    per_pixel = objs.repeat(2, 0).repeat(16, 1).repeat(16, 2)
    assert not (footprints.any(0) & ~per_pixel).any()
    for i, y, x in np.argwhere(objs):
        assert footprints[:, 2 * i:2 * i + 2, 16 * y:16 * y + 16, 16 * x:16 * x + 16].any()
    m = masking.trajectory_mask(objs, 0.75, g)
    assert m.sum() == masking.num_masked(4, 4, 4, 0.75)


def test_figure_script_runs(tmp_path):
    out = tmp_path / "footprints.png"
    subprocess.run([sys.executable, "masking.py", "--out", str(out), "--size", "64",
                    "--tile", "48"],
                   cwd=ROOT, check=True, capture_output=True)
    with Image.open(out) as im:
        assert im.size[0] > 8 * 48 and im.size[1] > 3 * 48


@pytest.mark.parametrize("shape,tubelet,patch,draw", [
    ((16, 224, 224), 2, 16, dict()),                                        # the paper's clips
    ((8, 96, 64), 2, 16, dict(size_range=(100, 400))),                      # big, off-frame
    ((8, 32, 32), 2, 8, dict(size_range=(64, 160))),                        # the tiny demo's
    ((6, 48, 60), 3, 12, dict(size_range=(4, 30), scale_range=(0.5, 0.6))),  # small, odd grid
    ((4, 64, 64), 2, 16, dict(angle_range=(0, 0), scale_range=(1, 1))),     # unrotated copies
])
def test_motion_tokens_equal_the_footprints_tokens(shape, tubelet, patch, draw):
    """Issue 26: the object tokens the loader reads from the alpha alone (motion_tokens) are those
    of overlay's pixel footprints, exactly, object by object, over many draws: rotated, scaled,
    partly off-frame, soft and hard edges, transparent holes."""
    import motion
    g = rng(0)
    objs = motion.synthetic_objects(6, g, size=96)
    holed = objs[0].copy()
    holed[::5, :, 3] = 0                    # thin transparent stripes: tokens with slivers only
    faint = objs[1].copy()                  # alpha 0 or 1 of 255 at random: resized, near 0.5 /
    faint[..., 3] = (faint[..., 3] > 0) * g.integers(0, 2, faint.shape[:2])   # 255 (kept's edge)
    objs += [holed, faint, faint]
    covered = 0
    for seed in range(12):
        m = motion.draw_motion(shape, len(objs), rng(seed), num_objects=2, **draw)
        tiles, wants = [], []
        for k, i in enumerate(m["picks"]):
            P, Q = m["sizes"][k]
            tiles.append(motion._resize_premultiplied(objs[i], P, Q)[3])
            footprint = motion.paste(np.zeros((*shape, 3), np.uint8), objs[i], (P, Q),
                                     m["centres"][k], m["angles"][k], m["scales"][k])
            wants.append(masking.object_tokens(footprint[None], tubelet, patch))
            got = masking.motion_tokens(tiles[k:], m["sizes"][k:k + 1], m["centres"][k:k + 1],
                                        m["angles"][k:k + 1], m["scales"][k:k + 1], shape,
                                        tubelet, patch)
            np.testing.assert_array_equal(got, wants[k], err_msg=f"seed {seed} object {k}")
            covered += wants[k].sum()
        both = masking.motion_tokens(tiles, m["sizes"], m["centres"], m["angles"], m["scales"],
                                     shape, tubelet, patch)   # all objects at once: the union
        np.testing.assert_array_equal(both, wants[0] | wants[1], err_msg=f"seed {seed}")
    assert covered > 0
