"""Frozen image teacher and reconstruction targets for SMILE.

SMILE (Sec. 3.2, Eq. 2) regresses, for every masked token, the features of a frozen CLIP ViT-B/16
image encoder instead of VideoMAE's pixels (Table 4b: pixels 66.0 -> CLIP features 78.1 top-1).
This file builds those targets:

- `Teacher`: CLIP's visual tower (open_clip, OpenAI weights by default) run on the first frame of each
  2-frame tubelet; the last block's patch tokens after `ln_post`, without the final projection `proj`
  (768-d for ViT-B/16), laid out in the student's (t, h, w) token order and normalised per clip and
  per channel over all N tokens (as the reference code does).
- `pixel_targets`: VideoMAE's per-tubelet, per-channel normalised pixels (1536-d), the baseline
  target of Table 4b / 4h.

Shapes: B batch, C=3 channels, T/H/W frames/height/width, t=T/2, h=H/16, w=W/16, N = t*h*w tokens.

Weights: `Teacher()` downloads OpenAI's ViT-B/16 once through open_clip (tag "openai"). Offline, pass
the file: `Teacher(pretrained="/path/to/ViT-B-16.pt")` (OpenAI's TorchScript release, as the reference
repo uses) or an open_clip checkpoint (state_dict or {"state_dict": ...}).
"""

import os
import zipfile
from pathlib import Path

import torch
import torch.nn as nn
from einops import rearrange

import open_clip

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's pixel statistics
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _is_torchscript(path):
    # OpenAI's released CLIP files (e.g. ViT-B-16.pt) are TorchScript archives: a zip that holds
    # constants.pkl. Plain torch.save checkpoints are zips without it (or legacy pickles).
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name.endswith("constants.pkl") for name in z.namelist())


def _load_visual(model_name, pretrained, quick_gelu):
    """Build an open_clip CLIP model, load its weights, and return only its visual tower."""
    if model_name.endswith(".json"):  # a model config file, e.g. a tiny one for tests
        if not os.path.isfile(model_name):
            raise FileNotFoundError(f"teacher model config not found: {model_name}")
        open_clip.add_model_config(model_name)  # registers it under the file's stem
        model_name = Path(model_name).stem
    model_name = model_name.replace("/", "-")  # "ViT-B/16" -> "ViT-B-16", as open_clip names it

    path, qg = None, False
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {}
    if tag_cfg:  # an open_clip tag such as "openai": download once into the cache, then load the file
        try:
            path = open_clip.download_pretrained(tag_cfg)
        except Exception as e:
            raise RuntimeError(
                f"could not download the '{pretrained}' weights for {model_name} ({type(e).__name__}: {e}). "
                f"Without internet, pass a local file: Teacher(pretrained='/path/to/ViT-B-16.pt') "
                f"(OpenAI's release) or an open_clip checkpoint") from e
        qg = tag_cfg.get("quick_gelu", False)
    elif pretrained:
        if not os.path.isfile(pretrained):
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            raise FileNotFoundError(
                f"teacher weights file not found: {pretrained} (and not an open_clip tag for "
                f"{model_name}; known tags: {tags})")
        path = pretrained
    # else: pretrained=None -> random weights (smoke tests only; the targets are meaningless)

    jit = path is not None and _is_torchscript(path)
    # OpenAI's CLIP was trained with QuickGELU, and open_clip's "ViT-B-16" config uses nn.GELU:
    # force QuickGELU for OpenAI weights (the tag says so; TorchScript archives are OpenAI's format).
    if quick_gelu is None:
        quick_gelu = qg or jit
    # torch.load(weights_only=True) refuses TorchScript archives; with weights_only=False open_clip's
    # loader calls torch.jit.load and reads the archive's state_dict. Only for archives (trusted files).
    extra = {"weights_only": False} if jit else {}
    model = open_clip.create_model(model_name, pretrained=path, force_quick_gelu=quick_gelu, **extra)
    visual = model.visual
    if not isinstance(visual, open_clip.transformer.VisionTransformer):
        raise ValueError(f"teacher {model_name}: only open_clip ViT image towers are supported")
    if visual.attn_pool is not None or visual.final_ln_after_pool or visual.pool_type == "none":
        # these variants return tokens that are not "ln_post(last block)" minus CLS
        raise ValueError(f"teacher {model_name}: attentional/late-LN/no-CLS pooling is not supported")
    return visual  # the text tower is dropped with `model`


class Teacher(nn.Module):
    """Frozen CLIP image encoder producing SMILE's per-token targets (Sec. 3.2, Eq. 2).

    Cost: ViT-B/16 at 224 is ~17.6 GMACs per image, so ~140 GMACs per 16-frame clip (8 frames),
    more than the student's whole training step; hence no_grad + bf16 autocast on GPU.

    model_name: open_clip model name ("ViT-B-16") or the path of an open_clip model config JSON.
    pretrained: open_clip tag ("openai", downloaded once), a local weights file, or None for random
        weights (smoke tests only).
    input_norm: "clip" re-normalises the ImageNet-normalised input to CLIP's mean/std (default; the
        paper is silent); "imagenet" feeds it unchanged, as the reference code does.
    tubelet: the student's temporal tubelet; the teacher sees the first frame of each.
    quick_gelu: None = automatic (True for OpenAI weights); True forces QuickGELU.
    """

    def __init__(self, model_name="ViT-B-16", pretrained="openai", input_norm="clip", tubelet=2,
                 quick_gelu=None):
        super().__init__()
        if input_norm not in ("clip", "imagenet"):
            raise ValueError(f"input_norm must be 'clip' or 'imagenet', got {input_norm!r}")
        self.visual = _load_visual(model_name, pretrained, quick_gelu)
        self.input_norm, self.tubelet = input_norm, tubelet
        ih, iw = self.visual.image_size
        ph, pw = self.visual.patch_size
        if ih != iw or ph != pw:
            raise ValueError("teacher: only square images and patches are supported")
        self.image_size, self.patch_size = ih, ph
        self.out_dim = self.visual.transformer.width  # 768 for ViT-B/16: tokens are taken before proj
        self.amp = True  # bf16 autocast on CUDA; set False for fp32 targets

        # ImageNet-normalised input -> CLIP-normalised input is one per-channel affine map:
        # ((x * s_in + m_in) - m_clip) / s_clip = x * scale + shift
        im_m, im_s = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        cl_m, cl_s = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
        self.register_buffer("scale", (im_s / cl_s).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((im_m - cl_m) / cl_s).view(1, 3, 1, 1), persistent=False)

        # The one place the teacher is frozen: CLIP ViT-B/16 (OpenAI), last block after ln_post,
        # no proj, targets normalised per clip/channel. eval() (no dropout), no grads, never trained,
        # never wrapped in DDP; train() below keeps it in eval mode; features() runs under no_grad.
        self.visual.output_tokens = True  # open_clip then returns (pooled @ proj, ln_post(x)[:, 1:])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        # a parent's .train() must not switch the frozen teacher out of eval mode
        return super().train(False)

    def check_grid(self, img_size, patch_size):
        """Raise ValueError unless the teacher's token grid equals the student's.

        We do not interpolate CLIP's position embeddings, so the frames must be exactly the teacher's
        image_size and the student's patch must equal the teacher's (16 for ViT-B/16 at 224).
        """
        if img_size != self.image_size or patch_size != self.patch_size:
            g = self.image_size // self.patch_size
            raise ValueError(
                f"teacher grid {g}x{g} (image {self.image_size}, patch {self.patch_size}) cannot match "
                f"student grid {img_size / patch_size:g}x{img_size / patch_size:g} (image {img_size}, "
                f"patch {patch_size}); use img_size={self.image_size} and patch={self.patch_size}")

    @torch.no_grad()  # no_grad, not inference_mode: inference tensors cannot be saved for backward by the loss
    def features(self, video, normalize=False):
        """(B, C, T, H, W) ImageNet-normalised clip -> (B, N, out_dim) float32 teacher tokens."""
        B, C, T, H, W = video.shape
        if T % self.tubelet:
            raise ValueError(f"teacher: T={T} frames is not a multiple of the tubelet {self.tubelet}")
        if H != self.image_size or W != self.image_size:  # no position-embedding interpolation
            g, p = self.image_size // self.patch_size, self.patch_size
            raise ValueError(
                f"teacher grid {g}x{g} ({self.image_size}x{self.image_size} frames, patch {p}) cannot match "
                f"student grid {H / p:g}x{W / p:g} ({H}x{W} frames); frames must be "
                f"{self.image_size}x{self.image_size}")
        # Sec. 3.2 (Eq. 2) / (ref): one teacher frame per tubelet, its first frame -> t = T/2 frames per clip
        x = rearrange(video[:, :, :: self.tubelet], "b c t h w -> (b t) c h w")
        if self.input_norm == "clip":  # default: CLIP sees its own pixel statistics
            x = x * self.scale + self.shift
        # else "imagenet": (ref) feeds the ImageNet-normalised frames to CLIP unchanged
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp and x.is_cuda):
            _, tokens = self.visual(x)  # (B*t, h*w, D): ln_post(last block), CLS dropped, no proj
        f = rearrange(tokens.float(), "(b t) n d -> b (t n) d", b=B)  # student's (t, h, w) order
        if normalize:
            # (ref): per clip, per channel over all N tokens, unbiased std
            f = (f - f.mean(dim=-2, keepdim=True)) / (f.std(dim=-2, keepdim=True, unbiased=True) + 1e-6)
        return f

    def forward(self, video):
        """(B, C, T, H, W) ImageNet-normalised clip -> (B, N, out_dim) normalised targets (Eq. 2)."""
        return self.features(video, normalize=True)


def pixel_targets(video, tubelet=2, patch=16, mean=IMAGENET_MEAN, std=IMAGENET_STD, normalize=True):
    """VideoMAE pixel target (Table 4b): (B, C, T, H, W) -> (B, N, tubelet*patch*patch*C).

    Each token's values are ordered (tubelet, patch, patch, channel). With normalize=True every token
    is normalised per channel over its tubelet*patch*patch pixels (VideoMAE's norm_pix_loss).
    """
    with torch.no_grad():
        m = torch.tensor(mean, device=video.device).view(1, -1, 1, 1, 1)
        s = torch.tensor(std, device=video.device).view(1, -1, 1, 1, 1)
        x = video.float() * s + m  # back to [0, 1] pixels
        x = rearrange(x, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c", p0=tubelet, p1=patch, p2=patch)
        if normalize:
            x = (x - x.mean(dim=-2, keepdim=True)) / (x.std(dim=-2, keepdim=True, unbiased=True) + 1e-6)
        return rearrange(x, "b n p c -> b n (p c)")


def target_dim(kind, teacher=None, tubelet=2, patch=16):
    """Decoder output width for a target kind: 768 for CLIP ViT-B/16 features, 1536 for 2x16x16 pixels."""
    if kind == "clip":
        return teacher.out_dim if teacher is not None else 768
    if kind == "pixel":
        return tubelet * patch * patch * 3
    raise ValueError(f"unknown target kind {kind!r} (expected 'clip' or 'pixel')")
