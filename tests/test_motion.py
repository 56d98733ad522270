"""motion.py: trajectories, keyframe transforms, alpha blending, footprints, object bank,
backgrounds."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import motion
from conftest import ROOT



def rng(seed=0):
    return np.random.default_rng(seed)


def solid(h, w, colour, alpha):
    """A constant-colour RGBA object."""
    obj = np.zeros((h, w, 4), np.uint8)
    obj[..., :3], obj[..., 3] = colour, alpha
    return obj


def boxes(footprint):
    """Per frame of a footprint (T, H, W): (area, bounding-box height and width, touches
    a border)."""
    out = []
    for m in footprint:
        ys, xs = np.nonzero(m)
        if len(ys) == 0:
            out.append((0, 0, 0, True))
            continue
        border = (ys.min() == 0 or xs.min() == 0 or ys.max() == m.shape[0] - 1
                  or xs.max() == m.shape[1] - 1)
        out.append((len(ys), ys.max() - ys.min() + 1, xs.max() - xs.min() + 1, border))
    return out


# ---------------------------------------------------------------- trajectories and keyframes

@pytest.mark.parametrize("T,H,W", [(16, 224, 224), (8, 112, 160), (4, 64, 48)])
def test_trajectory_shape_inside_frame_and_seeded(T, H, W):
    for seed in range(20):
        tr = motion.random_trajectory(T, H, W, rng(seed))
        assert tr.shape == (T, 2)
        assert (tr >= 0).all() and (tr[:, 0] <= W - 1).all() and (tr[:, 1] <= H - 1).all()
        np.testing.assert_array_equal(tr, motion.random_trajectory(T, H, W, rng(seed)))
    other = motion.random_trajectory(T, H, W, rng(1))
    assert not np.allclose(motion.random_trajectory(T, H, W, rng(0)), other)


def test_trajectory_is_smooth_and_smoothing_matters():
    steps, bends, raw_bends = [], [], []
    for seed in range(100):
        tr = motion.random_trajectory(16, 224, 224, rng(seed))
        raw = motion.random_trajectory(16, 224, 224, rng(seed), sigma=0)  # same points, no Gaussian
        steps.append(np.linalg.norm(np.diff(tr, axis=0), axis=1).max())
        bends.append(np.abs(np.diff(tr, 2, axis=0)).max())
        raw_bends.append(np.abs(np.diff(raw, 2, axis=0)).max())
    # Measured: max step <= 70 px (paths span 40-180 px), bends ~17 px vs ~165 px unsmoothed.
    assert max(steps) < 90 and np.median(steps) < 45
    assert np.mean(bends) < 0.2 * np.mean(raw_bends)
    assert np.mean(raw_bends) > 80  # the unsmoothed path really jumps around


def test_trajectory_extent_scales_with_resolution():
    # With T = M every smoothed point is kept, so each axis spans exactly the drawn extent.
    for size, span in [(224, 100), (112, 50)]:
        tr = motion.random_trajectory(48, size, size, rng(3), extent=(100, 100))
        np.testing.assert_allclose(np.ptp(tr, axis=0), [span, span], atol=1e-6)


def test_keyframe_transforms_are_piecewise_linear():
    middles = set()
    for seed in range(50):
        angles, scales = motion.keyframe_transforms(16, rng(seed))
        assert angles.shape == scales.shape == (16,)
        assert (angles >= -90).all() and (angles <= 90).all()
        assert (scales >= 0.5).all() and (scales <= 1.5).all()
        # Linear between keyframes: second differences vanish except at the one middle keyframe.
        bend = np.flatnonzero(~np.isclose(np.diff(angles, 2), 0, atol=1e-9)
                              | ~np.isclose(np.diff(scales, 2), 0, atol=1e-9))
        assert len(bend) <= 1
        if len(bend):
            m = bend[0] + 1
            assert 1 <= m <= 14
            middles.add(m)
            # Each piece is the straight line between its two keyframe values.
            np.testing.assert_allclose(angles[:m + 1], np.linspace(angles[0], angles[m], m + 1))
            np.testing.assert_allclose(scales[m:], np.linspace(scales[m], scales[-1], 16 - m))
        else:
            np.testing.assert_allclose(angles, np.linspace(angles[0], angles[-1], 16))
    assert len(middles) >= 5  # the middle keyframe moves from clip to clip
    a, s = motion.keyframe_transforms(16, rng(1))
    a2, s2 = motion.keyframe_transforms(16, rng(1))
    np.testing.assert_array_equal(a, a2), np.testing.assert_array_equal(s, s2)
    assert not np.allclose(a, motion.keyframe_transforms(16, rng(2))[0])
    for T in (1, 2):
        assert motion.keyframe_transforms(T, rng(0))[0].shape == (T,)


# ---------------------------------------------------------------- overlay

@pytest.fixture(scope="module")
def objects():
    return motion.synthetic_objects(6, rng(0), size=96)


def test_overlay_seeded_and_input_untouched(objects):
    frames = motion.background("noise", 8, 112, 112, rng(5))
    before = frames.copy()
    out, footprints = motion.overlay(frames, objects, rng(7))
    np.testing.assert_array_equal(frames, before)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert footprints.shape == (2, 8, 112, 112) and footprints.dtype == bool
    out2, footprints2 = motion.overlay(frames, objects, rng(7))
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(footprints, footprints2)
    out3, footprints3 = motion.overlay(frames, objects, rng(8))
    assert not np.array_equal(footprints, footprints3) and not np.array_equal(out, out3)


def test_alpha_blend_exact_and_footprint_is_alpha():
    # Right half: colour (201, 101, 51) at alpha 128. Left half: alpha 0 over a garbage colour.
    obj = solid(32, 32, (201, 101, 51), 128)
    obj[:, :16] = (255, 0, 255, 0)
    frames = np.zeros((6, 224, 224, 3), np.uint8)
    for seed in range(5):
        out, footprints = motion.overlay(frames, [obj], rng(seed), num_objects=1,
                                         size_range=(32, 32), angle_range=(0, 0),
                                         scale_range=(1, 1))
        fp = footprints[0]
        expected = [101, 51, 26]  # round(obj * a) with a = 128 / 255 on black: 100.89, 50.70, 25.60
        np.testing.assert_array_equal(out[fp], np.broadcast_to(expected, out[fp].shape))
        assert (out[~fp] == 0).all()
        for area, h, w, border in boxes(fp):  # a solid 32 x 16 rectangle (clipped at borders)
            assert area == h * w and h <= 32 and w <= 16
            assert border or (h, w) == (32, 16)


def test_transparent_object_changes_nothing():
    frames = motion.background("noise", 4, 64, 64, rng(0))
    out, footprints = motion.overlay(frames, [solid(20, 20, (255, 255, 255), 0)], rng(0))
    np.testing.assert_array_equal(out, frames)
    assert not footprints.any()


def test_no_colour_bleeds_from_transparent_pixels():
    # Alpha is premultiplied before resampling: the magenta under alpha 0 must never show, at any
    # rotation and scale, so red and blue stay exactly 0 on black.
    obj = solid(40, 40, (0, 255, 0), 255)
    obj[::3] = (255, 0, 255, 0)
    obj[:, ::4] = (255, 0, 255, 0)
    out, footprints = motion.overlay(np.zeros((8, 112, 112, 3), np.uint8), [obj], rng(1),
                                     num_objects=2)
    assert footprints.any() and out[..., 1].any()
    assert not out[..., 0].any() and not out[..., 2].any()


def reference_paste(frame, obj, cx, cy, angle, scale):
    """Independent check of motion._paste for one frame: torch's affine_grid over the
    whole frame."""
    import torch
    import torch.nn.functional as F
    H, W, _ = frame.shape
    _, P, Q = obj.shape
    c, s = np.cos(np.deg2rad(angle)) / scale, np.sin(np.deg2rad(angle)) / scale
    # Frame pixel x = (xn + 1) * W / 2 - 0.5; object offset = R(-angle) (x - cx) / scale, in
    # units of Q / 2.
    ox, oy = W / 2 - 0.5 - cx, H / 2 - 0.5 - cy
    theta = torch.tensor([[[c * W / Q, -s * H / Q, 2 / Q * (c * ox - s * oy)],
                           [s * W / P, c * H / P, 2 / P * (s * ox + c * oy)]]], dtype=torch.float64)
    grid = F.affine_grid(theta, [1, 4, H, W], align_corners=False)
    rgba = F.grid_sample(obj[None].double(), grid, align_corners=False)[0].permute(1, 2, 0).numpy()
    a = np.round(rgba[..., 3:] * 255) / 255
    fg = np.where(a > 0, rgba[..., :3] / np.maximum(rgba[..., 3:], 1e-12), 0) * 255
    return np.round(frame * (1 - a) + fg * a).astype(np.uint8), a[..., 0] > 0


def test_paste_matches_full_frame_affine_grid():
    g = rng(0)
    obj = g.integers(0, 256, (33, 21, 4), dtype=np.uint8)
    obj[..., 3] = np.maximum(obj[..., 3], 128)  # opaque enough up to the edge: the rim must be kept
    obj = motion._resize_premultiplied(obj, 33, 21)
    frames = motion.background("noise", 6, 80, 96, g)
    # Integer centres sit on the snapping lattice for odd P and Q, so the paste does not move them.
    centres = np.stack([g.integers(0, 96, 6), g.integers(0, 80, 6)], 1).astype(float)
    angles, scales = g.uniform(-90, 90, 6), g.uniform(0.5, 1.5, 6)
    out, footprint = frames.copy(), np.zeros((6, 80, 96), bool)
    motion._paste(out, footprint, obj, centres, angles, scales)
    for t in range(6):
        ref, ref_fp = reference_paste(frames[t], obj, *centres[t], angles[t], scales[t])
        assert ref_fp.any()
        assert (footprint[t] != ref_fp).sum() <= 2  # float32 vs float64 right at alpha = 0.5 / 255
        assert np.abs(out[t].astype(int) - ref).max() <= 1


def test_rotation_is_counter_clockwise():
    obj = solid(21, 21, (255, 255, 255), 255)
    obj[:, -3:] = (255, 0, 0, 255)  # a red right edge ...
    out, footprints = motion.overlay(np.zeros((2, 112, 112, 3), np.uint8), [obj], rng(0),
                                     num_objects=1, size_range=(42, 42), angle_range=(90, 90),
                                     scale_range=(1, 1))
    ys, xs = np.nonzero(footprints[0, 0])
    red = (out[0, ..., 0] == 255) & (out[0, ..., 1] == 0)
    assert np.nonzero(red)[0].max() <= ys.min() + 3  # ... is on top after +90 degrees


def test_opaque_rectangle_sizes_follow_size_range():
    frames = np.zeros((4, 224, 224, 3), np.uint8)
    seen = []
    for seed in range(15):
        _, footprints = motion.overlay(frames, [solid(10, 30, (255, 0, 0), 255)], rng(seed),
                                       size_range=(32, 128), angle_range=(0, 0), scale_range=(1, 1))
        for fp in footprints:
            for area, h, w, border in boxes(fp):
                assert area == h * w  # no rotation: an axis-aligned rectangle
                if not border:
                    assert 32 <= h <= 128 and 32 <= w <= 128
                    seen += [h, w]
    assert min(seen) < 50 and max(seen) > 110  # the whole range is used


@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_rotated_scaled_area(scale):
    frames = np.zeros((8, 224, 224, 3), np.uint8)
    side = 64 * scale
    for seed in range(5):
        _, footprints = motion.overlay(frames, [solid(16, 16, (255, 255, 255), 255)], rng(seed),
                                       num_objects=1, size_range=(64, 64),
                                       scale_range=(scale, scale))
        for area, _, _, border in boxes(footprints[0]):
            if not border:
                # rotation keeps the area; the 1 px anti-aliased rim adds about a perimeter
                assert side ** 2 <= area <= side ** 2 + 4 * side + 16


def test_footprint_matches_changed_pixels(objects):
    for seed in range(4):
        frames = motion.background("noise", 8, 112, 112, rng(seed))
        out, footprints = motion.overlay(frames, objects, rng(seed), num_objects=3)
        changed = (out != frames).any(-1)
        covered = footprints.any(0)
        assert covered.any()
        assert not (changed & ~covered).any()  # nothing changes outside the footprints
        # the few left are faint soft-edge pixels
        assert (changed & covered).sum() > 0.8 * covered.sum()


def test_later_objects_drawn_over_earlier():
    frames = np.zeros((4, 112, 112, 3), np.uint8)
    objs = [solid(20, 20, (255, 0, 0), 255), solid(20, 20, (0, 0, 255), 255)]
    for seed in range(5):
        # big: they overlap
        out, footprints = motion.overlay(frames, objs, rng(seed), size_range=(180, 200))
        top = out[footprints[1] & ~footprints[0]]
        colour = top[np.argmax(top.sum(-1))]  # the second object's colour
        inner = ndimage.binary_erosion(footprints[1], structure=np.ones((1, 5, 5), bool))
        assert (footprints[0] & inner).any()
        overlap = out[footprints[0] & inner]
        np.testing.assert_array_equal(overlap, np.broadcast_to(colour, overlap.shape))


def test_overlay_edge_cases(objects):
    frames = motion.background("black", 4, 32, 48, rng(0))
    # larger than the frame
    out, footprints = motion.overlay(frames, objects, rng(0), size_range=(448, 448))
    assert footprints.shape == (2, 4, 32, 48) and footprints.any()
    # picks with replacement
    out, footprints = motion.overlay(frames, objects[:1], rng(0), num_objects=3)
    assert footprints.shape[0] == 3
    out, footprints = motion.overlay(frames, objects, rng(0), num_objects=0)
    np.testing.assert_array_equal(out, frames)
    with pytest.raises(ValueError):
        motion.overlay(frames, [np.zeros((8, 8, 3), np.uint8)], rng(0))  # RGB, no alpha
    with pytest.raises(ValueError):
        motion.overlay(frames, [], rng(0))


# ---------------------------------------------------------------- objects and backgrounds

def test_synthetic_objects():
    objs = motion.synthetic_objects(8, rng(0), size=64)
    assert len(objs) == 8
    for o in objs:
        assert o.dtype == np.uint8 and o.ndim == 3 and o.shape[2] == 4 and max(o.shape[:2]) <= 64
        assert (o[..., 3] == 0).any() or (o[..., 3] < 255).any()  # a cut-out, not a full square
        assert (o[..., 3] > 200).any()
    again = motion.synthetic_objects(8, rng(0), size=64)
    assert all(np.array_equal(a, b) for a, b in zip(objs, again))
    assert len({o.tobytes() for o in objs}) == 8


def test_object_bank(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    rgba = np.zeros((300, 100, 4), np.uint8)
    rgba[50:290, 10:90] = (10, 200, 30, 255)  # the object sits inside transparent margins
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cat" / "0.png")
    Image.fromarray(solid(20, 30, (1, 2, 3), 255), "RGBA").save(tmp_path / "dog" / "1.png")
    bank = motion.ObjectBank(tmp_path, max_side=120)
    assert len(bank) == 2
    a = bank[0]
    # cropped to alpha (240 x 80), capped at 120
    assert a.dtype == np.uint8 and a.shape == (120, 40, 4)
    assert bank[1].shape == (20, 30, 4)
    out, footprints = motion.overlay(np.zeros((4, 64, 64, 3), np.uint8), bank, rng(0))
    assert footprints.any()

    Image.fromarray(np.zeros((8, 8, 3), np.uint8), "RGB").save(tmp_path / "dog" / "2.png")
    bank = motion.ObjectBank(tmp_path)
    with pytest.raises(ValueError, match=r"2\.png has no alpha channel"):
        bank[2]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        motion.ObjectBank(tmp_path / "empty")
    with pytest.raises(ValueError, match="missing"):
        motion.ObjectBank(tmp_path / "missing")


def test_backgrounds():
    noise = motion.background("noise", 5, 32, 40, rng(0))
    assert noise.shape == (5, 32, 40, 3) and noise.dtype == np.uint8
    assert (noise == noise[:1]).all() and noise.min() < 10 and noise.max() > 245
    np.testing.assert_array_equal(noise, motion.background("noise", 5, 32, 40, rng(0)))
    assert not np.array_equal(noise, motion.background("noise", 5, 32, 40, rng(1)))
    black = motion.background("black", 3, 16, 16, rng(0))
    assert black.shape == (3, 16, 16, 3) and not black.any()
    img = motion.still_image(32, 40, rng(0))
    clip = motion.background("image", 4, 32, 40, rng(0), image=img)
    assert (clip == img).all()
    with pytest.raises(ValueError):
        motion.background("image", 4, 32, 32, rng(0), image=img)  # wrong size
    with pytest.raises(ValueError):
        motion.background("places", 4, 32, 32, rng(0))


def test_figure_script_runs(tmp_path):
    out = tmp_path / "fig.png"
    subprocess.run([sys.executable, "-m", "tools.figures", "figure3", "--out", str(out), "--size",
                    "64", "--frames", "8", "--columns", "4"], cwd=ROOT, check=True,
                   capture_output=True)
    with Image.open(out) as im:
        assert im.size[0] > 4 * 64 and im.size[1] > 3 * 64


# ---------------------------------------------------------------- render (the training step's paste)

def render_batch(clips, objects, seeds, **draw):
    """overlay's clips and, from the same draws, render's: the loader's half (draw_motion,
    motion_tiles) per clip, collated, then one render call. -> (overlay's (B, T, H, W, 3), render's
    (B, T, H, W, 3), the draws)."""
    import torch
    T, H, W = clips[0].shape[:3]
    sides = motion.tile_sides(objects, draw.get("size_range", (32, 128)), H, W)
    want, draws, tiles = [], [], []
    for clip, seed in zip(clips, seeds):
        want.append(motion.overlay(clip, objects, rng(seed), **draw)[0])
        draws.append(motion.draw_motion((T, H, W), len(objects), rng(seed), **draw))
        tiles.append(motion.motion_tiles(objects, draws[-1], sides))
    keys = ("centres", "angles", "scales", "sizes")
    got = motion.render(torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3),
                        *(torch.stack([t[k] for t in tiles]) for k in ("tiles", "sources",
                                                                        "canvas")),
                        *(torch.from_numpy(np.stack([d[k] for d in draws])) for k in keys))
    return np.stack(want), got.permute(0, 2, 3, 4, 1).numpy(), draws


@pytest.mark.parametrize("draw", [
    dict(),                                                        # the paper's draws
    dict(num_objects=3, size_range=(100, 300)),                    # big, overlapping, off-frame
    dict(size_range=(8, 40), scale_range=(0.5, 0.5)),              # small, shrunk
    dict(angle_range=(0, 0), scale_range=(1, 1)),                  # exact copies
])
def test_render_equals_overlay(objects, draw):
    """Issue 26: the step's render gives overlay's pixels for the same draws, within 2 / 255 after
    uint8 rounding (measured: <= 1), on noise, for rotated, scaled and partly off-frame objects;
    premultiplied alpha, centre snapping, alpha on the 8-bit scale, later objects on top."""
    g = rng(1)
    clips = [motion.background("noise", 8, 64, 80, g) for _ in range(6)]
    want, got, _ = render_batch(clips, objects, range(6), **draw)
    assert got.dtype == np.uint8 and got.shape == want.shape
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 2, diff.max()
    assert (diff > 0).mean() < 0.01          # float rounding only, at a few pixels
    assert (want != np.stack(clips)).any()   # objects were pasted


def test_render_pastes_nothing_with_empty_tiles_and_no_objects():
    import torch
    frames = torch.randint(0, 256, (2, 3, 4, 16, 16), dtype=torch.uint8)
    none = motion.no_motion(2, 4)
    args = [torch.from_numpy(np.stack([none[k]] * 2)) for k in ("centres", "angles", "scales",
                                                                 "sizes")]
    tiles, sources = torch.zeros(2, 2, 4, 5, 5, dtype=torch.uint8), torch.ones(2, 2, 2).long()
    canvas = torch.empty(2, 0, 3)
    assert torch.equal(motion.render(frames, tiles, sources, canvas, *args), frames)
    assert torch.equal(motion.render(frames, tiles[:, :0], sources[:, :0], canvas,
                                     *(a[:, :0] for a in args)), frames)


def test_render_is_one_graph_without_recompiles(objects):
    """No host sync and no recompile per batch: render traces to one graph without breaks (as the
    forward's test in test_model.py), and a compiled render runs a second batch of new values
    without recompiling."""
    import torch
    clips = [motion.background("noise", 4, 32, 32, rng(i)) for i in range(2)]
    draws = [motion.draw_motion((4, 32, 32), len(objects), rng(i)) for i in range(4)]
    keys = ("centres", "angles", "scales", "sizes")

    def batch(ds):
        return (torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3),
                *(torch.stack([motion.motion_tiles(objects, d, (96, 18))[k] for d in ds])
                  for k in ("tiles", "sources", "canvas")),
                *(torch.from_numpy(np.stack([d[k] for d in ds])) for k in keys))
    torch._dynamo.reset()
    e = torch._dynamo.explain(motion.render)(*batch(draws[:2]))
    assert (e.graph_count, e.graph_break_count) == (1, 0), e.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(motion.render, backend="eager", fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        first = compiled(*batch(draws[:2]))
        second = compiled(*batch(draws[2:]))
    assert torch.equal(first, motion.render(*batch(draws[:2])))
    assert not torch.equal(first, second)


def test_tiles_ship_premultiplied_colour():
    """motion_tiles ships each object premultiplied on the 8-bit scale (round(colour * alpha /
    255), the packed bank's own tiles), so render does no colour conversion: a PNG's or a
    built-in's multiplied in the worker, a packed bank's tile as stored."""
    g = rng(0)
    obj = g.integers(0, 256, (9, 7, 4), dtype=np.uint8)
    want = np.round(obj[..., :3] * (obj[..., 3:] / 255)).astype(np.uint8)
    got = motion.premultiply(obj)
    assert np.array_equal(got[..., :3], want) and np.array_equal(got[..., 3], obj[..., 3])
    c, a = np.divmod(np.arange(65536), 256)   # every (colour, alpha) pair: the shift trick exact
    every = motion.premultiply(np.stack([c, c, c, a], -1).astype(np.uint8)[None])[0, :, 0]
    assert np.array_equal(every, np.floor(c * a / 255 + 0.5))
    m = {"picks": np.array([0, 0])}
    t = motion.motion_tiles([obj], m, (12, 12))
    assert np.array_equal(t["tiles"][1, :, :9, :7].permute(1, 2, 0).numpy(), got)
    assert t["tiles"][1, :, 9:].sum() == 0 and t["sources"][1].tolist() == [9, 7]


def test_objects_that_are_not_rgba_uint8_are_refused_on_both_paths():
    """overlay (the worker) and motion_tiles (the step's loader half) name what they got."""
    m = motion.draw_motion((4, 32, 32), 1, rng(0), num_objects=1)
    for bad in (np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20, 4), np.float32)):
        with pytest.raises(ValueError, match=r"RGBA uint8 arrays \(h, w, 4\), got"):
            motion.overlay(np.zeros((4, 32, 32, 3), np.uint8), [bad], rng(0))
        with pytest.raises(ValueError, match=r"RGBA uint8 arrays \(h, w, 4\), got"):
            motion.motion_tiles([bad], m, (32, 32))
