"""RandAugment on the device (augment.randaugment_batch, issue 26): the worker draws, the step
applies. Each op against timm's PIL op (auto_augment.NAME_TO_OP, the definitions
tests/test_finetune.py pins randaug_frame to) on the same frames and arguments: bit-identical on
the CPU (the tolerance: 0 grey levels; PIL's float32 blends and float64 bicubic / autocontrast are
followed operation by operation). Then whole draws over batches against randaugment_clip, the
dataset path (randaug_sample's draws beside each clip, eval_collate, a loader worker), no host
read of a device tensor, one graph per op."""
from functools import partial

import numpy as np
import pytest
import torch

import augment
import data
import evaluation
import motion
from tools import benchkit

aa = pytest.importorskip("timm.data.auto_augment")


def clips(kind, n, T, H, W, seed=0):
    """uint8 (n, T, H, W, 3): natural-looking stills drifting sideways, noise, or flat colours
    (one value per channel: autocontrast's and equalize's do-nothing cases)."""
    g = np.random.default_rng(seed)
    if kind == "noise":
        return g.integers(0, 256, (n, T, H, W, 3), dtype=np.uint8)
    if kind == "flat":
        return np.broadcast_to(g.integers(0, 256, (n, 1, 1, 1, 3), dtype=np.uint8),
                               (n, T, H, W, 3)).copy()
    return np.stack([np.stack([np.roll(s, 2 * t, 1) for t in range(T)])
                     for s in (motion.still_image(H, W, g) for _ in range(n))])


def device_apply(frames, ops, n=None):
    """randaugment_batch on numpy clips (B, T, H, W, 3), ops[i] = clip i's [(name, args)]."""
    B, T, H, W, _ = frames.shape
    n = n or max(1, max(len(o) for o in ops))
    p = [augment.randaug_params(o, n, H, W) for o in ops]
    video = torch.from_numpy(frames).permute(0, 4, 1, 2, 3).contiguous()
    out = augment.randaugment_batch(video, torch.stack([q["randaug_op"] for q in p]),
                                    torch.stack([q["randaug_arg"] for q in p]))
    return out.permute(0, 2, 3, 4, 1).numpy()


def timm_apply(frames, name, args):
    """timm's op, frame by frame (bicubic, grey fill: randaug_frame's settings); Posterize to 0
    bits (m = 10), which Pillow >= 10 refuses inside timm, is randaug_frame's LUT (black)."""
    from PIL import Image
    kw = dict(fillcolor=augment.RANDAUG_FILL, resample=Image.Resampling.BICUBIC)
    if name == "PosterizeIncreasing" and args == (0,):
        return np.zeros_like(frames)
    return np.stack([np.asarray(aa.NAME_TO_OP[name](Image.fromarray(f), *args, **kw))
                     for f in frames])


@pytest.mark.parametrize("name", augment.RANDAUG_OPS)
def test_each_op_equals_timms_pil_op(name):
    """Magnitudes 0 .. 10 and both signs, on stills, noise and flat frames of an odd size: the
    device op == timm's op on every pixel (the tolerance: none)."""
    cases = [(kind, m, sign) for kind in ("still", "noise", "flat")
             for m, sign in ((9, 1), (9, -1), (7, 1), (10, -1), (0, 1), (3.3, -1))]
    frames = {kind: clips(kind, 1, 3, 21, 30, seed=i) for i, kind in enumerate(("still", "noise",
                                                                                 "flat"))}
    ops, want = [], []
    for kind, m, sign in cases:
        args = augment.randaug_level_args(name, m, sign)
        ops.append([(name, args)])
        want.append(timm_apply(frames[kind][0], name, args))
    got = device_apply(np.concatenate([frames[kind] for kind, _, _ in cases]), ops)
    for i, case in enumerate(cases):
        assert np.array_equal(got[i], want[i]), (name, case,
                                                 np.abs(got[i].astype(int) - want[i]).max())


@pytest.mark.parametrize("block", [None, 1, 4000])
def test_rotate_beyond_timms_range_and_square_frames(block, monkeypatch):
    """Image.rotate's own arithmetic: angles taken mod 360 (-27 is 333), the 90 / 180 degree
    rotations, a square frame and an even one; whole frames at once and in blocks of output rows
    (the CPU's cache-sized blocks: one row, a few rows)."""
    if block:
        monkeypatch.setattr(augment, "AFFINE_BLOCK", block)
    for H, W in ((16, 16), (18, 24)):
        frames = clips("still", 1, 2, H, W, seed=H)
        angles = (-27.0, 27.0, 90.0, -180.0, 45.5, 0.0, 359.0)
        got = device_apply(np.repeat(frames, len(angles), 0), [[("Rotate", (a,))] for a in angles])
        for i, a in enumerate(angles):
            assert np.array_equal(got[i], timm_apply(frames[0], "Rotate", (a,))), (H, W, a)


def test_whole_draws_equal_randaugment_clip():
    """A batch of clips with their own draws (the reference's rand-m7-n4: up to 4 ops composed, in
    order; clips without any op among them), grouped by op on the device == randaugment_clip clip
    by clip with the same rng."""
    cfg = augment.RandAug(n=4, m=7, mstd=0.5)
    frames = np.concatenate([clips("still", 10, 4, 24, 20, seed=1), clips("noise", 2, 4, 24, 20)])
    draws = [augment.randaug_draw(cfg, np.random.default_rng(s)) for s in range(len(frames))]
    assert max(map(len, draws)) >= 3 and min(map(len, draws)) == 0
    got = device_apply(frames, draws, n=cfg.n)
    for i, f in enumerate(frames):
        want = benchkit.randaugment_clip(cfg, f, np.random.default_rng(i))
        assert np.array_equal(got[i], want), (i, draws[i])
    video = torch.from_numpy(frames).permute(0, 4, 1, 2, 3)
    none = torch.full((len(frames), 2), augment.NO_OP)
    assert augment.randaugment_batch(video, none, torch.zeros(len(frames), 2, 6)) is video


def test_dataset_draws_through_a_worker_equal_the_pil_path():
    """finetune.py's path: the dataset calls randaug_sample where it called randaugment_clip (the
    same rng, so the same draw) and ships the draw beside the untouched clip, eval_collate stacks
    it in a loader worker, randaugment_batch applies it: the clips of the PIL path."""
    cfg = augment.RandAug(n=2, m=9, mstd=0.5)
    kw = dict(img_size=32, num_frames=4, crop="rrc")
    old = evaluation.MotionClassDataset(
        "train", 16, augment=lambda f, rng: (benchkit.randaugment_clip(cfg, f, rng), {}), **kw)
    plain = evaluation.MotionClassDataset("train", 16, **kw)
    new = evaluation.MotionClassDataset("train", 16, augment=partial(augment.randaug_sample, cfg),
                                        **kw)
    assert len(new) == 16 and torch.equal(new.targets(), old.targets())
    sampler = data.ResumableSampler(new, shuffle=False)
    sampler.set_epoch(1, state=dict(epoch=1))
    old.set_epoch(1), plain.set_epoch(1)
    loader = data.loader(new, sampler, 8, 1, torch.device("cpu"), evaluation.eval_collate)
    batches = list(loader)
    assert [b["randaug_op"].shape for b in batches] == [(8, 2)] * 2
    assert batches[0]["randaug_arg"].shape == (8, 2, 6)
    video = torch.cat([b["video"] for b in batches])
    assert torch.equal(video, torch.stack([plain[i]["video"] for i in range(16)]))   # untouched
    got = torch.cat([augment.randaugment_batch(b["video"], b["randaug_op"], b["randaug_arg"])
                     for b in batches])
    want = torch.stack([old[i]["video"] for i in range(16)])
    assert not torch.equal(want, video) and torch.equal(got, want)
    assert "randaug_op" not in plain[0] and "randaug_op" not in evaluation.eval_collate(
        [plain[0], plain[1]])   # no augment, no draw shipped


def test_step_reads_nothing_back_from_the_device():
    """No host sync: on the meta device (no values at all: .item(), .tolist(), nonzero or a Python
    bool of a device tensor raise) a batch with every op runs; the grouping reads the loader's CPU
    tensors only, and refuses device ones."""
    names = augment.RANDAUG_OPS
    ops = [[(names[i], augment.randaug_level_args(names[i], 9, 1)),
            (names[(i + 4) % len(names)], augment.randaug_level_args(names[(i + 4) % len(names)],
                                                                     5, -1))]
           for i in range(len(names))]
    p = [augment.randaug_params(o, 2, 12, 16) for o in ops]
    op = torch.stack([q["randaug_op"] for q in p])
    arg = torch.stack([q["randaug_arg"] for q in p])
    video = torch.empty(len(ops), 3, 2, 12, 16, dtype=torch.uint8, device="meta")
    out = augment.randaugment_batch(video, op, arg)
    assert out.device.type == "meta" and out.shape == video.shape and out.dtype == torch.uint8
    with pytest.raises(ValueError, match="CPU"):
        augment.randaugment_batch(video, op.to("meta"), arg)


@pytest.mark.parametrize("name", ["AutoContrast", "Equalize", "PosterizeIncreasing",
                                  "ContrastIncreasing", "SharpnessIncreasing", "Rotate"])
def test_each_op_is_one_graph(name):
    """torch.compile-friendly: an op traces to one graph without breaks (a break would be a host
    read or Python branching on values, as in the forward's test in test_model.py)."""
    x = torch.from_numpy(clips("still", 2, 2, 12, 16)).permute(0, 4, 1, 2, 3).contiguous()
    a = torch.stack([augment.randaug_params([(name, augment.randaug_level_args(name, 9, s))], 1,
                                            12, 16)["randaug_arg"][0] for s in (1, -1)])
    torch._dynamo.reset()
    e = torch._dynamo.explain(augment.DEVICE_OPS[name])(x, a)
    assert (e.graph_count, e.graph_break_count) == (1, 0), e.break_reasons


def test_video_list_clips_flip_in_the_step_as_the_worker_flipped(video_list):
    """finetune.py on a video list: the worker crops and draws (flip coin, RandAugment) but ships
    the clip unflipped, channels last, straight into the batch (no transposing copy); the step flips
    (data.infuse), then applies the draws: the pixels of the worker path before (crop_and_flip's
    flip, PIL RandAugment, to_tensor) for the same seed, epoch and index."""
    cfg = augment.RandAug(n=2, m=9, mstd=0.5)
    items = data.read_list(video_list)
    ds = evaluation.VideoClipDataset(items, mode="train", num_classes=3, num_frames=8, img_size=32,
                                     crop="rrc", augment=partial(augment.randaug_sample, cfg),
                                     seed=3)
    sampler = data.ResumableSampler(ds, shuffle=False)
    sampler.set_epoch(2, state=dict(epoch=2))
    batch, = list(data.loader(ds, sampler, 6, 1, torch.device("cpu"), evaluation.eval_collate))
    assert batch["video"].is_contiguous(memory_format=torch.channels_last_3d)   # as shipped
    got = augment.randaugment_batch(data.infuse(batch), batch["randaug_op"], batch["randaug_arg"])
    want = []
    for i in range(6):   # the path before: everything in the worker, in the same rng order
        rng = np.random.default_rng([3, 2, i])
        frames = data.decode_frames(items[i][0], lambda n: data.clip_indices(n, 8, 4, rng))
        frames = augment.crop_and_flip(frames, 32, rng, True, crop="rrc")
        want.append(data.to_tensor(benchkit.randaugment_clip(cfg, frames, rng)))
    assert set(batch["flip"].tolist()) == {False, True}   # both kinds in the batch
    assert torch.equal(got, torch.stack(want))
