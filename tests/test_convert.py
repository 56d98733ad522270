"""tools/convert.py: smile <-> transformers VideoMAE, both ways, on tiny random-weight models; the
q/v-bias loss of some transformers releases (mteb PR #5094) is refused, not written."""
import os
import sys

import pytest
import torch

from conftest import ROOT, run
from model import MODEL_SIZES, PretrainModel, VideoClassifier

from tools import convert

GRID = dict(img_size=32, num_frames=8, patch_size=8, tubelet_size=2)
ARGS = dict(model="tiny", img_size=32, num_frames=8, patch_size=8, tubelet=2)


def randomised(m, seed=0):
    """Every parameter random, biases and norms included: zeros (the init) would hide lost
    biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            noise = torch.randn(p.shape, generator=g) * (0.1 if p.ndim > 1 else 0.5)
            p.copy_(noise + (1.0 if "norm" in n and n.endswith("weight") else 0.0))
    return m


MODELS = {   # name -> (model, transformers class it becomes)
    "pixel": (lambda: PretrainModel(**GRID, **MODEL_SIZES["tiny"], out_dim=3 * 2 * 8 * 8),
              "VideoMAEForPreTraining"),
    "clip": (lambda: PretrainModel(**GRID, **MODEL_SIZES["tiny"], out_dim=768), "VideoMAEModel"),
    "classifier": (lambda: VideoClassifier(**GRID, **MODEL_SIZES["tiny"], num_classes=5),
                   "VideoMAEForVideoClassification"),
}


def checkpoint(tmp_path, name):
    model = randomised(MODELS[name][0]())
    path = tmp_path / f"{name}.pth"
    torch.save({"model": model.state_dict(), "args": ARGS}, path)
    return str(path), model.state_dict()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_is_exact_and_outputs_agree(tmp_path, name):
    ck, sd = checkpoint(tmp_path, name)
    convert.to_hf(ck, str(tmp_path / "hf"))
    import transformers
    config = transformers.AutoConfig.from_pretrained(tmp_path / "hf")
    assert config.architectures == [MODELS[name][1]]
    assert (config.image_size, config.num_frames, config.patch_size) == (32, 8, 8)
    convert.from_hf(str(tmp_path / "hf"), str(tmp_path / "back.pth"))
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert back["args"]["model"] == "tiny" and back["args"]["patch_size"] == 8
    expect = {k: v for k, v in sd.items() if name != "clip" or k.startswith("encoder.")}
    assert back["model"].keys() == expect.keys()
    for k in expect:
        assert torch.equal(back["model"][k], expect[k]), k
    # the written model, loaded by transformers, against smile's: equal to 1e-5
    kind, ssd, _ = convert.smile_state(back)
    _, size = convert.shape_of(kind, ssd, back["args"])
    grid = {"img_size": 32, "num_frames": 8}
    hf, info = convert.load_hf(getattr(transformers, MODELS[name][1]), str(tmp_path / "hf"))
    assert not info["missing_keys"] and not info["unexpected_keys"]
    diffs = convert.compare(kind, convert.smile_model(kind, size, grid, ssd), hf, grid, 8, 2)
    assert max(d for _, d in diffs) <= 1e-5, diffs


def zero_qv_biases(load):
    """A transformers release that loads the checkpoint but leaves q/v biases at zero."""
    def lossy(cls, folder):
        model, info = load(cls, folder)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith(("query.bias", "value.bias", "q_bias", "v_bias")):
                    p.zero_()
        return model, info
    return lossy


def test_to_hf_refuses_when_biases_are_lost(tmp_path, monkeypatch, capsys):
    ck, _ = checkpoint(tmp_path, "classifier")
    monkeypatch.setattr(convert, "load_hf", zero_qv_biases(convert.load_hf))
    with pytest.raises(SystemExit) as e:
        convert.to_hf(ck, str(tmp_path / "hf"))
    assert e.value.code == 2
    assert "differs from smile's model" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["classifier.pth"]          # nothing written, no temp folder


def test_from_hf_reads_old_bias_names_and_refuses_a_loader_that_drops_them(tmp_path, monkeypatch,
                                                                           capsys):
    """A folder with transformers 4's q_bias / v_bias names (the layout of the VideoMAE models on
    the Hub): read either way; when transformers does not map them (mteb PR #5094), refused."""
    from safetensors.torch import load_file, save_file
    ck, sd = checkpoint(tmp_path, "classifier")
    convert.to_hf(ck, str(tmp_path / "hf"))
    path = tmp_path / "hf" / "model.safetensors"
    old = {k.replace("attention.query.bias", "attention.q_bias")
           .replace("attention.value.bias", "attention.v_bias"): v
           for k, v in load_file(path).items()}
    assert any(k.endswith(".q_bias") for k in old)
    save_file(old, path, metadata={"format": "pt"})
    convert.from_hf(str(tmp_path / "hf"), str(tmp_path / "back.pth"))
    back = torch.load(tmp_path / "back.pth", weights_only=True)["model"]
    assert torch.equal(back["blocks.2.attn.v_bias"], sd["blocks.2.attn.v_bias"])
    cm = pytest.importorskip("transformers.conversion_mapping")
    if not hasattr(cm, "get_checkpoint_conversion_mapping"):
        pytest.skip("this transformers reads q_bias / v_bias natively")
    cm.get_checkpoint_conversion_mapping("videomae")            # builds the cache
    monkeypatch.setitem(cm._checkpoint_conversion_mapping_cache, "videomae", [])
    with pytest.raises(SystemExit):
        convert.from_hf(str(tmp_path / "hf"), str(tmp_path / "lost.pth"))
    err = capsys.readouterr().err
    assert "did not load" in err and "q/v-bias" in err
    assert not (tmp_path / "lost.pth").exists()


def test_missing_transformers_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)      # import transformers -> ImportError
    with pytest.raises(SystemExit):
        convert.to_hf("any.pth", "out")
    assert "pip install transformers" in capsys.readouterr().err


def test_command_line(tmp_path):
    ck, _ = checkpoint(tmp_path, "pixel")
    r = run(["-m", "tools.convert", "to-hf", ck, str(tmp_path / "hf")], cwd=ROOT)
    assert "verified" in r.stdout and "VideoMAEForPreTraining" in r.stdout
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "model.safetensors"]
