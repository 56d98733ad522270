"""torch.hub entries: smile's models, and the authors' released SMILE checkpoints, in one line.

    import torch
    model = torch.hub.load("<owner>/smile", "smile_vitb_k400_600ep")            # pretrained encoder
    model = torch.hub.load("<owner>/smile", "smile_vitb_k400_600ep_ssv2")       # SSv2 classifier
    model = torch.hub.load("path/to/clone", "vit_small", source="local",       # your own run
                           checkpoint="out/run/checkpoint-latest.pth")
    torch.hub.list("<owner>/smile")                                             # every entry

Every model reads clips (B, 3, 16, 224, 224), (B, C, T, H, W), RGB in [0, 1] then normalised with
ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) (data.normalize); other frame
counts and sizes work too (the position table is rebuilt for the grid). Encoders and classifiers are
model.VideoClassifier: model(video) -> (B, num_classes), or (B, D) mean-pooled features when
num_classes is 0 (the encoders' default), model.forward_tokens(video) -> (B, N, D) tokens.
Pretraining entries are model.PretrainModel: model(video, mask) -> (B, Nm, 768) predicted CLIP
features of the masked tokens (mask (B, N) bool, True = masked).

The released checkpoints (Hugging Face fmthoker/SMILE, folder SMILE_MODELS/, ViT-B, K400
pretraining) download once from its resolve/main URL with torch.hub.load_state_dict_from_url
(cached under torch.hub.get_dir()/checkpoints), weights_only=True. `url=` (any URL, file:// too)
or `checkpoint=` (a path or URL) load another file into the same model. Loading is strict: a key
that neither fits the model nor is one of the expected leftovers (the encoder's final norm, a
missing fc_norm/head on a pretrained encoder) is an error.

torch.hub's rule: only torch and the repository's own files are imported here (model.py, which
imports torch only), and nothing downloads before an entry is called with pretrained=True.
"""
import importlib.util
import os
import sys

import torch

dependencies = ["torch"]


def _own(name):
    """The repository's own module `name`, by path: a user's project may have its own `model`
    module on sys.path already, and torch.hub must not pick that one up."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    mine = sys.modules.get(name)   # already imported from this clone (its tests, the notebook)
    if mine is not None and os.path.abspath(getattr(mine, "__file__", "") or "") == path:
        return mine
    key = f"smile_hub_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


HF = "https://huggingface.co/fmthoker/SMILE/resolve/main/SMILE_MODELS/"
STAGES = {600: "first_stage_300_epochs_2nd_stage_300_epochs",
          1200: "first_stage_800_epochs_2nd_stage_400_epochs"}
RELEASED = {   # entry -> (file under SMILE_MODELS/, classes (0 = a pretrained encoder))
    "smile_vitb_k400_600ep": (f"pretrain/k400_pretraining_{STAGES[600]}.pth", 0),
    "smile_vitb_k400_1200ep": (f"pretrain/k400_pretraining_{STAGES[1200]}.pth", 0),
    "smile_vitb_k400_600ep_k400": (
        f"finetune/k400/VIT_B_600_EPOCHS/k400_finetuned_after_k400_pretraining_{STAGES[600]}.pth",
        400),
    "smile_vitb_k400_1200ep_k400": (
        f"finetune/k400/VIT_B_1200_EPOCHS/k400_finetuned_after_k400_pretraining_{STAGES[1200]}.pth",
        400),
    "smile_vitb_k400_600ep_ssv2": (
        f"finetune/ssv2/VIT_B_600_EPOCHS/ssv2_finetuned_after_k400_pretraining_{STAGES[600]}.pth",
        174),
    "smile_vitb_k400_1200ep_ssv2": (
        f"finetune/ssv2/VIT_B_1200_EPOCHS/ssv2_finetuned_after_k400_pretraining_{STAGES[1200]}.pth",
        174),
}


def _read(source):
    """A checkpoint from a URL (downloaded once, cached by torch.hub) or a local path."""
    if "://" in str(source):
        return torch.hub.load_state_dict_from_url(str(source), map_location="cpu",
                                                  weights_only=True)
    return torch.load(source, map_location="cpu", weights_only=True)


def _size(size):
    model = _own("model")
    return {k: v for k, v in model.MODEL_SIZES[size].items() if not k.startswith("decoder")}


def _classifier(size, num_classes, source=None, **kwargs):
    """VideoClassifier of MODEL_SIZES[size]; num_classes 0 = features (head is the identity)."""
    model = _own("model")
    net = model.VideoClassifier(num_classes=max(num_classes, 1), **_size(size), **kwargs)
    if num_classes == 0:
        net.head = torch.nn.Identity()
    if source is None:
        return net
    sd = model.classifier_state_dict(_read(source))
    missing, unexpected = net.load_state_dict(sd, strict=False)
    # a pretrained encoder has no fc_norm (nor head), and its final norm is VideoMAE's to drop
    bad = [k for k in missing if not k.startswith(("fc_norm.", "head."))]
    bad += [k for k in unexpected if not k.startswith("norm.")
            and not (num_classes == 0 and k.startswith("head."))]
    if bad:
        raise RuntimeError(f"{source} does not fit a ViT-{size} classifier with {num_classes} "
                           f"classes: {bad[:6]}{' ...' if len(bad) > 6 else ''}")
    if num_classes and "head.weight" not in sd:
        print(f"{source}: no classification head in the checkpoint, head initialised at random")
    return net


def _pretraining(size, out_dim, source=None, **kwargs):
    model = _own("model")
    net = model.PretrainModel(out_dim=out_dim, **model.MODEL_SIZES[size], **kwargs)
    if source is not None:
        state = _read(source)
        for key in ("model", "module"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        net.load_state_dict({k: v for k, v in sd.items() if "pos_embed" not in k}, strict=True)
    return net


def _released(entry, pretrained, url):
    return (url or HF + RELEASED[entry][0]) if pretrained else None


# ============================================================================= generic models


def vit_small(pretrained=False, checkpoint=None, num_classes=0, **kwargs):
    """ViT-S/16 video encoder (D 384, 12 blocks, 6 heads; 2x16x16 tubelets) as a classifier
    backbone: VideoClassifier, mean-pooled features (B, 384) when num_classes is 0.

    No ViT-S SMILE checkpoint is released (the authors' table: "TODO"); checkpoint= loads one of
    yours (train.py's or finetune.py's checkpoint-latest.pth, a path or URL). Input (B, 3, 16, 224,
    224), ImageNet-normalised. kwargs: img_size, num_frames, drop_path, ... (VideoClassifier).
    """
    if pretrained and checkpoint is None:
        raise ValueError("vit_small: no released ViT-S SMILE checkpoint; pass "
                         "checkpoint=PATH_OR_URL")
    return _classifier("small", num_classes, checkpoint, **kwargs)


def vit_base(pretrained=False, checkpoint=None, num_classes=0, **kwargs):
    """ViT-B/16 video encoder (D 768, 12 blocks, 12 heads) as a classifier backbone:
    VideoClassifier, mean-pooled features (B, 768) when num_classes is 0.

    pretrained=True: the released 600-epoch SMILE encoder (smile_vitb_k400_600ep: K400 83.1 top-1
    after finetuning, 56.2 linear probe in the paper). checkpoint= loads any other (path or URL).
    Input (B, 3, 16, 224, 224), ImageNet-normalised.
    """
    source = checkpoint or _released("smile_vitb_k400_600ep", pretrained, None)
    return _classifier("base", num_classes, source, **kwargs)


def vit_small_pretrain(pretrained=False, checkpoint=None, out_dim=768, **kwargs):
    """ViT-S SMILE pretraining model (encoder + 4-block decoder of width 192): PretrainModel,
    model(video, mask) -> (B, Nm, out_dim), 768 = CLIP ViT-B/16 features (Eq. 2). checkpoint= a
    train.py checkpoint (path or URL) of the same shape (out_dim=1536 for --target pixel).
    Input (B, 3, 16, 224, 224), ImageNet-normalised; mask (B, 1568) bool, True = masked."""
    if pretrained and checkpoint is None:
        raise ValueError("vit_small_pretrain: no released ViT-S SMILE checkpoint; pass "
                         "checkpoint=PATH_OR_URL")
    return _pretraining("small", out_dim, checkpoint, **kwargs)


def vit_base_pretrain(pretrained=False, checkpoint=None, out_dim=768, **kwargs):
    """ViT-B SMILE pretraining model (encoder + 4-block decoder of width 384): PretrainModel,
    model(video, mask) -> (B, Nm, out_dim). pretrained=True loads the released 600-epoch
    checkpoint with its decoder, strictly (the decoder layout of the released file is assumed to
    be VideoMAE's with a 768-d CLIP head, SPEC 1; it was not checked against the file here: no
    network). Input (B, 3, 16, 224, 224), ImageNet-normalised; mask (B, 1568) bool."""
    source = checkpoint or _released("smile_vitb_k400_600ep", pretrained, None)
    return _pretraining("base", out_dim, source, **kwargs)


# ============================================================================= released checkpoints


def smile_vitb_k400_600ep(pretrained=True, url=None, num_classes=0, **kwargs):
    """SMILE ViT-B/16, pretrained on K400 for 600 epochs (300 with synthetic motion + 300 without):
    SMILE_MODELS/pretrain/k400_pretraining_first_stage_300_epochs_2nd_stage_300_epochs.pth. Paper:
    K400 83.1 top-1 finetuned, 56.2 linear probe. The encoder as a backbone (VideoClassifier; (B,
    768) features when num_classes is 0, else a fresh head). Input (B, 3, 16, 224, 224),
    ImageNet-normalised."""
    return _classifier("base", num_classes, _released("smile_vitb_k400_600ep", pretrained, url),
                       **kwargs)


def smile_vitb_k400_1200ep(pretrained=True, url=None, num_classes=0, **kwargs):
    """SMILE ViT-B/16, pretrained on K400 for 1200 epochs (800 with synthetic motion + 400
    without): SMILE_MODELS/pretrain/k400_pretraining_first_stage_800_epochs_2nd_stage_400_
    epochs.pth. Paper: K400 83.4 top-1 finetuned. The encoder as a backbone (VideoClassifier,
    (B, 768) features when num_classes is 0). Input (B, 3, 16, 224, 224), ImageNet-normalised."""
    return _classifier("base", num_classes, _released("smile_vitb_k400_1200ep", pretrained, url),
                       **kwargs)


def smile_vitb_k400_600ep_k400(pretrained=True, url=None, **kwargs):
    """SMILE ViT-B/16 (600 pretraining epochs) finetuned on K400: SMILE_MODELS/finetune/k400/
    VIT_B_600_EPOCHS/k400_finetuned_after_k400_pretraining_first_stage_300_epochs_2nd_stage_300_
    epochs.pth. Paper: 83.1 top-1 (5x3 views). A 400-class VideoClassifier. Input (B, 3, 16, 224,
    224), ImageNet-normalised, 16 frames at stride 4."""
    return _classifier("base", 400, _released("smile_vitb_k400_600ep_k400", pretrained, url),
                       **kwargs)


def smile_vitb_k400_1200ep_k400(pretrained=True, url=None, **kwargs):
    """SMILE ViT-B/16 (1200 pretraining epochs) finetuned on K400: SMILE_MODELS/finetune/k400/
    VIT_B_1200_EPOCHS/k400_finetuned_after_k400_pretraining_first_stage_800_epochs_2nd_stage_400_
    epochs.pth. Paper: 83.4 top-1. A 400-class VideoClassifier. Input (B, 3, 16, 224, 224),
    ImageNet-normalised, 16 frames at stride 4."""
    return _classifier("base", 400, _released("smile_vitb_k400_1200ep_k400", pretrained, url),
                       **kwargs)


def smile_vitb_k400_600ep_ssv2(pretrained=True, url=None, **kwargs):
    """SMILE ViT-B/16 (600 pretraining epochs on K400) finetuned on SSv2: SMILE_MODELS/finetune/
    ssv2/VIT_B_600_EPOCHS/ssv2_finetuned_after_k400_pretraining_first_stage_300_epochs_2nd_stage_
    300_epochs.pth. Paper: 72.1 top-1 (2x3 views). A 174-class VideoClassifier. Input (B, 3, 16,
    224, 224), ImageNet-normalised, 16 frames by segment sampling."""
    return _classifier("base", 174, _released("smile_vitb_k400_600ep_ssv2", pretrained, url),
                       **kwargs)


def smile_vitb_k400_1200ep_ssv2(pretrained=True, url=None, **kwargs):
    """SMILE ViT-B/16 (1200 pretraining epochs on K400) finetuned on SSv2: SMILE_MODELS/finetune/
    ssv2/VIT_B_1200_EPOCHS/ssv2_finetuned_after_k400_pretraining_first_stage_800_epochs_2nd_stage_
    400_epochs.pth. Paper: 72.4 top-1. A 174-class VideoClassifier. Input (B, 3, 16, 224, 224),
    ImageNet-normalised, 16 frames by segment sampling."""
    return _classifier("base", 174, _released("smile_vitb_k400_1200ep_ssv2", pretrained, url),
                       **kwargs)
