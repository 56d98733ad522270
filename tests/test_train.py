"""train.py end to end on tiny configurations: the demo learns, resume is exact, DDP matches one
process, progressive training switches stage at the right step, list datasets of mp4s train."""
import json
import os

import numpy as np
import pytest
import torch

import data
import runtime
import train
from conftest import TINY, assert_same_weights, read_log, run, weights

def test_demo_preset_learns(tmp_path):
    """The README's first command, shortened to 128 of its 4096 steps (2 of 64 epochs, ~20 s on 2 cores):
    the loss falls and goes below both floors (normalised pixel targets: predicting zero scores ~1)."""
    out = tmp_path / "demo"
    r = run(["train.py", "--preset", "tiny", "--steps", "128", "--out-dir", str(out)])
    assert "clips/s" in r.stdout and "eta" in r.stdout and "lr schedule (cosine): 4,096 steps" in r.stdout
    log = read_log(out)
    assert [x["step"] for x in log] == [32, 64, 96, 128]         # log_every 32: two lines per epoch
    assert log[-1]["loss"] < 0.85 * log[0]["loss"]
    assert log[-1]["loss"] < min(log[-1]["floor_zero"], log[-1]["floor_mean"])
    assert (out / "checkpoint-latest.pth").exists() and (out / "args.json").exists()
    ckpt = torch.load(out / "checkpoint-latest.pth", weights_only=True)   # only plain types inside
    assert ckpt["step"] == 128 and ckpt["args"]["preset"] == "tiny"
    assert (ckpt["args"]["img_size"], ckpt["args"]["num_frames"], ckpt["args"]["patch_size"]) == (32, 8, 8)


def test_resume_is_exact(tmp_path):
    """2N steps in one go == N steps, stop, --resume, N more steps: identical weights."""
    a, b = tmp_path / "a", tmp_path / "b"
    run(["train.py", *TINY, "--out-dir", str(a), "--steps", "6"])
    run(["train.py", *TINY, "--out-dir", str(b), "--steps", "3"])
    run(["train.py", *TINY, "--out-dir", str(b), "--steps", "6", "--resume"])
    assert_same_weights(weights(a), weights(b))
    assert [r["loss"] for r in read_log(a)][3:] == [r["loss"] for r in read_log(b)][3:]


def test_ddp_two_ranks_match_one_process(tmp_path):
    """torchrun with 2 gloo ranks and the same global batch gives the same weights as 1 process."""
    one, two = tmp_path / "one", tmp_path / "two"
    run(["train.py", *TINY, "--out-dir", str(one), "--steps", "2"])
    run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *TINY,
         "--out-dir", str(two), "--steps", "2"], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert_same_weights(weights(one), weights(two), exact=False)
    w0 = weights(tmp_path / "one")
    # the step did change weights
    assert not torch.equal(w0["decoder.head.weight"], train_initial_head())


def train_initial_head():
    torch.manual_seed(0)
    from model import MODEL_SIZES, PretrainModel
    return PretrainModel(img_size=32, num_frames=4, out_dim=1536,
                         **MODEL_SIZES["tiny"]).state_dict()["decoder.head.weight"]


def test_list_dataset_of_mp4s_trains(tmp_path, video_list):
    out = tmp_path / "run"
    run(["train.py", "--dataset", "list", "--train-list", str(video_list), "--model", "tiny",
         "--img-size", "32", "--num-frames", "4", "--stride", "2", "--target", "pixel",
         "--batch-size", "4", "--workers", "1", "--steps", "3", "--epochs", "2",
         "--stage1-epochs", "1", "--warmup-epochs", "0", "--log-every", "1", "--out-dir", str(out)])
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3] and all(r["bad"] == 0 for r in log)


def test_progressive_switches_stage(tmp_path, monkeypatch):
    """Stage 1: every clip has objects and trajectory masks; from step stage1_steps on: none,
    tube masks."""
    seen, collate = [], data.collate

    def recording_collate(samples):
        batch = collate(samples)
        for v, m in zip(data.infuse(batch), batch["mask"]):   # V', as the step sees it
            # black: only objects vary
            has_objects = bool(v.float().flatten(1).std(1).max() > 1e-4)
            # (t=2, h*w): every slice the same
            tube = bool((m.view(2, -1) == m.view(2, -1)[0]).all())
            seen.append((has_objects, tube))
        return batch

    monkeypatch.setattr(data, "collate", recording_collate)
    train.main([*TINY, "--strategy", "progressive", "--stage1-epochs", "1",
                "--out-dir", str(tmp_path / "p"), "--steps", "4"])
    clips_per_step = 8
    stage1, stage2 = seen[: 2 * clips_per_step], seen[2 * clips_per_step:]
    assert len(stage2) == 2 * clips_per_step
    assert all(obj for obj, _ in stage1) and not all(tube for _, tube in stage1)
    assert all(not obj and tube for obj, tube in stage2)
    log = read_log(tmp_path / "p")
    assert [r["stage"] for r in log] == [1, 1, 2, 2]
    assert os.path.exists(tmp_path / "p" / "checkpoint-stage1.pth")
    # restart schedule: warm-up again from the start of stage 2
    assert log[2]["lr"] < log[1]["lr"]


def test_cosine_schedule_shape():
    s = runtime.cosine_schedule(1.0, 0.1, 100, 10)
    assert (len(s) == 100 and s[0] == 0 and s[10] == pytest.approx(1.0)
            and s[-1] == pytest.approx(0.1, abs=1e-3))
    # the reference's warm-up (utils_mae.cosine_scheduler: np.linspace(0, base, warmup_iters)) ends
    # on the peak: its last step is base, steps 1/9 apart; the cosine then starts at base again
    assert s[9] == 1.0 and s[1] == pytest.approx(1 / 9) and s[10] == pytest.approx(1.0)
    assert (all(a <= b for a, b in zip(s[:10], s[1:11]))
            and all(a >= b for a, b in zip(s[10:], s[11:])))


def test_no_weight_decay_on_norms_biases_and_mask_token():
    from model import PretrainModel
    m = PretrainModel(img_size=32, num_frames=4, embed_dim=32, depth=1, num_heads=2,
                      decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, out_dim=8)
    skip = {n for n, p in m.named_parameters() if runtime.no_weight_decay(n, p, ["mask_token"])}
    assert "mask_token" in skip and "encoder.blocks.0.norm1.weight" in skip
    assert "encoder.blocks.0.attn.q_bias" in skip
    assert all(p.ndim > 1 for n, p in m.named_parameters() if n not in skip)
    assert "encoder.blocks.0.attn.qkv.weight" not in skip


def test_log_window_writes_the_means_of_its_steps_then_restarts(tmp_path, capsys):
    """runtime.LogWindow: one line and one log.jsonl record of the window's means (loss beside its
    floors, clips/s), then an empty window."""
    window = runtime.LogWindow(torch.device("cpu"))
    window.add(torch.tensor([1.0, 4.0, 2.0]), clips=8)
    window.add(torch.tensor([3.0, 4.0, 4.0]), clips=8)
    window.log(runtime.Log(str(tmp_path), True), 2, 4, 1, 1e-3, 0.5, 0)
    rec = read_log(tmp_path)[-1]
    assert (rec["step"], rec["loss"], rec["floor_zero"], rec["floor_mean"]) == (2, 2.0, 4.0, 3.0)
    assert rec["clips_per_s"] > 0 and "loss 2.0000 (floors: zero 4.0000" in capsys.readouterr().out
    assert (window.n, window.clips, window.sums.tolist()) == (0, 0, [0.0, 0.0, 0.0])


def test_save_every_zero_keeps_only_latest(tmp_path):
    """--save-every 0 turns periodic checkpoints off (it used to divide by zero at the first
    epoch end)."""
    out = tmp_path / "run"
    train.main([*TINY, "--out-dir", str(out), "--steps", "4", "--save-every", "0"])
    assert (out / "checkpoint-latest.pth").exists() and not list(out.glob("checkpoint-[0-9]*.pth"))


# ------------------------------------------------------------------------ presets and Table 4 flags


@pytest.mark.parametrize("dataset", ["list", "k400", "ssv2"])
def test_tiny_preset_composes_with_every_video_dataset(tmp_path, video_list, dataset):
    """`--preset tiny --dataset list|k400|ssv2` keeps tiny's grid and schedule; stage 1 is half of
    tiny's epochs (it used to carry the dataset's absolute 300 or 400 and fail)."""
    where = (["--train-list", str(video_list)] if dataset == "list"
             else ["--data-root", str(video_list.parent)])
    out = tmp_path / dataset
    run(["train.py", "--preset", "tiny", "--dataset", dataset, *where, "--batch-size", "4",
         "--workers", "0", "--steps", "2", "--log-every", "1", "--out-dir", str(out)])
    args = json.loads((out / "args.json").read_text())
    tiny = train.PRESETS["tiny"]
    assert (args["img_size"], args["num_frames"], args["epochs"]) == (tiny["img_size"],
                                                                       tiny["num_frames"], tiny["epochs"])
    assert args["strategy"] == "progressive" and args["stage1_epochs"] == tiny["epochs"] / 2
    assert [r["step"] for r in read_log(out)] == [1, 2]


def test_stage1_is_half_of_the_epochs_unless_given():
    assert train.get_args(["--dataset", "k400", "--epochs", "400"]).stage1_epochs == 200
    assert train.get_args(["--dataset", "ssv2"]).stage1_epochs == 400            # 400 + 400
    assert train.get_args(["--epochs", "400", "--stage1-epochs", "100"]).stage1_epochs == 100


def test_ablation_preset_is_table4_base_setting():
    """Sec. 4.3: ViT-S, mask 90%, single, 400 epochs, two objects, trajectory masking,
    CLIP targets."""
    a = train.get_args(["--preset", "ablation"])
    assert (a.model, a.mask_ratio, a.strategy, a.epochs) == ("small", 0.9, "single", 400)
    assert (a.num_objects, a.masking, a.target, a.dataset) == (2, "trajectory", "clip", "k400")


def test_rotation_and_scaling_flags_reach_the_overlay(monkeypatch):
    """Table 4c: --angle-range 0 0 = scaling only, --scale-range 1 1 = rotation only (the draws of
    the motion the step renders)."""
    import motion
    seen, draw_motion = {}, motion.draw_motion

    def spy(shape, num_bank, rng, **kw):
        seen.update(kw)
        return draw_motion(shape, num_bank, rng, **kw)
    monkeypatch.setattr(motion, "draw_motion", spy)
    args = train.get_args([*TINY, "--angle-range", "0", "0", "--scale-range", "1", "1"])
    train.build_dataset(args)[0]
    assert seen["angle_range"] == (0, 0) and seen["scale_range"] == (1, 1)


def test_object_list_selects_exactly_the_listed_pngs(tmp_path):
    """--object-list (the paper's object_instances.txt): paths relative to --objects,
    nothing else."""
    from PIL import Image
    import motion
    for cat in ("cat", "dog"):
        (tmp_path / cat).mkdir()
        for i in range(3):
            Image.new("RGBA", (8, 8), (255, 0, 0, 255)).save(tmp_path / cat / f"{i}.png")
    (tmp_path / "list.txt").write_text("\ufeffcat/1.png\n# comment\ndog/2.png\n")
    bank = motion.ObjectBank(tmp_path, list_file=tmp_path / "list.txt")
    assert [p.relative_to(tmp_path).as_posix() for p in bank.files] == ["cat/1.png", "dog/2.png"]
    (tmp_path / "bad.txt").write_text("cat/1.png\ncat/9.png\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        motion.ObjectBank(tmp_path, list_file=tmp_path / "bad.txt")


def test_every_tiny_preset_shares_the_demo_grid():
    """The demo checkpoint (train.py --preset tiny) must load in every script's tiny preset."""
    from tools import extract
    import finetune
    import probe
    from tools import segment
    grid = ("model", "img_size", "num_frames", "patch_size", "tubelet")
    demo = [train.PRESETS["tiny"][k] for k in grid]
    for script in (finetune, probe, segment, extract):
        assert [script.PRESETS["tiny"][k] for k in grid] == demo, script.__name__


# ---------------------------------------------------------- --preset reference: the official recipe

# K400 as the official scripts ran it: 240,000 training videos (any list of 239,993-240,127 gives
# the same figures on their 8 GPUs): the scheduler's epoch is 240,000 // 256 = 937 steps, stage 1's
# loader (256 videos a step, one clip each) 937 steps, stage 2's (128 videos, 2 clips each) 1,875.
K400_VIDEOS = 240_000


def test_reference_schedule_is_the_official_runs():
    """The issue's figures, measured with the reference's own scheduler at batch 256: 421,800 steps
    (150 epochs of 937 + 150 of 1,875), lr 1.429e-4 at the end of stage 1 and 1.428e-4 at the end
    of stage 2 (a cosine planned for 801 epochs, stopped at 150), 76.2% of the steps at >= 0.9x the
    1.5e-4 peak, stage 2's warm-up 73,123 steps (its loader yields 2n steps per epoch, its scheduler
    counts n), a saw-tooth whose largest jump is 1.26e-7."""
    args = train.get_args(["--preset", "reference", "--dataset", "k400"])
    lrs, stage1 = train.lr_schedule(args, K400_VIDEOS // 128)
    assert (len(lrs), stage1) == (421_800, 150 * 937)
    s1, s2 = lrs[:stage1], lrs[stage1:]
    assert s1[-1] == pytest.approx(1.429e-4, abs=5e-8)
    assert s2[-1] == pytest.approx(1.428e-4, abs=5e-8)
    assert np.mean(lrs >= 0.9 * 1.5e-4) == pytest.approx(0.762, abs=5e-4)
    peak = 1.5e-4 * (1 - 1e-9)
    assert np.flatnonzero(s1 >= peak)[0] == 40 * 937 - 1            # the warm-up's last step
    assert np.flatnonzero(s2 >= peak)[0] == 73_123
    # stage 2 steps back at each pass: warm-up dips, then small jumps up in the cosine
    jumps = np.diff(s2)[np.arange(1, 150) * 1875 - 1]
    assert (jumps[:39] < 0).all() and np.max(jumps) == pytest.approx(1.26e-7, abs=5e-10)
    summary = runtime.schedule_summary(lrs, stage1, args.lr * args.batch_size / 256,
                                       args.schedule)
    for figure in ("421,800 steps", "76.2%", "stage 1: 140,550 steps", "from step 37,479",
                   "0.0001429", "stage 2: 281,250 steps", "from step 73,123", "0.0001428"):
        assert figure in summary, (figure, summary)
    # the paper's text (the default): 562,500 steps, cosine to the floor, 19.7% near the peak
    paper = train.get_args(["--dataset", "k400"])
    lrs, stage1 = train.lr_schedule(paper, K400_VIDEOS // 128)
    assert (len(lrs), stage1) == (562_500, 281_250) and lrs[-1] == pytest.approx(1e-5)
    assert np.mean(lrs >= 0.9 * 1.5e-4) == pytest.approx(0.197, abs=5e-4)


def test_reference_preset_composes_with_the_dataset_presets():
    k400 = train.get_args(["--preset", "reference", "--dataset", "k400"])
    ssv2 = train.get_args(["--preset", "reference", "--dataset", "ssv2"])
    for a in (k400, ssv2):
        assert (a.schedule, a.planned_epochs, a.repeated_sampling, a.teacher_norm, a.flip,
                a.strategy) == ("reference", 801, ["off", "same-crop"], "imagenet", False,
                                "progressive")
    assert (k400.stride, k400.stage1_epochs, k400.epochs) == (4, 150, 450)    # 150 + 150 passes
    assert (ssv2.stride, ssv2.stage1_epochs, ssv2.epochs) == (2, 200, 600)    # 200 + 200 passes
    # flags win; without the preset the paper's values stay
    flag = train.get_args(["--preset", "reference", "--dataset", "ssv2", "--epochs", "500"])
    assert flag.epochs == 500
    plain = train.get_args(["--dataset", "ssv2"])
    assert (plain.epochs, plain.schedule, plain.teacher_norm, plain.repeated_sampling) == (
        800, "cosine", "clip", ["independent"])


@pytest.mark.parametrize("repeat", ["independent", "same-crop", "off"])
def test_repeated_sampling_modes(monkeypatch, repeat):
    """independent: each clip its own crop; same-crop: one crop, two masks (the reference's stage
    2); off: each clip another video, every video num_sample times a pass (its stage 1)."""
    ds = data.PretrainDataset("stills", length=12, num_frames=4, img_size=32, num_sample=2,
                              motion="off", tubelet=2, patch=8, mask_ratio=0.5, repeat=repeat)
    read, crops = [], []
    background, crop_and_flip = ds.background, data.crop_and_flip
    monkeypatch.setattr(ds, "background", lambda i, rng: read.append(i) or background(i, rng))
    monkeypatch.setattr(data, "crop_and_flip",
                        lambda *a, **k: crops.append(1) or crop_and_flip(*a, **k))
    items = [ds[i] for i in range(12)]
    assert len(crops) == (12 if repeat == "same-crop" else 24)
    same = [torch.equal(x["video"][0], x["video"][1]) for x in items]
    assert all(same) if repeat == "same-crop" else not any(same)
    assert not any(torch.equal(x["mask"][0], x["mask"][1]) for x in items)
    if repeat == "off":   # clip 1 of item i: another video, each video read twice in the pass
        assert all(read[2 * i] == i != read[2 * i + 1] for i in range(12))
        assert sorted(read) == sorted(list(range(12)) * 2)
        ds.set_state(1)
        shifted = []
        monkeypatch.setattr(ds, "background",
                            lambda i, rng: shifted.append(i) or background(i, rng))
        ds[0]
        assert shifted[1] != read[1]                     # a new partner each pass
    else:
        assert read == list(range(12))


def test_reference_preset_runs_and_prints_its_schedule(tmp_path):
    """--preset reference end to end on a tiny run: the schedule summary before the run, stage 1
    then stage 2 at the step the schedule says, every logged lr the schedule's."""
    argv = ["--preset", "reference", *TINY, "--strategy", "progressive", "--stage1-epochs", "2",
            "--epochs", "6", "--planned-epochs", "10", "--out-dir", str(tmp_path / "r")]
    r = run(["train.py", *argv])
    assert "lr schedule (reference): 12 steps" in r.stdout and "stage 2: 8 steps" in r.stdout
    args = train.get_args(argv)
    lrs, stage1 = train.lr_schedule(args, 16 // 4)        # 16 videos, 4 a step
    assert stage1 == 4 and len(lrs) == 12
    log = read_log(tmp_path / "r")
    assert [x["stage"] for x in log] == [1] * 4 + [2] * 8
    assert [x["lr"] for x in log] == pytest.approx(lrs.tolist())
    # a 2-epoch plan of 2 steps per epoch, read at 2e + s by the 4 steps of stage 2's passes
    plan = runtime.cosine_schedule(1.5e-4 * 8 / 256, 1e-5 * 8 / 256, 20, 2)
    assert lrs[4:].tolist() == pytest.approx(plan[[0, 1, 2, 3, 2, 3, 4, 5]].tolist())
