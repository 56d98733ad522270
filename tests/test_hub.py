"""hubconf.py: torch.hub entries build with pretrained=False, load checkpoints through file:// URLs
(cached by torch.hub), refuse a checkpoint that does not fit; nothing downloads, torch only."""
import subprocess
import sys

import pytest
import torch

import hubconf
import model
from conftest import ROOT
from model import MODEL_SIZES, PretrainModel, VideoClassifier, load_encoder

TINY = dict(img_size=32, num_frames=4)          # a small grid for every entry (patch 16, tubelet 2)


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """torch.hub's cache in a temporary folder; ViT-B shrunk to the tiny size, to stay fast."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setitem(model.MODEL_SIZES, "base", MODEL_SIZES["tiny"])
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def entries():
    return sorted(n for n in dir(hubconf)
                  if not n.startswith("_") and callable(getattr(hubconf, n)))


def test_hubconf_imports_torch_and_model_only_and_downloads_nothing():
    code = ("import sys, hubconf; mods = set(sys.modules); "
            "print(sorted(m for m in ('data', 'runtime', 'motion', 'teacher', "
            "'open_clip', 'timm', 'transformers', 'av', 'scipy', 'einops', 'PIL') if m in mods))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
    assert hubconf.dependencies == ["torch"]
    assert set(hubconf.RELEASED) < set(entries())
    assert {"vit_small", "vit_base", "vit_small_pretrain", "vit_base_pretrain"} < set(entries())


def test_every_entry_builds_without_weights(hub_dir):
    video = torch.randn(2, 3, 4, 32, 32)
    for name in entries():
        m = getattr(hubconf, name)(pretrained=False, **TINY).eval()
        assert m.__doc__ and "ImageNet" in getattr(hubconf, name).__doc__, name
        if isinstance(m, PretrainModel):
            mask = torch.zeros(2, 8, dtype=torch.bool)
            mask[:, :6] = True
            assert m(video, mask).shape == (2, 6, 768), name
        else:
            classes = hubconf.RELEASED.get(name, (None, 0))[1]
            assert m(video).shape == (2, classes or m.fc_norm.normalized_shape[0]), name
    assert not hub_dir.exists()                                  # nothing downloaded


def test_vit_base_has_the_paper_shape():
    m = hubconf.vit_base(pretrained=False)
    assert len(m.blocks) == 12 and m.fc_norm.normalized_shape == (768,)
    assert m.patch_embed.proj.weight.shape == (768, 3, 2, 16, 16)


def test_released_entries_docstrings_name_their_file_and_number():
    numbers = {"600ep": "83.1", "1200ep": "83.4", "600ep_ssv2": "72.1", "1200ep_ssv2": "72.4"}
    for name, (path, _) in hubconf.RELEASED.items():
        doc = " ".join(getattr(hubconf, name).__doc__.split()).replace("_ ", "_")
        assert path.split("/")[-1] in doc.replace(" ", ""), name
        key = name.split("k400_", 1)[1].replace("_k400", "")
        assert numbers[key] in doc, name


def test_pretrained_true_fetches_the_hugging_face_url(hub_dir, monkeypatch):
    seen = []

    def fake(url, **kw):
        seen.append((url, kw.get("weights_only")))
        raise ConnectionError("no network in tests")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake)
    with pytest.raises(ConnectionError):
        hubconf.smile_vitb_k400_1200ep_ssv2()
    assert seen == [(hubconf.HF + hubconf.RELEASED["smile_vitb_k400_1200ep_ssv2"][0], True)]
    assert seen[0][0].startswith("https://huggingface.co/fmthoker/SMILE/resolve/main/SMILE_MODELS/")


def test_released_pretraining_checkpoint_through_torch_hub_load(tmp_path, hub_dir):
    """A VideoMAE-layout pretraining checkpoint ({"model": ...}, no args) served from a file://
    URL: the encoder entry gives the same features as load_encoder; it is cached by torch.hub."""
    torch.manual_seed(0)
    net = PretrainModel(**TINY, **MODEL_SIZES["tiny"], out_dim=768)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ck = tmp_path / "k400_pretraining.pth"
    torch.save({"model": net.state_dict()}, ck)
    got = torch.hub.load(str(ROOT), "smile_vitb_k400_600ep", source="local", url=ck.as_uri(),
                         **TINY).eval()
    ref = VideoClassifier(**TINY, **{k: v for k, v in MODEL_SIZES["tiny"].items()
                                     if not k.startswith("decoder")}, num_classes=1).eval()
    load_encoder(ref, str(ck), verbose=False)
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(got(video), ref.forward_features(video), atol=0, rtol=0)
    assert (hub_dir / "checkpoints" / ck.name).is_file()
    # the pretraining entry takes the same file, decoder included
    full = hubconf.vit_base_pretrain(checkpoint=ck.as_uri(), **TINY)
    assert torch.equal(full.decoder.head.weight, net.decoder.head.weight)


def test_released_classifier_and_a_checkpoint_that_does_not_fit(tmp_path, hub_dir):
    torch.manual_seed(0)
    kw = {k: v for k, v in MODEL_SIZES["tiny"].items() if not k.startswith("decoder")}
    clf = VideoClassifier(**TINY, **kw, num_classes=174)
    ck = tmp_path / "ssv2_finetuned.pth"
    torch.save({"module": clf.state_dict()}, ck)                 # AdaptFormer #14: "module"
    got = hubconf.smile_vitb_k400_600ep_ssv2(url=ck.as_uri(), **TINY).eval()
    video = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(got(video), clf.eval()(video), atol=0, rtol=0)
    with pytest.raises(RuntimeError):                            # 174 classes into K400's 400
        hubconf.smile_vitb_k400_600ep_k400(url=ck.as_uri(), **TINY)
    sd = {k: v for k, v in clf.state_dict().items() if not k.startswith("blocks.3.")}
    torch.save({"model": sd}, tmp_path / "partial.pth")
    with pytest.raises(RuntimeError, match="blocks.3"):          # a missing block is an error
        hubconf.vit_base(checkpoint=str(tmp_path / "partial.pth"), **TINY)
