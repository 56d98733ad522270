"""Synthetic motion for SMILE: objects pasted along smooth trajectories (paper Sec. 3.3, 4.1,
Fig. 3).

SMILE infuses motion into a clip by alpha-blending a few segmented objects onto it. Each object
moves along a smooth random trajectory and rotates and scales between keyframes, so the student has
to track it to predict the masked teacher features (SPEC 2). In the order the method uses them:

    random_trajectory    Sec. 3.3: M random points, Gaussian-smoothed over time, down to T centres
    keyframe_transforms  Sec. 3.3, 4.1: angle in [-90, 90] deg, scale in [0.5, 1.5] at 3 keyframes
    draw_motion          every draw of a clip's motion (2 objects, Table 4f), before any pixel
    overlay              pastes them here, with each object's pixel footprint (-> object tokens)
    render               pastes them for a batch on the device, in the training step (the loader
                         ships motion_tiles and the draws; masking.motion_tokens the tokens)
    ObjectBank           a folder of RGBA cut-outs (the paper's PIN bank, <category>/<n>.png)
    synthetic_objects    textured cut-out shapes, a stand-in when no bank is on disk
    background           Table 7 / Appendix D: noise, black or a still image repeated over T frames

Frames are uint8 (T, H, W, 3), already cropped, before normalisation. Everything is a pure function
of an explicit numpy.random.Generator: same seed, same clip. Figure 3: `python -m tools.figures
figure3`.
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from augment import aa_weights


def random_trajectory(num_frames, height, width, rng, num_points=48, sigma=8.0, extent=(40, 180)):
    """(T, 2) float (x, y) object centres in pixels, inside the frame (Sec. 3.3)."""
    # Sec. 3.3: M >> T points uniformly in the frame; a 1-D Gaussian over time on x and y separately
    # turns the jumps into a smooth curve. sigma <= 0 skips it (only to show why it matters).
    pts = rng.uniform(0.0, 1.0, size=(num_points, 2)) * [width - 1, height - 1]
    if sigma > 0:
        pts = ndimage.gaussian_filter1d(pts, sigma, axis=0, mode="reflect")
    # (ref) smoothing shrinks the path towards the frame centre, so each axis is min-max normalised
    # and both get one random extent in pixels (40-180 at 224): small wiggles and sweeping paths.
    pts = (pts - pts.min(0)) / np.maximum(np.ptp(pts, axis=0), 1e-8)
    size = rng.uniform(*np.multiply(extent, min(height, width) / 224))
    pts *= size
    # A random offset that keeps the whole path inside the frame; the object itself may leave it.
    room = np.maximum([width - 1 - size, height - 1 - size], 0.0)
    pts = np.clip(pts + rng.uniform(0.0, 1.0, size=2) * room, 0, [width - 1, height - 1])
    return pts[np.round(np.linspace(0, num_points - 1, num_frames)).astype(int)]   # M -> T


def keyframe_transforms(num_frames, rng, angle_range=(-90, 90), scale_range=(0.5, 1.5)):
    """Per-frame rotation angles (T,) in degrees and scales (T,) (Sec. 3.3, 4.1).

    Keyframes are the first frame, a random frame strictly in between and the last one; angle and
    scale are drawn uniformly at each and linearly interpolated. ((ref) random-walks them instead.)
    Under 3 frames, too short for a middle keyframe, every frame is one."""
    keys = (np.array([0, rng.integers(1, num_frames - 1), num_frames - 1]) if num_frames >= 3
            else np.arange(num_frames))
    key_angles = rng.uniform(*angle_range, size=len(keys))
    key_scales = rng.uniform(*scale_range, size=len(keys))
    frames = np.arange(num_frames)
    return np.interp(frames, keys, key_angles), np.interp(frames, keys, key_scales)


def _resize_premultiplied(obj, height, width):
    """RGBA uint8 (h, w, 4) -> (4, height, width) float in [0, 1], colour premultiplied by alpha.

    Premultiplying keeps whatever colour a cut-out stores under alpha 0 from bleeding into its edges
    when it is resampled (here and in the rotation below)."""
    x = torch.from_numpy(np.ascontiguousarray(_rgba(obj))).permute(2, 0, 1).float() / 255
    x = torch.cat([x[:3] * x[3:], x[3:]])
    x = F.interpolate(x[None], size=(height, width), mode="bilinear", antialias=True,
                      align_corners=False)
    return x[0].clamp_(0, 1)


def _rgba(obj):
    """obj if it is an RGBA uint8 array (h, w, 4), else a ValueError."""
    if obj.ndim != 3 or obj.shape[2] != 4 or obj.dtype != np.uint8:
        raise ValueError(f"objects must be RGBA uint8 arrays (h, w, 4), got {obj.dtype} "
                         f"{obj.shape}")
    return obj


def _boxes(shape, size, centres, angles, scales):
    """Where one object of size (P, Q) can land in frames of shape (T, H, W): each frame's box
    around the rotated, scaled object, clipped to the frame, as one ragged batch. centres (T, 2)
    (x, y) px, angles (T,) degrees counter-clockwise on screen, scales (T,). -> grid, float32
    (1, 1, n, 2) in grid_sample's units of the object, and the flat (t, y, x) pixel of each point,
    (n,). _paste blends there; masking.motion_tokens samples these points from the alpha alone."""
    T, H, W = shape
    P, Q = size
    cos, sin, cx, cy, x0, x1, y0, y1 = box_geometry(shape, size, centres, angles, scales)
    grids, index = [], []
    for t in range(T):
        xs, ys = np.arange(x0[t], x1[t] + 1), np.arange(y0[t], y1[t] + 1)
        # Offsets from the centre, (1, nx) and (ny, 1), in float32 like grid_sample's grid.
        dx = (xs - cx[t]).astype(np.float32)[None, :]
        dy = (ys - cy[t]).astype(np.float32)[:, None]
        # Inverse transform, frame offset -> object offset: undo the scale and the rotation, then
        # express it in grid_sample's units ([-1, 1] across the object, align_corners=False).
        c, s = float(cos[t] / scales[t]), float(sin[t] / scales[t])
        u = (c * dx - s * dy) * (2 / Q)
        v = (s * dx + c * dy) * (2 / P)
        grids.append(np.stack(np.broadcast_arrays(u, v), axis=-1).reshape(-1, 2))
        index.append(((t * H + ys[:, None].astype(np.int64)) * W
                      + xs[None, :].astype(np.int64)).reshape(-1))
    return torch.from_numpy(np.concatenate(grids))[None, None], np.concatenate(index)


def box_geometry(shape, size, centres, angles, scales):
    """_boxes' per-frame geometry, float64 (T,) each: cos, sin of the angle, the snapped centre
    cx, cy, and the pixel box x0..x1, y0..y1 (inclusive, empty when x0 > x1) clipped to the frame."""
    T, H, W = shape
    P, Q = size
    rad = np.deg2rad(angles)
    cos, sin = np.cos(rad), np.sin(rad)
    # Half sizes of the rotated, scaled box that can get alpha > 0: bilinear sampling with zero
    # padding reaches half an object pixel past each edge, hence (Q + 1) x (P + 1).
    half_w = scales * (np.abs(cos) * (Q + 1) + np.abs(sin) * (P + 1)) / 2
    half_h = scales * (np.abs(sin) * (Q + 1) + np.abs(cos) * (P + 1)) / 2
    cx, cy = snap_centres(centres, size)
    return (cos, sin, cx, cy, np.maximum(np.ceil(cx - half_w), 0),
            np.minimum(np.floor(cx + half_w), W - 1), np.maximum(np.ceil(cy - half_h), 0),
            np.minimum(np.floor(cy + half_h), H - 1))


def snap_centres(centres, size):
    """Centres (..., 2) (x, y) snapped so that object pixel centres fall on frame pixel centres: at
    angle 0 and scale 1 a paste is then an exact copy (<= 0.5 px off the trajectory). numpy or
    torch (round half to even in both); size (P, Q) broadcasts against centres[..., 0]. -> cx, cy."""
    P, Q = size
    return ((centres[..., 0] - (Q - 1) / 2).round() + (Q - 1) / 2,
            (centres[..., 1] - (P - 1) / 2).round() + (P - 1) / 2)


def _kept(alpha):
    """Sampled alpha in [0, 1] -> where it rounds to at least 1 on the 8-bit scale of the PNG it came
    from (round half to even sends 0.5 to 0): the footprint, alpha > 0 after the transform."""
    return alpha * 255 > 0.5


def _paste(out, footprint, obj, centres, angles, scales):
    """Rotate, scale and alpha-blend one object into every frame of out, in place, on the CPU
    (overlay, paste; render is the training step's batched path).

    out: uint8 (T, H, W, 3); footprint: bool (T, H, W), set where alpha > 0; obj: (4, P, Q)
    premultiplied; centres, angles, scales as in _boxes. Only the pixels of each frame's box are
    touched; one grid_sample call resamples the object for all T frames at once."""
    grid, index = _boxes(out.shape[:3], obj.shape[1:], centres, angles, scales)
    if len(index) == 0:
        return  # nothing of the object falls inside the frame
    sample = F.grid_sample(obj[None], grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    sample = sample[0, :, 0].numpy()  # (4, n): premultiplied RGB + alpha
    # Alpha back on the 8-bit scale: a = round(255 alpha) / 255, kept where a >= 1 / 255.
    keep = np.flatnonzero(_kept(sample[3]))
    index, sample = index[keep], np.take(sample, keep, axis=1)
    a = np.round(sample[3] * 255) / 255
    # Sec. 3.3: out = frame * (1 - a) + object * a, where object * a = (premultiplied / alpha) * a.
    flat = out.reshape(-1, 3)  # a view: writes land in out
    frame = np.take(flat, index, axis=0).T  # (3, n) uint8
    blended = frame * (1 - a)
    blended += sample[:3] * (a * 255 / sample[3])
    flat[index] = np.clip(np.round(blended, out=blended), 0, 255, out=blended).astype(np.uint8).T
    footprint.reshape(-1)[index] = True


def object_side(size_range, height, width):
    """Sec. 4.1: P, Q uniform in size_range at 224, scaled by min(H, W) / 224. -> (min, max) px."""
    f = min(height, width) / 224
    return max(round(size_range[0] * f), 1), max(round(size_range[1] * f), 1)


def draw_motion(shape, num_bank, rng, num_objects=2, size_range=(32, 128), angle_range=(-90, 90),
                scale_range=(0.5, 1.5), num_points=48, sigma=8.0, extent=(40, 180)):
    """The motion of one clip of shape (T, H, W), every draw and no pixel (Sec. 3.3, 4.1): objects
    picked from a bank of num_bank, each one's size P x Q, trajectory and keyframe transforms.
    Sizes and extents are pixels at 224, scaled by min(H, W) / 224. -> dict(picks (K,), sizes
    (K, 2) (P, Q), centres (K, T, 2), angles (K, T), scales (K, T)): overlay pastes it in the loader
    worker, render in the training step."""
    T, H, W = shape
    K, m = num_objects, no_motion(num_objects, T)
    if K == 0:
        return m
    if num_bank == 0:
        raise ValueError("overlay needs at least one object")
    m["picks"][:] = rng.choice(num_bank, size=K, replace=num_bank < K)
    lo, hi = object_side(size_range, H, W)
    for k in range(K):
        m["sizes"][k] = rng.integers(lo, hi + 1, size=2)   # Sec. 4.1: P x Q in [32, 128] at 224
        m["centres"][k] = random_trajectory(T, H, W, rng, num_points=num_points, sigma=sigma,
                                            extent=extent)
        m["angles"][k], m["scales"][k] = keyframe_transforms(T, rng, angle_range=angle_range,
                                                             scale_range=scale_range)
    return m


def no_motion(num_objects, num_frames):
    """draw_motion's dict for num_objects objects that stay put, unrotated, unscaled, 1 x 1 px."""
    K, T = num_objects, num_frames
    return dict(picks=np.zeros(K, np.int64), sizes=np.ones((K, 2), np.int64),
                centres=np.zeros((K, T, 2)), angles=np.zeros((K, T)), scales=np.ones((K, T)))


def overlay(frames, objects, rng, **draw):
    """Paste draw_motion's objects moving along smooth trajectories onto a clip (Sec. 3.3), in
    this process: the figures', the tools' and the path the loader took before render.

    frames: uint8 (T, H, W, 3), left untouched. objects: any sequence of RGBA uint8 (h, w, 4) arrays
    (an ObjectBank, synthetic_objects(...)). draw: draw_motion's keywords (num_objects=2, ...).
    Returns the motion-infused frames, uint8 (T, H, W, 3), and footprints, bool (K, T, H, W):
    object k's pixel footprint (alpha > 0 after the transform) in frame t. Objects may partly leave
    the frame; later objects are drawn over earlier ones."""
    out = frames.copy()
    m = draw_motion(frames.shape[:3], len(objects), rng, **draw)
    footprints = np.zeros((len(m["picks"]), *frames.shape[:3]), dtype=bool)
    for k, i in enumerate(m["picks"]):
        # The object is stretched to P x Q ((ref) does the same), then transformed per frame.
        footprints[k] = paste(out, np.asarray(objects[int(i)]), tuple(m["sizes"][k]),
                              m["centres"][k], m["angles"][k], m["scales"][k])
    return out, footprints


def paste(frames, obj, size, centres, angles, scales):
    """Paste one RGBA uint8 object, stretched to size = (P, Q), into frames uint8 (T, H, W, 3) in
    place, centred at centres (T, 2) (x, y) px, rotated by angles (T,) degrees counter-clockwise on
    screen and scaled by scales (T,). -> its footprint, bool (T, H, W). overlay's building block,
    public for datasets that script their own motion (evaluation.MotionClassDataset)."""
    footprint = np.zeros(frames.shape[:3], dtype=bool)
    _paste(frames, footprint, _resize_premultiplied(obj, *size), centres, angles, scales)
    return footprint


def premultiply(rgba):
    """RGBA uint8 (h, w, 4) -> the same, colour premultiplied by alpha and rounded (packed tiles)."""
    x = _rgba(np.asarray(rgba)).astype(np.uint16)
    t = x[..., :3] * x[..., 3:] + 128   # round(c a / 255) = (t + t // 256) // 256: exact, 3x faster
    x[..., :3] = (t + (t >> 8)) >> 8
    return x.astype(np.uint8)


def motion_tiles(objects, m, sides):
    """The loader worker's half of render, no resizing. -> dict(tiles: draw_motion's objects m
    (none if objects is None) premultiplied (a packed tile as stored) in the corners of zero tiles,
    uint8 (K, 4, S, S); sources (K, 2): their h, w; canvas (0, R): render's static side R)."""
    (S, R), K = sides, len(m["picks"])
    tiles, sources = torch.zeros(K, 4, S, S, dtype=torch.uint8), torch.ones(K, 2).long()
    for k, i in enumerate(m["picks"] if objects is not None else []):
        obj = (objects.premultiplied(int(i)) if hasattr(objects, "premultiplied")
               else premultiply(objects[int(i)]))
        tiles.numpy()[k, :, :obj.shape[0], :obj.shape[1]] = obj.transpose(2, 0, 1)
        sources[k] = torch.tensor(obj.shape[:2])
    return dict(tiles=tiles, sources=sources, canvas=torch.empty(0, R))


def tile_sides(objects, size_range, height, width):
    """motion_tiles' (S, R): the bank's largest object (max_side), the largest side drawn."""
    bank = getattr(objects, "max_side", 0) or max(max(np.shape(o)[:2]) for o in objects or [[0]])
    return bank, object_side(size_range, height, width)[1]


def render(frames, tiles, sources, canvas, centres, angles, scales, sizes):
    """Sec. 3.3's paste for a batch of clips on any device: the training step's V' from the
    loader's draws (draw_motion, motion_tiles), overlay's pixels (within 2 / 255: the tiles'
    8-bit premultiplication, float rounding).

    frames: uint8 (B, C, T, H, W); tiles, sources, canvas: motion_tiles' (B, ...); centres, angles,
    scales, sizes (P, Q): draw_motion's (B, K, ...). -> uint8 (B, C, T, H, W). Each premultiplied
    tile resized to P x Q as _resize_premultiplied resizes, then every pixel of
    every frame samples every tile (all-zero tiles paste nothing): static shapes, no
    host sync, one graph under torch.compile."""
    B, C, T, H, W = frames.shape
    S, R, x = tiles.shape[-1], canvas.shape[-1], tiles.float()
    wy, wx = (aa_weights(sources[..., d], sizes[..., d], R, S)[:, :, None] for d in (0, 1))
    resize = lambda v: wy @ v @ wx.transpose(-1, -2)   # noqa: E731 -- (..., S, S) -> (..., R, R)
    tiles, S = (resize(x) / 255).clamp(0, 1), R   # premultiplied (B, K, 4, R, R)
    P, Q = sizes[..., 0:1].double(), sizes[..., 1:2].double()   # (B, K, 1)
    cx, cy = snap_centres(centres.double(), (P, Q))   # (B, K, T)
    rad = torch.deg2rad(angles.double())
    c, s = torch.cos(rad) / scales, torch.sin(rad) / scales
    # Frame pixel (x, y) -> object pixel (c dx - s dy + (Q - 1) / 2, s dx + c dy + (P - 1) / 2),
    # dx = x - cx, dy = y - cy (_boxes' inverse transform), in grid_sample's units of the S x S
    # tile: u = (2 ox + 1) / S - 1, an affine function of (x, y).
    coef = torch.stack([2 * c / S, -2 * s / S, (Q - 2 * (c * cx - s * cy)) / S - 1,
                        2 * s / S, 2 * c / S, (P - 2 * (s * cx + c * cy)) / S - 1], -1).float()
    x = torch.arange(W, device=frames.device, dtype=torch.float32)
    y = torch.arange(H, device=frames.device, dtype=torch.float32)[:, None]
    out = frames.float()
    for k in range(tiles.shape[1]):   # later objects over earlier ones
        a = coef[:, k, :, :, None, None]   # (B, T, 6, 1, 1)
        grid = torch.stack([a[:, :, 0] * x + a[:, :, 1] * y + a[:, :, 2],
                            a[:, :, 3] * x + a[:, :, 4] * y + a[:, :, 5]], -1)   # (B, T, H, W, 2)
        sample = F.grid_sample(tiles[:, k], grid.view(B, T * H, W, 2), mode="bilinear",
                               padding_mode="zeros", align_corners=False).view(B, 4, T, H, W)
        alpha = sample[:, 3:]
        a8 = torch.where(_kept(alpha), (alpha * 255).round(), 0) / 255   # _paste's a
        blend = out * (1 - a8) + sample[:, :3] * (a8 * 255 / alpha.clamp_min(1e-12))
        out = blend.round().clamp(0, 255)   # uint8 after each object, as _paste
    return out.to(torch.uint8)


class ObjectBank:
    """A folder of RGBA cut-out PNGs, searched recursively and sorted, loaded lazily.

    The paper's bank (PIN synthetic objects: Stable Diffusion + X-Paste, 60 per LVIS category) is
    laid out <category>/<n>.png, 60,687 files. Each item is cropped to its alpha bounding box (so
    the P x Q size applies to the object, not to transparent margins) and capped to max_side pixels.
    A file instead of a folder is a packed bank (data.PackedBank): the same items, read once."""

    def __new__(cls, root, max_side=256, list_file=None):
        if Path(root).is_file():   # `python -m tools.prepare objects DIR OUT` wrote it
            from data import PackedBank
            return PackedBank(root, list_file)
        return super().__new__(cls)

    def __init__(self, root, max_side=256, list_file=None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"object bank folder {self.root} does not exist")
        # list_file: exactly the listed subset, e.g. the paper's object_instances.txt
        self.files = _listed_files(self.root, list_file) if list_file else sorted(
            p for p in self.root.rglob("*") if p.suffix.lower() == ".png" and p.is_file())
        if not self.files:
            raise ValueError(f"object bank folder {self.root} holds no .png files")
        self.max_side = max_side
        self.check()

    def check(self):
        """At least one usable object, found when the bank is opened (the first good file ends the
        search): a bank of RGB PNGs stops here, before the first step, not 20 bad draws into it.
        Single bad objects stay the loader's to skip and name."""
        first = None
        for i in range(len(self.files)):
            try:
                self[i]
                return
            except (OSError, ValueError) as e:
                first = first or e
        raise ValueError(f"object bank {self.root}: none of its {len(self.files)} .png files is a "
                         f"usable RGBA cut-out (first: {first})")

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path = self.files[i]
        with Image.open(path) as im:
            # (ref) silently reads the blue channel of an RGB file as alpha; refuse instead.
            if im.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in im.info:
                raise ValueError(f"{path} has no alpha channel; object PNGs must be RGBA cut-outs")
            im = im.convert("RGBA")
        box = im.getchannel("A").getbbox()
        if box is None:
            raise ValueError(f"{path} is fully transparent; object PNGs must be RGBA cut-outs")
        im = im.crop(box)
        if self.max_side and max(im.size) > self.max_side:
            im.thumbnail((self.max_side, self.max_side), Image.BILINEAR)  # keeps the aspect ratio
        return np.array(im, dtype=np.uint8)


def _listed_files(root, list_file):
    """Paths of a list file (one PNG path relative to root per line; # comments, blank lines
    skipped). A listed file that is not there is an error naming the list's line."""
    files = []
    with open(list_file, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            name = line.strip()
            if not name or name.startswith("#"):
                continue
            path = root / name
            if not path.is_file():
                raise ValueError(f"{list_file}:{n}: {name} is not a file under {root}")
            files.append(path)
    return files


def _texture(rng, size):
    """A random (size, size, 3) float texture: a two-colour gradient, stripes or checker; grain."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    phi = rng.uniform(0, 2 * np.pi)
    u = xx * np.cos(phi) + yy * np.sin(phi)
    kind = rng.integers(3)
    if kind == 0:
        w = (u - u.min()) / np.ptp(u)
    elif kind == 1:
        w = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 8) * u + rng.uniform(0, 2 * np.pi))
    else:
        n = rng.integers(3, 9)
        w = ((xx * n).astype(int) + (yy * n).astype(int)) % 2
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    return c0 + w[..., None] * (c1 - c0) + rng.normal(0, 6, size=(size, size, 3))


def synthetic_objects(num, rng, size=128):
    """num textured cut-out shapes, RGBA uint8 (h, w, 4), at most size x size.

    Ellipses, polygons/stars and rounded rectangles filled with gradients, stripes or checkers,
    with hard (anti-aliased) or soft alpha edges. A stand-in so that everything runs without a bank
    on disk; it is not the paper's bank of segmented real-looking objects."""
    objects = []
    for _ in range(num):
        ss = 4  # draw the shape 4x larger and box-downsample: anti-aliased edges
        S = size * ss
        shape = Image.new("L", (S, S), 0)
        draw = ImageDraw.Draw(shape)
        kind = rng.integers(3)
        # a random box covering 55-95% of the canvas on each side: varied aspect ratios
        bw, bh = rng.uniform(0.55, 0.95, size=2) * S
        bx, by = rng.uniform(0, 1, size=2) * [S - bw, S - bh]
        if kind == 0:
            draw.ellipse([bx, by, bx + bw, by + bh], fill=255)
        elif kind == 1:
            n = int(rng.integers(3, 9))
            star = rng.random() < 0.5
            ang = (np.linspace(0, 2 * np.pi, 2 * n if star else n, endpoint=False)
                   + rng.uniform(0, 2 * np.pi))
            r = np.ones(len(ang))
            if star:
                r[1::2] = rng.uniform(0.35, 0.65)  # inner vertices of a star
            px = bx + bw / 2 * (1 + r * np.cos(ang))
            py = by + bh / 2 * (1 + r * np.sin(ang))
            draw.polygon(list(zip(px.tolist(), py.tolist())), fill=255)
        else:
            draw.rounded_rectangle([bx, by, bx + bw, by + bh],
                                   radius=rng.uniform(0.05, 0.4) * min(bw, bh), fill=255)
        if rng.random() < 0.5:
            shape = shape.filter(ImageFilter.GaussianBlur(rng.uniform(1, 4) * ss))  # soft edge
        alpha = np.asarray(shape.resize((size, size), Image.BOX))
        rgb = np.clip(_texture(rng, size), 0, 255)
        rgba = np.dstack([rgb, alpha]).round().astype(np.uint8)
        ys, xs = np.nonzero(rgba[..., 3])
        objects.append(np.ascontiguousarray(rgba[ys.min():ys.max() + 1, xs.min():xs.max() + 1]))
    return objects


def class_path(cls, num_frames, size, g, count=False):
    """The scripted motion of a motion class (evaluation.MotionClassDataset, MOTION_CLASSES): travel
    left / right / up / down, rotate clockwise / ccw, grow / shrink; count: cls = k repetitions,
    out and back k times. Distances are fractions of the frame `size`. g: numpy generator.
    -> centres (T, 2) px, angles (T,) degrees ccw, scales (T,)."""
    T, S = num_frames, size
    t = np.arange(T) / (T - 1)                                       # 0 .. 1 over the clip
    x0, y0 = g.uniform(0.3, 0.7, 2) * S
    a0, s0 = g.uniform(0, 360), g.uniform(0.6, 1.0)
    dist, turn, grow = g.uniform(0.4, 0.5) * S, g.uniform(180, 300), g.uniform(2.0, 2.6)
    cx, cy, angle, scale = np.full(T, x0), np.full(T, y0), np.full(T, a0), np.full(T, s0)
    if count:   # cls = k repetitions: out and back k times, starting at (x0, y0)
        d = g.uniform(0, 2 * np.pi)
        amp = 0.5 * dist * (1 - np.cos(2 * np.pi * cls * np.arange(T) / T))
        cx, cy = x0 + amp * np.cos(d), y0 + amp * np.sin(d)
    elif cls < 4:              # travel: left, right, up, down
        dx, dy = [(-1, 0), (1, 0), (0, -1), (0, 1)][cls]
        cx, cy = x0 + dx * dist * t, y0 + dy * dist * t
    elif cls < 6:              # rotate clockwise (angle decreasing: paste turns ccw) / ccw
        angle = a0 - (1 if cls == 4 else -1) * turn * t
    else:                      # grow / shrink
        scale = s0 * grow ** (t if cls == 6 else -t)
    return np.stack([cx, cy], 1), angle, scale


def background(kind, num_frames, height, width, rng, image=None):
    """A static background clip uint8 (T, H, W, 3) (Sec. 5, Table 7, Appendix D).

    "noise": one uniform RGB noise image repeated T times; "black": zeros; "image": the given uint8
    (H, W, 3) still image repeated T times. With motion pasted on top, noise or black alone teaches
    motion with no natural video at all (Table 12)."""
    if kind == "noise":
        still = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    elif kind == "black":
        still = np.zeros((height, width, 3), dtype=np.uint8)
    elif kind == "image":
        if image is None or image.shape != (height, width, 3) or image.dtype != np.uint8:
            got = None if image is None else (image.dtype, image.shape)
            raise ValueError(f"background 'image' needs a uint8 ({height}, {width}, 3) image, "
                             f"got {got}")
        still = image
    else:
        raise ValueError(f"unknown background kind {kind!r}; use 'noise', 'black' or 'image'")
    return np.repeat(still[None], num_frames, axis=0)


IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_items(folder):
    """[(path, 0)] for the still images under a folder (--dataset images), sorted."""
    paths = sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not paths:
        raise ValueError(f"--image-dir {folder} holds no images ({', '.join(IMAGE_EXTS)})")
    return [(p, 0) for p in paths]


def load_image(path):
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def still_image(height, width, rng):
    """A procedural landscape-like still (sky, sun, hills), uint8 (H, W, 3), for demos with no
    data."""
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    sky = np.array([70, 130, 200]) + yy[..., None] / yy.max() * np.array([110, 80, 40])
    img = sky.copy()
    sx, sy = rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
    img[(xx - sx) ** 2 + (yy - sy) ** 2 < 0.006] = [250, 230, 150]
    # Three ridges, far to near, each a sum of random sines, darker and greener nearer the viewer.
    for level, colour in zip([0.45, 0.6, 0.75], [[120, 140, 160], [70, 120, 70], [40, 85, 40]]):
        ridge = level * height / max(height, width) + sum(
            rng.uniform(0.01, 0.04)
            * np.sin(2 * np.pi * rng.uniform(0.5, 4) * xx[0] + rng.uniform(0, 7))
            for _ in range(3))
        below = yy > ridge[None, :]
        img[below] = np.array(colour) * (0.8 + 0.4 * yy[below, None])
    return np.clip(img, 0, 255).astype(np.uint8)
