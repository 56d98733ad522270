"""data.py: list files, decoding, crops, repeated sampling, determinism, resumable sampling."""
import numpy as np
import pytest
import torch

import augment
import data
import motion
from conftest import write_video


def test_read_list_conventions(tmp_path):
    (tmp_path / "l.csv").write_text("# comment\n\na b c.mp4 3\n/abs/x.mp4 0\n")
    items = data.read_list(tmp_path / "l.csv", data_root="/root")
    assert items == [("/root/a b c.mp4", 3), ("/abs/x.mp4", 0)]
    items = data.read_list(tmp_path / "l.csv")      # default root: the list's own folder
    assert items[0][0] == str(tmp_path / "a b c.mp4")


@pytest.mark.parametrize("text,where", [("a.mp4 1\nb.mp4\n", ":2:"), ("a.mp4 x\n", ":1:"),
                                        ("a.mp4 1\nb.mp4 7\n", ":2:")])
def test_read_list_errors_name_file_and_line(tmp_path, text, where):
    (tmp_path / "l.csv").write_text(text)
    with pytest.raises(ValueError, match=f"l.csv{where}"):
        data.read_list(tmp_path / "l.csv", num_classes=5)


def test_read_list_empty_and_multilabel(tmp_path):
    (tmp_path / "e.csv").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no entries"):
        data.read_list(tmp_path / "e.csv")
    (tmp_path / "m.csv").write_text("a.mp4 1,4\nb.mp4 -\n")
    assert [lab for _, lab in data.read_list(tmp_path / "m.csv", multi_label=True)] == [[1, 4], []]


def test_decode_frames_reads_the_right_frames(tmp_path):
    path = write_video(tmp_path / "v.mp4", num_frames=60)
    n, fps = data.video_info(path)
    assert n == 60 and fps == 25
    idx = [50, 3, 3, 20, 59]
    frames = data.decode_frames(path, idx)
    assert frames.shape == (5, 48, 64, 3) and frames.dtype == np.uint8
    levels = frames.reshape(5, -1).mean(1)
    np.testing.assert_allclose(levels, [(5 * i) % 250 for i in idx], atol=3)


def test_clip_indices_stride_and_short_videos():
    rng = np.random.default_rng(0)
    idx = data.clip_indices(100, 16, 4, rng)
    assert len(idx) == 16 and (np.diff(idx) == 4).all() and idx[0] >= 0 and idx[-1] < 100
    short = data.clip_indices(30, 16, 4, rng)    # span 61 > 30: spread evenly over the video
    assert short[0] == 0 and short[-1] == 29 and (np.diff(short) >= 1).all()
    with pytest.raises(ValueError, match="fewer than"):
        data.clip_indices(10, 16, 4, rng)


def test_multiscale_crop_boxes():
    rng = np.random.default_rng(0)
    boxes = [augment.multiscale_crop_box(240, 320, rng) for _ in range(300)]
    sides = {int(240 * s) for s in (1, 0.875, 0.75, 0.66)}
    for y, x, h, w in boxes:
        assert h in sides and w in sides and 0 <= y <= 240 - h and 0 <= x <= 320 - w
    assert len({(y, x) for y, x, _, _ in boxes}) > 5     # several fixed offsets used


def test_dataset_repeated_sampling_and_determinism(video_list):
    items = data.read_list(video_list)
    objs = [np.full((20, 20, 4), 255, np.uint8)] * 3
    ds = data.PretrainDataset("video", items=items, num_frames=8, stride=2, img_size=32,
                              num_sample=2, objects=objs, mask_ratio=0.75, seed=1)
    s = ds[0]
    C = augment.planes_cap(32)   # the YUV crops' side: the step converts and resizes them
    assert (s["video"].shape == (2, 1, 8, C, C) and s["chroma"].shape == (2, 2, 8, C // 2 + 1,
            C // 2 + 1) and s["mask"].shape == (2, 4 * 2 * 2) and s["bad"] == [])
    # 4x less shared / pinned memory than float32; normalised on device
    assert s["video"].dtype == s["chroma"].dtype == torch.uint8
    assert (s["mask"].sum(1) == int(0.75 * 4) * 4).all()
    v = data.infuse(data.collate([s]))                       # the objects, as the step pastes them
    assert v.shape == (2, 3, 8, 32, 32) and v.dtype == torch.uint8
    assert not torch.equal(v[0], v[1])                       # own crop / objects per clip
    torch.testing.assert_close(ds[0]["video"], s["video"])   # pure function of (seed, pass, index)
    torch.testing.assert_close(ds[0]["tiles"], s["tiles"])
    ds.set_state(1)
    assert not torch.equal(data.infuse(data.collate([ds[0]])), v)   # a new pass draws anew


def test_dataset_mixed_motion(video_list):
    items = data.read_list(video_list)
    obj = np.zeros((24, 24, 4), np.uint8)
    obj[..., 0], obj[..., 3] = 255, 255   # opaque pure red square
    ds = data.PretrainDataset("video", items=items, num_frames=4, stride=1, img_size=32,
                              num_sample=4, objects=[obj], motion="mixed", seed=0)
    v = data.normalize(data.infuse(data.collate([ds[2]])))   # grey video: red only on objects
    red = (v[:, 0] - v[:, 1]).amax(dim=(1, 2, 3))
    assert (red[::2] > 1).all() and (red[1::2] < 0.5).all()


def test_synthetic_sources():
    objs = [np.full((16, 16, 4), 255, np.uint8)]
    for src in ("noise", "black"):
        ds = data.PretrainDataset(src, length=5, num_frames=4, img_size=32, num_sample=1,
                                  objects=objs, motion="off")
        v = ds[0]["video"][0]                          # (C, T, H, W)
        torch.testing.assert_close(v[:, 0], v[:, 3])   # a still background without motion
    assert len(ds) == 5


def test_resumable_sampler_matches_distributed_sampler():
    ds = list(range(20))
    full = data.ResumableSampler(ds, 1, 0, seed=3)
    full.set_epoch(2)
    order = list(full)
    part = data.ResumableSampler(ds, 1, 0, seed=3)
    part.set_epoch(2, start=8)
    assert list(part) == order[8:]
    shards = [data.ResumableSampler(ds, 2, r, seed=3) for r in range(2)]
    for s in shards:
        s.set_epoch(2)
    assert sorted(list(shards[0]) + list(shards[1])) == sorted(order)


def test_resize_uint8_matches_float_resize():
    """augment.resize (torch's uint8 kernel) stays within 1 grey level of the float bilinear +
    antialias resize."""
    import torch.nn.functional as F
    frames = np.random.default_rng(0).integers(0, 256, (4, 90, 70, 3), dtype=np.uint8)
    out = augment.resize(frames, 32)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    ref = (F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
           .round().permute(0, 2, 3, 1))
    assert out.shape == (4, 32, 32, 3) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    assert np.abs(out.astype(int) - ref.numpy().astype(int)).max() <= 1


def test_normalize_on_device_matches_imagenet_statistics():
    """data.normalize: uint8 (B, C, T, H, W) -> float, (x / 255 - mean) / std per channel."""
    from teacher import IMAGENET_MEAN, IMAGENET_STD
    v = torch.randint(0, 256, (2, 3, 4, 8, 8), dtype=torch.uint8)
    out = data.normalize(v)
    assert out.dtype == torch.float32 and out.shape == v.shape
    for c in range(3):
        torch.testing.assert_close(out[:, c],
                                   (v[:, c].float() / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])


def test_frames_source_fixed_frame_per_video(video_list):
    """--dataset frames (Table 7's K400m-1frm): one frame per video chosen once from the seed, the
    same in every pass; per-pass draws a new one each pass."""
    items = data.read_list(video_list)
    kw = dict(items=items, num_frames=4, img_size=32, num_sample=1, motion="off", flip=False,
              seed=0)
    fixed, per_pass = (data.PretrainDataset("frames", **kw),
                       data.PretrainDataset("frames", frame_pick="per-pass", **kw))
    level = {}   # grey level of frame i is 5 * i (conftest.write_video): which frame was picked
    for name, ds in (("fixed", fixed), ("per_pass", per_pass)):
        for p in range(4):
            ds.set_state(p)
            level.setdefault(name, []).append(int(ds[5]["video"][0, 0, 0, -1, -1]))
    assert len(set(level["fixed"])) == 1
    assert len(set(level["per_pass"])) > 1


def test_stills_source_is_a_fixed_set_of_procedural_images():
    """--dataset stills: item i is the same landscape in every pass (a fixed image set, as Places),
    different items are different images, and every frame of a clip is that still."""
    ds = data.PretrainDataset("stills", length=4, num_frames=4, img_size=32, num_sample=1, motion="off")
    a = ds.background(1, np.random.default_rng(0))
    assert a.shape == (4, 32, 32, 3) and a.dtype == np.uint8 and (a == a[0]).all()
    assert np.array_equal(a, ds.background(1, np.random.default_rng(5)))     # not drawn per pass
    assert not np.array_equal(a, ds.background(2, np.random.default_rng(0)))


@pytest.mark.parametrize("source,kw", [
    ("video", dict(motion="on", repeat="independent")),
    ("video", dict(motion="mixed", repeat="same-crop", masking="trajectory")),
    ("noise", dict(motion="on", num_objects=3, object_size=(16, 300))),
    ("stills", dict(motion="on", masking="tube", flip=True)),
])
def test_step_render_equals_the_worker_overlay(video_list, source, kw):
    """Issue 26: the loader that leaves the pixels to the step (YUV crops or RGB backgrounds, flip
    flag, tiles and draws; data.infuse on the device) gives the clips of the loader that crops
    and pastes in the worker (tools.benchkit.TodaysPath, the path before) within 2 / 255, and the
    same masks, for the same seed: the same draws in the same order."""
    items = data.read_list(video_list) if source == "video" else None
    objs = motion.synthetic_objects(5, np.random.default_rng(0), size=64)
    args = dict(items=items, length=6, num_frames=8, stride=2, img_size=64, num_sample=2,
                objects=objs, mask_ratio=0.75, seed=4, **kw)
    from tools.benchkit import TodaysPath
    step, worker = data.PretrainDataset(source, **args), TodaysPath(source, **args)
    for p in range(2):
        step.set_state(p), worker.set_state(p)
        a, b = data.collate([step[i] for i in range(6)]), data.collate([worker[i] for i in range(6)])
        assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["masked_idx"], b["masked_idx"])
        v = data.infuse(a)
        assert v.shape == b["video"].shape and v.is_contiguous() and v.dtype == torch.uint8
        assert (v.int() - b["video"].int()).abs().max() <= 2
    assert a["flip"].any() and not a["flip"].all()       # both sides of the coin were drawn
    # the bank's objects as they are (uint8, <= 64 px), resized on the device to Sec. 4.1's largest
    # side at 64 px (the canvas' shape)
    side = round(kw.get("object_size", (32, 128))[1] * 64 / 224)
    assert a["tiles"].shape == (12, kw.get("num_objects", 2), 4, 64, 64)
    assert a["tiles"].dtype == torch.uint8 and a["sources"].shape == (12, a["tiles"].shape[1], 2)
    assert a["canvas"].shape[-1] == side and a["canvas"].numel() == 0   # no bytes, a shape


def test_step_batches_cross_a_worker_in_shared_memory():
    """A loader worker collates the step's clips channels last into shared memory (no transposing
    copy in the worker), and infuse hands the step a contiguous (B, C, T, H, W) V'."""
    objs = motion.synthetic_objects(3, np.random.default_rng(0), size=32)
    ds = data.PretrainDataset("noise", length=4, num_frames=4, img_size=32, num_sample=2,
                              objects=objs, patch=16, seed=1)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1,
                                                  collate_fn=data.collate)))
    ref = data.collate([ds[0], ds[1]])
    assert batch["video"].shape == (4, 3, 4, 32, 32)
    assert batch["video"].is_contiguous(memory_format=torch.channels_last_3d)
    for key in ref:
        if torch.is_tensor(ref[key]):
            assert torch.equal(batch[key], ref[key]), key
    assert torch.equal(data.infuse(batch), data.infuse(ref)) and data.infuse(batch).is_contiguous()


class _Allocates(torch.utils.data.Dataset):
    """Item i decodes a clip as data.decode_frames does, 16 frames of 568 x 320 and their stack
    (17 MB), and frees it -> the page faults its process took for it."""
    def __len__(self):
        return 8

    def __getitem__(self, i):
        import resource
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        np.stack([np.ones((320, 568, 3), np.uint8) for _ in range(16)]).sum()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's mallopt")
@pytest.mark.parametrize("keep_heap", [True, False])
def test_loader_workers_keep_freed_buffers_in_their_heap(keep_heap):
    """data.worker_init keeps a worker's freed buffers in its heap: after the first items a clip's
    frames reuse its pages instead of faulting ~2,700 fresh ones in (a whole training clip: ~1,000
    and ~3 ms here, issue 26). keep_heap=False, glibc's default, is what the test sees without it."""
    import functools
    init = functools.partial(data.worker_init, keep_heap=keep_heap)
    # a fresh worker process: a forked one inherits whatever threshold glibc's heap reached here
    faults = list(torch.utils.data.DataLoader(_Allocates(), batch_size=None, num_workers=1,
                                              worker_init_fn=init,
                                              multiprocessing_context="spawn"))[2:]
    if keep_heap:
        assert max(faults) < 100, f"page faults per item: {faults}"
    else:
        assert min(faults) > 1000, f"glibc's default should fault every page in: {faults}"



class _FillsABatch(torch.utils.data.Dataset):
    """Item i writes a fresh 8 MB data.batch_tensor (in a worker: shared memory) -> the page faults
    the writing took."""
    def __len__(self):
        return 3

    def __getitem__(self, i):
        import resource
        batch = data.batch_tensor((8, 1 << 20))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        batch.fill_(i)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(__import__("platform").system() != "Linux", reason="Linux's madvise")
def test_a_workers_batch_is_mapped_in_one_call_not_a_fault_a_page():
    """data.batch_tensor maps a worker's shared batch in at once (MADV_POPULATE_WRITE): writing its
    8 MB then takes no page fault, not one per 4 KB page (2,048: a trap each, ~1 ms a clip, issue 26)."""
    import ctypes
    page = torch.empty(1 << 14, dtype=torch.uint8)
    at = page.data_ptr() + 4095 & -4096
    if data.LIBC.madvise(ctypes.c_void_p(at), ctypes.c_size_t(4096), 23):   # EINVAL before 5.14
        pytest.skip("this kernel has no MADV_POPULATE_WRITE")
    faults = list(torch.utils.data.DataLoader(_FillsABatch(), batch_size=None, num_workers=1))
    assert max(faults) < 100, f"page faults per 8 MB batch: {faults}"

# ---------------------------------------------------------------- YUV crops (issue 26)

def _frames(fmt, colorspace, color_range, H=36, W=50, T=2, seed=0):
    """T PyAV frames of random planes, tagged as given, and PyAV's own RGB of them."""
    import av
    from av.video.reformatter import VideoReformatter
    g, frames = np.random.default_rng(seed), []
    for _ in range(T):
        f = av.VideoFrame(W, H, fmt)
        for plane in f.planes:
            np.frombuffer(plane, np.uint8)[:] = g.integers(0, 256, plane.buffer_size)
        f.colorspace, f.color_range = colorspace, color_range
        frames.append(f)
    return frames, np.stack([VideoReformatter().reformat(f, format="rgb24").to_ndarray()
                             for f in frames])


def _step_crop(planes, box, size):
    """The worker's crop_planes of one clip, then the step's yuv_to_rgb -> uint8 (T, size, size, 3)."""
    luma, chroma, crop = (torch.from_numpy(x)[None] for x in augment.crop_planes(planes, box, size))
    return augment.yuv_to_rgb(luma, chroma, crop, size)[0].permute(1, 2, 3, 0).numpy()


@pytest.mark.parametrize("fmt,colorspace,color_range", [
    ("yuv420p", 2, 0),     # untagged: BT.601, limited range (PyAV's default reading)
    ("yuv420p", 1, 0),     # BT.709
    ("yuvj420p", 2, 0),    # full range by format (JPEG)
    ("yuv420p", 1, 2),     # BT.709, full range by tag
    ("yuv420p", 0, 0),     # tagged RGB: PyAV reads BT.601
    ("yuv420p", 4, 0),     # FCC
    ("yuv420p", 7, 2),     # SMPTE 240M, full range
    ("yuv420p", 9, 0),     # BT.2020
    ("yuv420p", 6, 0),     # SMPTE 170M: BT.601
])
def test_yuv_crops_convert_as_pyav_does(fmt, colorspace, color_range):
    """Issue 26: the step's YUV -> RGB (augment.yuv_to_rgb) gives PyAV's RGB frames bit for bit
    (FFmpeg's fixed point: augment.yuv_coeffs), for random planes (every clamp), at even and odd
    crop offsets (the chroma rows and columns a crop spans); 4:2:0 video has even sides."""
    from av.video.reformatter import VideoReformatter
    frames, rgb = _frames(fmt, colorspace, color_range)
    planes = [data._yuv420(f, VideoReformatter(), 1000) for f in frames]
    planes = (np.stack([p[0] for p in planes]), np.stack([np.stack(p[1]) for p in planes]), planes[0][2])
    for y, x in [(0, 0), (1, 1), (3, 2), (11, 25)]:
        s = 24   # crop side = clip side: the resize is the identity
        np.testing.assert_array_equal(_step_crop(planes, (y, x, s, s), s),
                                      rgb[:, y:y + s, x:x + s], err_msg=f"crop at {y}, {x}")


def test_yuv_crops_padding_is_zero_and_weighed_zero(video_list):
    """A clip's YUV crop fills its slot's corner; the rest is zeros (a sample is a function of the
    seed, byte for byte), and the step's RGB is the same whatever the padding holds."""
    ds = data.PretrainDataset("video", items=data.read_list(video_list), num_frames=4, stride=2,
                              img_size=32, num_sample=2, motion="off", seed=0)
    for i in range(3):
        s = ds[i]
        for luma, chroma, (h, w, py, px) in zip(s["video"], s["chroma"], s["crop"][:, :4].tolist()):
            rows, cols = (py + h - 1) // 2 + 1, (px + w - 1) // 2 + 1
            assert luma[:, :, h:].eq(0).all() and luma[:, :, :, w:].eq(0).all()
            assert chroma[:, :, rows:].eq(0).all() and chroma[:, :, :, cols:].eq(0).all()
            assert luma[:, :, :h, :w].float().std() > 0
    from av.video.reformatter import VideoReformatter
    frames, _ = _frames("yuv420p", 1, 0, H=40, W=60, T=3)
    planes = [data._yuv420(f, VideoReformatter(), 1000) for f in frames]
    planes = ([p[0] for p in planes], [p[1] for p in planes], planes[0][2])
    for box, size in [((3, 5, 23, 29), 24), ((0, 1, 22, 23), 16), ((7, 2, 25, 25), 40)]:
        luma, chroma, crop = augment.crop_planes(planes, box, size)
        junk = [np.random.default_rng(0).integers(0, 256, v.shape, np.uint8) for v in (luma, chroma)]
        h, w, a, b = box[2], box[3], chroma.shape[2], chroma.shape[3]
        junk[0][:, :, :h, :w] = luma[:, :, :h, :w]
        rows, cols = (box[0] + h - 1) // 2 - box[0] // 2 + 1, (box[1] + w - 1) // 2 - box[1] // 2 + 1
        junk[1][:, :, :rows, :cols] = chroma[:, :, :rows, :cols]
        want, got = (augment.yuv_to_rgb(*(torch.from_numpy(v)[None] for v in (y, uv, crop)), size)
                     for y, uv in ((luma, chroma), junk))
        assert torch.equal(got, want) and a == b, box


def _smooth_video(path, T, H, W, pix_fmt="yuv420p"):
    """An mp4 of smooth colour waves (natural frames have no pixel-sharp colour edges)."""
    import av
    yy, xx = np.mgrid[0:H, 0:W] / 9.0
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25, options={"crf": "18"})
        s.width, s.height, s.pix_fmt = W, H, pix_fmt
        for t in range(T):
            f = np.stack([np.sin(xx + t / 3), np.cos(yy - t / 5), np.sin((xx + yy) / 2 + t / 4)], -1)
            c.mux(s.encode(av.VideoFrame.from_ndarray((128 + 90 * f).astype(np.uint8), "rgb24")))
        c.mux(s.encode())
    return str(path)


@pytest.mark.parametrize("H,W,size,pix_fmt", [
    (60, 90, 48, "yuv420p"),    # under the cap (planes_cap(48) = 70): the planes as decoded
    (60, 90, 96, "yuv420p"),    # upscaled
    (90, 120, 32, "yuv420p"),   # over the cap (46): as `prepare encode` writes it, 46 x 62
    (60, 90, 48, "yuv444p"),    # not 4:2:0: as `prepare encode` writes it
])
def test_yuv_crops_resize_as_the_worker_did(tmp_path, H, W, size, pix_fmt):
    """Issue 26: a clip decoded as YUV planes, cropped in the worker (crop_and_flip on the planes)
    and converted and resized by the step equals the worker's old path (RGB frames, crop_and_flip)
    within 1 level, the same MultiScaleCrop boxes from the same rng. A video over the cap or not
    in 4:2:0 is read as `prepare encode` writes it (data.prepared_size, AREA, yuv420p): the old
    path on those frames."""
    import av
    path = _smooth_video(tmp_path / "v.mp4", 12, H, W, pix_fmt)
    idx, cap = np.arange(0, 12, 3), augment.planes_cap(size)
    planes = data.decode_frames(path, idx, cap)
    w, h = data.prepared_size(W, H, cap)
    with av.open(path) as c:
        rgb = np.stack([f.reformat(w, h, "yuv420p", interpolation="AREA").to_ndarray(
            format="rgb24") for i, f in enumerate(c.decode(video=0)) if i in idx])
    assert [p.shape for p in planes[0]] == [(h, w)] * len(idx) and rgb.shape == (len(idx), h, w, 3)
    assert [u.shape for uv in planes[1] for u in uv] == [((h + 1) // 2, (w + 1) // 2)] * 2 * len(idx)
    for seed in range(8):
        want, _ = augment.crop_and_flip(rgb, size, np.random.default_rng(seed), True, defer_flip=True)
        (luma, chroma, crop), _ = augment.crop_and_flip(planes, size, np.random.default_rng(seed),
                                                        True, defer_flip=True)
        got = augment.yuv_to_rgb(*(torch.from_numpy(v)[None] for v in (luma, chroma, crop)), size)
        d = np.abs(got[0].permute(1, 2, 3, 0).numpy().astype(int) - want)
        assert d.max() <= 1 and d.mean() < 0.3, (seed, d.max(), d.mean())


def test_yuv_step_is_one_graph_without_recompiles(video_list):
    """No host sync and no recompile per batch for the YUV crops either: data.infuse of a video
    batch (conversion, resize, flip, render) traces to one graph, and a compiled infuse takes a
    second batch of new crops without recompiling."""
    objs = motion.synthetic_objects(3, np.random.default_rng(0), size=32)
    ds = data.PretrainDataset("video", items=data.read_list(video_list), num_frames=4, stride=2,
                              img_size=32, num_sample=2, objects=objs, seed=0)
    one, two = data.collate([ds[0], ds[1]]), data.collate([ds[2], ds[3]])
    assert "chroma" in one and not torch.equal(one["crop"], two["crop"])
    torch._dynamo.reset()
    e = torch._dynamo.explain(data.infuse)(one)
    assert (e.graph_count, e.graph_break_count) == (1, 0), e.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(data.infuse, backend="eager", fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert torch.equal(compiled(one), data.infuse(one))
        compiled(two)


def test_batches_of_videos_are_written_in_place(video_list):
    """Issue 26: a batch of videos (the DataLoader's __getitems__) has each sample's YUV crops
    written straight into the batch's tensors, which collate hands on uncopied; the batch equals
    the samples made and collated one by one, also through a worker (then in shared memory)."""
    objs = motion.synthetic_objects(3, np.random.default_rng(0), size=32)
    ds = data.PretrainDataset("video", items=data.read_list(video_list), num_frames=4, stride=2,
                              img_size=32, num_sample=2, objects=objs, seed=0)
    samples = ds.__getitems__([0, 1, 2])
    batch = data.collate(samples)
    assert batch["video"].data_ptr() == samples[0]["video"].data_ptr()   # no copy
    assert batch["chroma"].data_ptr() == samples[0]["chroma"].data_ptr()
    want = data.collate([ds[k] for k in (0, 1, 2)])
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1, collate_fn=data.collate)
    for got in (batch, next(iter(loader))):
        assert set(got) == set(want) and got["video"].shape == (6, 1, 4, 46, 46)   # planes_cap(32)
        for key, v in want.items():
            assert key == "bad" or torch.equal(got[key], v), key
    assert got["video"].is_shared() and got["chroma"].is_shared()
    base = torch.arange(6 * 16).view(6, 4, 4).clone()   # cat passes through only slices of it, in order
    a, b, t = base[:3], base[3:], base[3:].transpose(1, 2)
    assert data.cat([a, b]) is base
    for parts in ([b, a], [a, t], [a[:2], b]):
        assert torch.equal(data.cat(parts), torch.cat(parts))
