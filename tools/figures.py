"""Pictures for the README, drawn from a run's own outputs (PIL only, no plotting library).

    python -m tools.figures loss out/tiny/log.jsonl --out docs/demo_loss.png
        the demo's loss against its two trivial floors (predict zero; predict the visible
        tokens' mean)
    python -m tools.figures figure4 out/tiny/checkpoint-latest.pth --out docs/figure4.png
        the paper's Figure 4: cosine similarity between the per-frame features of a clip (mean
        over each time slice's tokens), for the checkpoint against a randomly initialised
        encoder of the same shape

    python -m tools.figures figure3 --out docs/figure3_motion.png
        the paper's Figure 3: synthetic motion on noise, black and an image background

The mask picture is drawn by `python masking.py`.
"""
import argparse
import json
import os

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

COLOURS = {"loss": (31, 119, 180), "floor_zero": (214, 39, 40), "floor_mean": (255, 127, 14)}


def line_plot(series, title, xlabel, size=(640, 360), margin=(60, 30, 20, 45)):
    """series: {name: (xs, ys)} -> PIL image with axes, ticks and a legend."""
    W, H = size
    left, top, right, bottom = margin
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    xs_all = np.concatenate([np.asarray(x, float) for x, _ in series.values()])
    ys_all = np.concatenate([np.asarray(y, float) for _, y in series.values()])
    x0, x1 = xs_all.min(), xs_all.max()
    y0, y1 = 0.0, ys_all.max() * 1.05

    def px(x, y):
        return (left + (x - x0) / max(x1 - x0, 1e-9) * (W - left - right),
                H - bottom - (y - y0) / max(y1 - y0, 1e-9) * (H - top - bottom))

    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for y in np.linspace(y0, y1, 5):
        _, py = px(x0, y)
        d.line([left - 4, py, left, py], fill="black")
        d.text((4, py - 6), f"{y:.3f}", fill="black")
    for x in np.linspace(x0, x1, 5):
        qx, _ = px(x, y0)
        d.line([qx, H - bottom, qx, H - bottom + 4], fill="black")
        d.text((qx - 10, H - bottom + 6), f"{x:.0f}", fill="black")
    d.text((W // 2 - 20, H - 16), xlabel, fill="black")
    d.text((left, 8), title, fill="black")
    for i, (name, (xs, ys)) in enumerate(series.items()):
        colour = COLOURS.get(name, (0, 0, 0))
        d.line([px(x, y) for x, y in zip(xs, ys)], fill=colour, width=2)
        d.line([W - right - 150, top + 12 + 14 * i, W - right - 130, top + 12 + 14 * i],
               fill=colour, width=2)
        d.text((W - right - 125, top + 6 + 14 * i), name, fill="black")
    return img


def loss_figure(log_path, out):
    with open(log_path) as f:
        rows = [r for r in map(json.loads, f) if "loss" in r and "floor_zero" in r]
    steps = [r["step"] for r in rows]
    series = {k: (steps, [r[k] for r in rows]) for k in ("loss", "floor_zero", "floor_mean")}
    line_plot(series,
              f"pretraining loss vs trivial floors ({os.path.basename(os.path.dirname(log_path))})",
              "step").save(out)


def frame_similarity(model, video, tubelet):
    """Cosine similarity (t, t) of per-time-slice features, averaged over the clips of `video`."""
    with torch.no_grad():
        tokens = model.forward_tokens(video)                                   # (B, N, D)
    B, N, D = tokens.shape
    t = video.shape[2] // tubelet
    f = torch.nn.functional.normalize(tokens.view(B, t, N // t, D).mean(2), dim=-1)   # (B, t, D)
    return (f @ f.transpose(1, 2)).mean(0).numpy()


def heatmap(sim, title, lo, cell=36):
    """t x t cells coloured from blue (lo) to red (1), each with its value."""
    t = sim.shape[0]
    img = Image.new("RGB", (t * cell + 20, t * cell + 40), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 6), title, fill="black")
    for i in range(t):
        for j in range(t):
            v = float(np.clip((sim[i, j] - lo) / max(1 - lo, 1e-6), 0, 1))
            colour = (int(255 * v), int(80 + 100 * (1 - abs(v - 0.5) * 2)), int(255 * (1 - v)))
            box = [10 + j * cell, 30 + i * cell, 10 + (j + 1) * cell - 1, 30 + (i + 1) * cell - 1]
            d.rectangle(box, fill=colour)
            d.text((box[0] + 4, box[1] + cell // 2 - 6), f"{sim[i, j]:.2f}", fill="white")
    return img


def figure4(checkpoint, out, num_clips=16, seed=0):
    import data
    from evaluation import MotionClassDataset, eval_collate
    from model import MODEL_SIZES, VideoClassifier, load_encoder
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    a = ckpt.get("args", {})
    kw = dict(img_size=a.get("img_size", 64), patch_size=a.get("patch_size", 16),
              num_frames=a.get("num_frames", 16),
              tubelet_size=a.get("tubelet", 2), num_classes=1,
              **MODEL_SIZES[a.get("model", "tiny")])
    ds = MotionClassDataset("val", num_clips, mode="train", num_frames=kw["num_frames"],
                            img_size=kw["img_size"], seed=seed)
    video = data.normalize(eval_collate([ds[i] for i in range(num_clips)])["video"])
    torch.manual_seed(seed)
    random_model = VideoClassifier(**kw).eval()
    trained = VideoClassifier(**kw).eval()
    load_encoder(trained, ckpt)
    sims = {"pretrained: " + os.path.basename(checkpoint):
            frame_similarity(trained, video, kw["tubelet_size"]),
            "random init": frame_similarity(random_model, video, kw["tubelet_size"])}
    # the numbers the picture shows
    for (title, s), m in zip(sims.items(), (trained, random_model)):
        with torch.no_grad():
            rms = m.forward_tokens(video).pow(2).mean().sqrt().item()
        off = s[~np.eye(len(s), dtype=bool)]
        print(f"{title}: off-diagonal cosine mean {off.mean():.3f} "
              f"(min {off.min():.3f}, max {off.max():.3f}), "
              f"token RMS {rms:.2f}")
    lo = min(s.min() for s in sims.values())   # one colour scale for both panels
    panels = [heatmap(s, title, lo) for title, s in sims.items()]
    W = max(sum(p.width for p in panels) + 10, 560)   # wide enough for the caption
    img = Image.new("RGB", (W, max(p.height for p in panels) + 20), "white")
    x = 0
    for p in panels:
        img.paste(p, (x, 0))
        x += p.width + 10
    ImageDraw.Draw(img).text((10, img.height - 16),
                             "cosine similarity of per-frame features (time slice x time slice), "
                             f"mean over {num_clips} motion clips", fill="black")
    img.save(out)


def figure3(out_path, seed=0, size=112, num_frames=16, columns=8):
    """The paper's Figure 3: rows = motion-infused clips on noise, black and an image (motion.py,
    objects outlined, their paths drawn); columns = frames. Frame side `size`: objects and paths
    scale with it."""
    import masking
    import motion
    rng = np.random.default_rng(seed)
    objects = motion.synthetic_objects(8, rng, size=128)
    image = motion.still_image(size, size, rng)
    shown = np.round(np.linspace(0, num_frames - 1, columns)).astype(int)
    label_w, pad, head = 48, 2, 14
    fig = Image.new("RGB", (label_w + columns * (size + pad), head + 3 * (size + pad)),
                    (255, 255, 255))
    draw = ImageDraw.Draw(fig)
    for col, t in enumerate(shown):
        draw.text((label_w + col * (size + pad) + size // 2 - 12, 1), f"t={t}", fill=(0, 0, 0))
    for row, kind in enumerate(["noise", "black", "image"]):
        clip = motion.background(kind, num_frames, size, size, rng, image=image)
        clip, footprints = motion.overlay(clip, objects, rng)
        clip = masking.draw_outlines(clip, footprints)
        # Each object's path: footprint centroids over all frames, drawn on every shown frame.
        paths = [[ndimage.center_of_mass(m) if m.any() else None for m in obj]
                 for obj in footprints]
        y = head + row * (size + pad)
        draw.text((4, y + size // 2 - 5), kind, fill=(0, 0, 0))
        for col, t in enumerate(shown):
            x = label_w + col * (size + pad)
            fig.paste(Image.fromarray(clip[t]), (x, y))
            for k, path in enumerate(paths):
                colour = masking.COLOURS[k % len(masking.COLOURS)]
                draw.line([(x + px, y + py) for py, px in (p for p in path if p is not None)],
                          fill=colour)
                if path[t] is not None:
                    cy, cx = path[t]
                    draw.ellipse([x + cx - 2, y + cy - 2, x + cx + 2, y + cy + 2], fill=colour)
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    # Noise does not compress; a 256-colour palette keeps the PNG small and looks the same.
    fig = fig.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    fig.save(out_path, optimize=True)
    print(f"wrote {out_path}: frames {shown.tolist()} of a {num_frames}-frame clip "
          f"at {size}x{size}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["loss", "figure4", "figure3"])
    p.add_argument("path", nargs="?", help="log.jsonl (loss) or a checkpoint (figure4)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0, help="figure3: same seed, same figure")
    p.add_argument("--size", type=int, default=112, help="figure3: frame side")
    p.add_argument("--frames", type=int, default=16, help="figure3: clip length T (Sec. 4.1: 16)")
    p.add_argument("--columns", type=int, default=8, help="figure3: frames shown per row")
    args = p.parse_args()
    if args.what == "figure3":
        figure3(args.out, args.seed, args.size, args.frames, args.columns)
    elif args.path is None:
        p.error(f"{args.what} needs a path")
    else:
        (loss_figure if args.what == "loss" else figure4)(args.path, args.out)
        print(f"wrote {args.out}")
