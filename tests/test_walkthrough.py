"""docs/walkthrough.ipynb: it executes top to bottom (nbclient, a fresh kernel, 3 training steps
and a tiny checkpoint for the last step), and the copy in the repository carries its outputs."""
import base64

import nbformat
import torch
from nbclient import NotebookClient

from conftest import ROOT
from model import MODEL_SIZES, PretrainModel

NOTEBOOK = ROOT / "docs" / "walkthrough.ipynb"


def images(cell):
    return [o["data"]["image/png"] for o in cell.get("outputs", [])
            if "image/png" in o.get("data", {})]


def check(nb):
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 11
    for c in code:
        assert c.outputs, c.source[:80]
        assert not [o for o in c.outputs if o.output_type == "error"], c.source[:80]
        assert not [o for o in c.outputs if o.get("name") == "stderr"], c.source[:80]
    assert sum(len(images(c)) for c in code) >= 12
    for png in images(code[-1]):                             # the checkpoint's pictures were drawn
        assert base64.b64decode(png)[:4] == b"\x89PNG"
    return code


def test_saved_outputs_read_without_running():
    code = check(nbformat.read(NOTEBOOK, as_version=4))
    assert len(images(code[-1])) == 4                        # Figure 4 + the PCA pictures


def test_executes_top_to_bottom(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = PretrainModel(img_size=32, patch_size=8, num_frames=8, tubelet_size=2, out_dim=384,
                        **MODEL_SIZES["tiny"])
    args = dict(model="tiny", img_size=32, patch_size=8, num_frames=8, tubelet=2, mask_ratio=0.8,
                target="pixel", teacher="ViT-B-16")
    torch.save({"model": net.state_dict(), "args": args}, tmp_path / "ck.pth")
    monkeypatch.setenv("SMILE_CHECKPOINT", str(tmp_path / "ck.pth"))
    monkeypatch.setenv("SMILE_STEPS", "3")
    for name in ("SMILE_VIDEO", "SMILE_OBJECTS", "SMILE_TEACHER_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "docs")}}).execute()
    code = check(nb)
    assert "after 3 steps" in "".join(o.get("text", "") for o in code[-2].outputs)
    assert len(images(code[-1])) == 4
