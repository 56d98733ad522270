"""Token masking for SMILE: tube masking and trajectory masking (paper Sec. 3.2, 4.3, Table 4e/4g).

Masks are boolean arrays over the token grid (t, h, w), one token per 2x16x16 tubelet.
Convention (all of smile): True = masked (hidden from the encoder, predicted by the decoder).

    num_masked       how many tokens every mask hides: int(ratio * h * w) * t (1248 of 1568 at
                     224, 0.8)
    tube_mask        VideoMAE tube masking: one random spatial mask repeated over all t slices
    object_tokens    which tokens the pasted objects cover (from motion.overlay's pixel footprints)
    trajectory_mask  SMILE: mask a fraction `ratio` of the object tokens first, then fill the rest
                     of the budget with tubes over the other tokens (Table 4g: +~1% over tube
                     alone)

Every mask hides exactly num_masked(...) tokens, so each clip keeps the same number of visible
tokens and a batch stays dense. Pure numpy functions of an explicit numpy.random.Generator.

    python masking.py --out docs/masks.png    # a motion-infused clip, its tube mask, its
                                              # trajectory mask
"""
import argparse
from pathlib import Path

import numpy as np


def num_masked(t, h, w, ratio):
    """Tokens masked per clip (SPEC 3): whole tubes, the same count for tube and trajectory
    masks."""
    return int(ratio * h * w) * t


def tube_mask(t, h, w, ratio, rng):
    """bool (t, h, w): int(ratio * h * w) random patches, masked in every time slice (VideoMAE).

    Hiding the same patch at all times stops the student copying it from a neighbouring frame."""
    spatial = np.zeros(h * w, dtype=bool)
    spatial[rng.permutation(h * w)[: int(ratio * h * w)]] = True
    return np.repeat(spatial.reshape(1, h, w), t, axis=0)


def object_tokens(footprints, tubelet=2, patch=16):
    """bool (t, h, w): tokens that any object covers, from pixel footprints bool (K, T, H, W).

    Token (i, y, x) is an object token if some object covers some pixel of patch (y, x) in any frame
    of its tubelet, i.e. frames i*tubelet .. i*tubelet + tubelet - 1 (Sec. 3.2: frame 2i or 2i+1).
    """
    K, T, H, W = footprints.shape
    if T % tubelet or H % patch or W % patch:
        raise ValueError(f"footprints {T}x{H}x{W} do not split into "
                         f"{tubelet}x{patch}x{patch} tubelets")
    covered = footprints.any(axis=0)  # (T, H, W), union over objects (all False when K = 0)
    return covered.reshape(T // tubelet, tubelet, H // patch, patch, W // patch,
                           patch).any(axis=(1, 3, 5))


def motion_tokens(alphas, sizes, centres, angles, scales, shape, tubelet=2, patch=16, block=4):
    """object_tokens of K objects pasted as motion.paste pastes them, from their alpha alone and
    without their pixel footprints: the same tokens for a fraction of the work (issue 26). alphas:
    K float tensors (P, Q), each resized object's alpha (motion._resize_premultiplied(...)[3]);
    sizes (K, 2) (P, Q); centres (K, T, 2), angles, scales (K, T) as motion._boxes; shape
    (T, H, W). -> bool (t, h, w), the union over the objects.

    A pixel is in a footprint iff the alpha grid_sample gives it rounds to >= 1 / 255
    (motion._kept). Exact, cell by cell of each object's box in each frame (motion.box_geometry;
    all objects and frames at once), patches first, then blocks of block x block pixels:
    - a cell with no texel of alpha > 0.499 / 255 within bilinear reach (1 texel, + 0.01 for
      float32 rounding) of its image in the object keeps no pixel: a sample is at most the largest
      of its texels (summed-area table of those texels; fringes fainter than that are common);
    - a patch's centre pixel kept covers its token;
    - in the patches of tokens still uncovered, each block probed at its centre, then in those of
      tokens uncovered still, every pixel of every block within reach.
    Each pixel sampled is sampled as _boxes and _paste sample it (the same float32 operations).
    """
    import torch
    import torch.nn.functional as F

    import motion
    (T, H, W), K = shape, len(alphas)
    tokens = np.zeros((T // tubelet, H // patch, W // patch), dtype=bool)
    if not K:
        return tokens
    b = block if patch % block == 0 else 1
    P, Q = (np.repeat(np.asarray(sizes, np.int64).reshape(K, 2)[:, d], T) for d in (0, 1))
    # per box f = k * T + t (object k in frame t): its geometry, and where its object's summed-area
    # table of live texels (alpha > 0.499 / 255; (P + 1) x (Q + 1), flat) starts in sat
    geo = [motion.box_geometry(shape, (P[k * T], Q[k * T]), centres[k], angles[k], scales[k])
           for k in range(K)]
    cos, sin, cx, cy, x0, x1, y0, y1 = (np.concatenate(v) for v in zip(*geo))
    scale = np.concatenate([np.asarray(v, np.float64) for v in scales])
    c, s, two_q, two_p = cos / scale, sin / scale, np.float32(2 / Q), np.float32(2 / P)
    x0, x1, y0, y1 = (v.astype(np.int64) for v in (x0, x1, y0, y1))
    ends = np.cumsum([0] + [(a.shape[0] + 1) * (a.shape[1] + 1) for a in alphas])
    sat, base = np.zeros(ends[-1], np.int64), np.repeat(ends[:-1], T)
    for a, e, e1, size in zip(alphas, ends, ends[1:], np.asarray(sizes).reshape(K, 2).tolist()):
        assert list(a.shape) == size, f"an alpha of {tuple(a.shape)} for an object of {size}"
        live = a.numpy() * 255 > 0.499   # a texel under 0.5 / 255 keeps no pixel: a bilinear sample
        np.cumsum(live.cumsum(0), 1, out=sat[e:e1].reshape(len(a) + 1, -1)[1:, 1:])   # is <= its max

    def pixels(f, cy_, cx_, n):   # cell (cy_, cx_) of n x n pixels, clipped to box f
        return (np.maximum(cy_ * n, y0[f]), np.minimum(cy_ * n + n - 1, y1[f]),
                np.maximum(cx_ * n, x0[f]), np.minimum(cx_ * n + n - 1, x1[f]))

    def within_reach(f, ya, yb, xa, xb):   # a live texel within reach of pixels [ya..yb, xa..xb]
        mx, my, hx, hy = (xa + xb) / 2 - cx[f], (ya + yb) / 2 - cy[f], (xb - xa) / 2, (yb - ya) / 2
        cf, sf, q1, p1 = c[f], s[f], Q[f] - 1, P[f] - 1
        ox, rx = cf * mx - sf * my + q1 / 2, abs(cf) * hx + abs(sf) * hy + 0.01   # its image in
        oy, ry = sf * mx + cf * my + p1 / 2, abs(sf) * hx + abs(cf) * hy + 0.01   # the object
        jx0, jx1 = np.maximum(np.floor(ox - rx), 0), np.minimum(np.floor(ox + rx) + 1, q1)
        jy0, jy1 = np.maximum(np.floor(oy - ry), 0), np.minimum(np.floor(oy + ry) + 1, p1)
        ok = (ya <= yb) & (xa <= xb) & (jx0 <= jx1) & (jy0 <= jy1)   # (then indices in the table)
        jx0, jx1 = np.minimum(jx0, q1).astype(np.int64), np.maximum(jx1, -1).astype(np.int64)
        row0 = base[f] + (q1 + 2) * np.minimum(jy0, p1).astype(np.int64)
        row1 = base[f] + (q1 + 2) * (np.maximum(jy1, -1) + 1).astype(np.int64)
        return ok & (sat[row1 + jx1 + 1] - sat[row0 + jx1 + 1] - sat[row1 + jx0] + sat[row0 + jx0] > 0)

    def kept(f, y, x):   # _boxes' float32 grid at pixels y, x (N, n) of boxes f (N,), _paste's test
        dx, dy = (x - cx[f, None]).astype(np.float32), (y - cy[f, None]).astype(np.float32)
        cf, sf = c[f, None].astype(np.float32), s[f, None].astype(np.float32)
        grid = np.stack([(cf * dx - sf * dy) * two_q[f, None], (sf * dx + cf * dy) * two_p[f, None]], -1)
        out, at = np.zeros(grid.shape[:2], bool), np.searchsorted(f, np.arange(K + 1) * T)
        for k in np.flatnonzero(at[1:] > at[:-1]):   # f is sorted: object k's boxes, at once
            sample = F.grid_sample(alphas[k][None, None], torch.from_numpy(grid[at[k]:at[k + 1]])[None],
                                   mode="bilinear", padding_mode="zeros", align_corners=False)
            out[at[k]:at[k + 1]] = motion._kept(sample[0, 0].numpy())
        return out

    def cover(f, py, px, hit):   # patches (py, px) of boxes f cover their tokens where hit
        tokens[f[hit] % T // tubelet, py[hit], px[hit]] = True
        return ~tokens[f % T // tubelet, py, px]   # the patches whose tokens are still open

    # patches within reach, each probed at its centre
    f, py, px = _cells(y0 // patch, y1 // patch, x0 // patch, x1 // patch)
    ya, yb, xa, xb = pixels(f, py, px, patch)
    live = within_reach(f, ya, yb, xa, xb)
    f, py, px, ya, yb, xa, xb = (v[live] for v in (f, py, px, ya, yb, xa, xb))
    open_ = cover(f, py, px, kept(f, (ya + yb)[:, None] // 2, (xa + xb)[:, None] // 2)[:, 0])
    # the patches of uncovered tokens: their blocks (N, n * n), each probed at its centre
    f, py, px, n = f[open_], py[open_], px[open_], patch // b
    by, bx = py[:, None] * n + np.arange(n * n) // n, px[:, None] * n + np.arange(n * n) % n
    ya, yb, xa, xb = pixels(f[:, None], by, bx, b)
    live = (ya <= yb) & (xa <= xb)
    open_ = cover(f, py, px, (kept(f, (ya + yb) // 2, (xa + xb) // 2) & live).any(1))
    # the blocks of tokens still uncovered within reach: every pixel
    rows, cols = np.nonzero(open_[:, None] & live)
    f, py, px, (ya, yb, xa, xb) = f[rows], py[rows], px[rows], (v[rows, cols] for v in (ya, yb, xa, xb))
    live = within_reach(f, ya, yb, xa, xb)
    f, py, px, ya, yb, xa, xb = (v[live] for v in (f, py, px, ya, yb, xa, xb))
    y, x = ya[:, None] + np.arange(b * b) // b, xa[:, None] + np.arange(b * b) % b
    cover(f, py, px, (kept(f, y, x) & (y <= yb[:, None]) & (x <= xb[:, None])).any(1))
    return tokens


def drawn_tokens(m, shape, tubelet=2, patch=16):
    """object_tokens of all of draw_motion's objects m, from motion_tiles' tiles and sources (in m
    too): each alpha channel resized to its P x Q as motion._resize_premultiplied resizes it (the
    same floats), then motion_tokens of them all. -> bool (t, h, w)."""
    import torch.nn.functional as F
    alphas = [F.interpolate(m["tiles"][k, 3:, :h, :w][None].float() / 255, size=(int(P), int(Q)),
                            mode="bilinear", antialias=True, align_corners=False)[0, 0].clamp_(0, 1)
              for k, ((P, Q), (h, w)) in enumerate(zip(m["sizes"], m["sources"].tolist()))]
    return motion_tokens(alphas, m["sizes"], m["centres"], m["angles"], m["scales"], shape,
                         tubelet, patch)


def _cells(ylo, yhi, xlo, xhi):
    """Every integer cell of the rectangles [ylo_i, yhi_i] x [xlo_i, xhi_i] (int arrays; empty when
    lo > hi) -> (i, y, x), the rectangle each belongs to and its coordinates."""
    ny, nx = np.maximum(yhi - ylo + 1, 0), np.maximum(xhi - xlo + 1, 0)
    n = ny * nx
    i = np.repeat(np.arange(len(n)), n)
    j = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    return i, ylo[i] + j // nx[i], xlo[i] + j % nx[i]


def clip_mask(object_tokens, shape, ratio, rng, kind="trajectory"):
    """A pretraining clip's mask, bool (t, h, w) = shape: trajectory_mask of its object tokens
    (SPEC 3), or tube_mask (kind "tube", or a clip without objects: object_tokens None)."""
    if object_tokens is not None and kind == "trajectory":
        return trajectory_mask(object_tokens, ratio, rng)
    return tube_mask(*shape, ratio, rng)


def trajectory_mask(object_tokens, ratio, rng):
    """bool (t, h, w) SMILE trajectory mask hiding exactly num_masked(t, h, w, ratio) tokens
    (Sec. 3.2).

    1. Mask round(ratio * O) of the O object tokens at random (at most the whole budget), so the
       student must predict where the moving objects went.
    2. Fill the rest of the budget with tube masking over the other tokens: random spatial positions
       in turn, each masking all its non-object tokens over time; the last position may be masked in
       part (a random subset) so that the count is exact.
    3. Only if the non-object tokens run out, mask further random object tokens.
    With no objects this is tube_mask(..., rng) exactly (same seed, same mask).
    """
    t, h, w = object_tokens.shape
    budget = num_masked(t, h, w, ratio)
    mask = np.zeros(t * h * w, dtype=bool)
    is_obj = object_tokens.reshape(-1).astype(bool)
    obj_idx = np.flatnonzero(is_obj)
    # 1. A fraction `ratio` of the object tokens ((ref) masks ~90% whatever the ratio: a bug).
    n_obj = min(round(ratio * len(obj_idx)), budget)
    if n_obj:
        mask[rng.choice(obj_idx, size=n_obj, replace=False)] = True
    left = budget - n_obj
    # 2. Tubes over the non-object tokens: whole positions while the budget allows.
    free = ~is_obj.reshape(t, h * w)  # (t, h*w) non-object tokens
    order = rng.permutation(h * w)
    filled = np.cumsum(free[:, order].sum(axis=0))  # tokens masked after the first k+1 positions
    n_full = np.searchsorted(filled, left, side="right")  # positions that fit entirely
    cols = np.zeros((t, h * w), dtype=bool)
    cols[:, order[:n_full]] = True
    mask |= (cols & free).reshape(-1)
    left -= filled[n_full - 1] if n_full else 0
    if left and n_full < h * w:
        # The next position holds more free tokens than the budget has left: a random subset of
        # them.
        rows = np.flatnonzero(free[:, order[n_full]])
        mask[rng.choice(rows, size=left, replace=False) * h * w + order[n_full]] = True
        left = 0
    # 3. Out of non-object tokens (objects nearly everywhere): more object tokens.
    if left:
        mask[rng.choice(np.flatnonzero(~mask), size=left, replace=False)] = True
    return mask.reshape(t, h, w)


COLOURS = [(255, 60, 60), (60, 220, 255), (255, 220, 0), (120, 255, 80)]  # object k's outline


def draw_outlines(frames, footprints, width=1):
    """Copy of frames uint8 (T, H, W, 3), each object's footprint (K, T, H, W) outlined in its
    colour, `width` >= 1 px inside each edge (eroded in the image plane only, never across frames)."""
    from scipy import ndimage
    frames, cross = frames.copy(), np.zeros((1, 1, 3, 3), dtype=bool)
    cross[..., 1, :] = cross[..., :, 1] = True
    edges = footprints & ~ndimage.binary_erosion(footprints, structure=cross, iterations=width)
    for k, edge in enumerate(edges):
        frames[edge] = COLOURS[k % len(COLOURS)]
    return frames


def _figure(out_path, seed, size, ratio, tile):
    """Rows: a motion-infused clip, its tube mask, its trajectory mask; columns: frames 0, 2, 4,
    ..."""
    from PIL import Image, ImageDraw

    import motion  # only the figure needs torch and the object code

    rng = np.random.default_rng(seed)
    T, patch, tubelet = 16, 16, 2
    objects = motion.synthetic_objects(8, rng)
    clip = motion.background("image", T, size, size, rng, image=motion.still_image(size, size, rng))
    clip, footprints = motion.overlay(clip, objects, rng)
    objs = object_tokens(footprints, tubelet=tubelet, patch=patch)
    t, h, w = objs.shape
    rows = {"clip": None, "tube": tube_mask(t, h, w, ratio, rng),
            "trajectory": trajectory_mask(objs, ratio, rng)}
    label_w, pad, head = 64, 2, 14
    fig = Image.new("RGB", (label_w + t * (tile + pad), head + len(rows) * (tile + pad)),
                    (255, 255, 255))
    draw = ImageDraw.Draw(fig)
    # visible when shrunk
    outlined = draw_outlines(clip, footprints, width=max(1, 2 * size // tile))
    for r, (name, mask) in enumerate(rows.items()):
        y = head + r * (tile + pad)
        text = name  # then: masked tokens, and masked object tokens
        if mask is not None:
            text += f"\n{mask.sum()}/{mask.size}\nobj {(mask & objs).sum()}/{objs.sum()}"
        draw.multiline_text((3, y + 4), text, fill=(0, 0, 0))
        for i in range(t):
            frame = outlined[i * tubelet].copy()
            if mask is not None:
                # Masked patches greyed out: what the encoder does not see.
                hidden = np.kron(mask[i], np.ones((patch, patch), dtype=bool))
                frame[hidden] = (frame[hidden] * 0.25 + 96).astype(np.uint8)
            x = label_w + i * (tile + pad)
            fig.paste(Image.fromarray(frame).resize((tile, tile), Image.BILINEAR), (x, y))
            if r == 0:
                draw.text((x + tile // 2 - 12, 1), f"t={i * tubelet}", fill=(0, 0, 0))
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fig.save(out_path, optimize=True)
    print(f"wrote {out_path}: {t}x{h}x{w} tokens, {num_masked(t, h, w, ratio)} masked, "
          f"{objs.sum()} object tokens")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="Draw tube vs trajectory masking on a motion-infused clip.")
    parser.add_argument("--out", default="docs/masks.png", help="PNG to write")
    parser.add_argument("--seed", type=int, default=0, help="numpy seed: same seed, same figure")
    parser.add_argument("--size", type=int, default=224,
                        help="frame side, a multiple of 16 (Sec. 4.1: 224)")
    parser.add_argument("--ratio", type=float, default=0.8, help="mask ratio (Table 4e: 0.8 best)")
    parser.add_argument("--tile", type=int, default=112, help="pixels per frame in the figure")
    args = parser.parse_args()
    _figure(args.out, args.seed, args.size, args.ratio, args.tile)
