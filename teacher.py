"""Frozen image teacher and reconstruction targets for SMILE.

SMILE (Sec. 3.2, Eq. 2) regresses, for every masked token, the features of a frozen CLIP ViT-B/16
image encoder instead of VideoMAE's pixels (Table 4b: pixels 66.0 -> CLIP features 78.1 top-1;
DINOv2 77.8, DINO 77.6, MAE 77.6 as teachers, Sec. 4.3). This file builds those targets:

- `Teacher`: a frozen image ViT run on the first frame of each 2-frame tubelet; the last block's
  patch tokens after the final norm (CLIP: `ln_post`, without the projection `proj`: 768-d for
  ViT-B/16), class and register tokens dropped, laid out in the student's (t, h, w) token order
  and normalised per clip and per channel over all N tokens (as the reference code does).
  Two backends behind the one interface:
    open_clip: `Teacher("ViT-B-16", "openai")` (the default, SPEC 4), or a model-config JSON.
    timm:      `Teacher("timm:vit_base_patch16_224.mae", "timm")`, `timm:vit_base_patch16_224.dino`,
               `timm:vit_base_patch14_dinov2.lvd142m`, `timm:vit_base_patch16_dinov3.lvd1689m`.
  open_clip names whose image tower is a timm ViT (SigLIP, EVA-CLIP) use the timm path for tokens.
- `pixel_targets`: VideoMAE's per-tubelet, per-channel normalised pixels (1536-d), the baseline
  target of Table 4b / 4h.

Shapes: B batch, C=3 channels, T/H/W frames/height/width, t=T/2, h=H/p, w=W/p for the student's
patch p, N = t*h*w tokens. One target per student token: a teacher whose patch differs from the
student's runs at the resolution where its grid equals the student's (a patch-14 DINOv2 at 196 px
for a 224 px, patch-16 student); the frames are resized to it.

Weights (`pretrained`, train.py's --teacher-weights):
- open_clip: a tag ("openai": OpenAI's ViT-B/16, downloaded once) or a local file (OpenAI's
  TorchScript `ViT-B-16.pt`, as the reference repo uses, or an open_clip checkpoint).
- timm: the word "timm" = timm's own pretrained weights for the tag in the name (downloaded once
  from the Hugging Face hub), or a local file (a timm or the original release's state_dict, loaded
  through timm's converter, which also resamples position embeddings to the run's grid).
- None (train.py: "none"): random weights, for smoke runs and tests; the targets are meaningless.
"""

import functools
import os
import zipfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's pixel statistics
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TIMM_WEIGHTS = "timm"  # pretrained="timm": timm's own weights for the tag in the model name


def _is_torchscript(path):
    # OpenAI's released CLIP files (e.g. ViT-B-16.pt) are TorchScript archives: a zip that holds
    # constants.pkl. Plain torch.save checkpoints are zips without it (or legacy pickles).
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name.endswith("constants.pkl") for name in z.namelist())


def _load_open_clip(model_name, pretrained, quick_gelu):
    """Build an open_clip CLIP model and load its weights.

    -> (image tower, backend, (mean, std)): backend "open_clip" for open_clip's own ViT, "timm" for
    a timm ViT trunk (SigLIP, EVA-CLIP); mean/std are the pixel statistics open_clip records for it.
    """
    import open_clip  # imported here: seconds, and only when a teacher is built
    if model_name.endswith(".json"):  # a model config file, e.g. a tiny one for tests
        if not os.path.isfile(model_name):
            raise FileNotFoundError(f"teacher model config not found: {model_name}")
        open_clip.add_model_config(model_name)  # registers it under the file's stem
        model_name = Path(model_name).stem
    model_name = model_name.replace("/", "-")  # "ViT-B/16" -> "ViT-B-16", as open_clip names it

    path, qg = None, False
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {}
    if tag_cfg:  # an open_clip tag such as "openai": download once into the cache, then load it
        try:
            path = open_clip.download_pretrained(tag_cfg)
        except Exception as e:
            raise RuntimeError(
                f"could not download the '{pretrained}' weights for {model_name} "
                f"({type(e).__name__}: {e}). Without internet, pass a local file: "
                f"Teacher(pretrained='/path/to/ViT-B-16.pt') (OpenAI's release) or an open_clip "
                f"checkpoint") from e
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
    # force QuickGELU for OpenAI weights (the tag says so; TorchScript archives are OpenAI's).
    if quick_gelu is None:
        quick_gelu = qg or jit
    # torch.load(weights_only=True) refuses TorchScript archives; with weights_only=False open_clip's
    # loader calls torch.jit.load and reads the archive's state_dict. Only for archives (trusted).
    extra = {"weights_only": False} if jit else {}
    model = open_clip.create_model(model_name, pretrained=path, force_quick_gelu=quick_gelu, **extra)
    pp = open_clip.get_model_preprocess_cfg(model)  # OpenAI's statistics unless the tag says else
    stats = (tuple(pp.get("mean", CLIP_MEAN)), tuple(pp.get("std", CLIP_STD)))
    visual = model.visual  # the text tower is dropped with `model`
    if isinstance(visual, open_clip.timm_model.TimmModel):  # SigLIP, EVA-CLIP: a timm ViT inside
        return _check_timm(visual.trunk, model_name), "timm", stats
    if not isinstance(visual, open_clip.transformer.VisionTransformer):
        raise ValueError(f"teacher {model_name}: only open_clip ViT image towers are supported")
    if visual.attn_pool is not None or visual.final_ln_after_pool or visual.pool_type == "none":
        # these variants return tokens that are not "ln_post(last block)" minus CLS
        raise ValueError(f"teacher {model_name}: attentional/late-LN/no-CLS pooling is not supported")
    visual.output_tokens = True  # open_clip then returns (pooled @ proj, ln_post(x)[:, 1:])
    return visual, "open_clip", stats


def _check_timm(model, name):
    """Reject timm models whose forward_features is not "final norm(last block)" on patch tokens."""
    if not (hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")):
        raise ValueError(f"teacher {name}: only timm ViTs (patch_embed, num_prefix_tokens) work")
    if isinstance(getattr(model, "norm", None), nn.Identity):  # fc_norm: the norm after pooling
        raise ValueError(f"teacher {name}: its final norm comes after pooling (fc_norm)")
    return model


def _load_timm(name, pretrained, img_size, patch_size, model_kwargs):
    """Build a timm ViT at the resolution where its grid equals the student's; load its weights.

    img_size, patch_size: the student's frames and patch (None: the model's own resolution/patch).
    -> (model, "timm", (mean, std)) with the statistics of the model's pretrained_cfg.
    """
    import timm  # imported here: seconds, and only when a teacher is built
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} (e.g. timm:vit_base_patch16_224.dino)")
    with torch.device("meta"):  # a dry build that allocates nothing: the patch and default size
        probe = timm.create_model(name, pretrained=False, num_classes=0, **model_kwargs)
    p, default_size = probe.patch_embed.patch_size[0], probe.patch_embed.img_size[0]
    # grid = student's grid; the teacher runs at grid * its own patch (196 for DINOv2 under 224/16).
    # A non-integer student grid is floored here and reported by Teacher.check_grid.
    run_size = (img_size or default_size) // (patch_size or p) * p

    kw = dict(num_classes=0, img_size=run_size, **model_kwargs)
    if pretrained is None:
        model = timm.create_model(name, pretrained=False, **kw)  # random weights
    elif pretrained == TIMM_WEIGHTS:
        try:
            model = timm.create_model(name, pretrained=True, **kw)
        except Exception as e:
            raise RuntimeError(
                f"could not load timm's pretrained weights for {name} ({type(e).__name__}: {e}). "
                f"Without internet, pass a local file (e.g. the hub's model.safetensors)") from e
    elif os.path.isfile(pretrained):
        # timm's own loader: reads safetensors or torch files ({"state_dict"/"model": ...} too),
        # converts original releases (DINO/DINOv2/MAE) to timm's keys, resamples position
        # embeddings to run_size, then load_state_dict(strict=True).
        overlay = dict(file=pretrained)
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kw)
    else:
        raise FileNotFoundError(
            f"teacher weights file not found: {pretrained} (for a timm teacher pass "
            f"'{TIMM_WEIGHTS}' = timm's pretrained weights for the tag in the name, a local file, "
            f"or none = random weights)")
    cfg = model.pretrained_cfg
    stats = (tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)))
    return _check_timm(model, name), "timm", stats


class Teacher(nn.Module):
    """Frozen image encoder producing SMILE's per-token targets (Sec. 3.2, Eq. 2; Table 4b).

    Cost: ViT-B/16 at 224 is ~17.6 GMACs per image, so ~140 GMACs per 16-frame clip (8 frames),
    more than the student's whole training step; hence no_grad, and `dtype` for bf16 weights on GPU.

    model_name: open_clip model name ("ViT-B-16"), the path of an open_clip model config JSON, or
        "timm:<timm model name>" ("timm:vit_base_patch14_dinov2.lvd142m").
    pretrained: open_clip tag ("openai"), "timm" (timm's weights for the name's tag), a local
        weights file, or None for random weights (smoke tests only).
    input_norm: "clip" re-normalises the ImageNet-normalised input to the teacher's own mean/std
        (CLIP's for open_clip, timm's pretrained_cfg for timm; the default, the paper is silent);
        "imagenet" feeds it unchanged, as the reference code does.
    tubelet: the student's temporal tubelet; the teacher sees the first frame of each.
    quick_gelu: open_clip only. None = automatic (True for OpenAI weights); True forces QuickGELU.
    img_size, patch_size: the student's frame side and patch (None: the teacher's own). timm
        teachers are built where their grid equals the student's; open_clip's size is fixed by
        its config, so check_grid raises unless the grids already agree.
    dtype: cast the frozen weights once (torch.bfloat16 for a bf16 run; None = float32). Inputs are
        cast to the weights' dtype in features(), outputs are float32 whatever the dtype.
    model_kwargs: timm only, extra timm.create_model arguments (e.g. a small depth for tests).
    """

    def __init__(self, model_name="ViT-B-16", pretrained="openai", input_norm="clip", tubelet=2,
                 quick_gelu=None, img_size=None, patch_size=None, dtype=None, model_kwargs=None):
        super().__init__()
        if input_norm not in ("clip", "imagenet"):
            raise ValueError(f"input_norm must be 'clip' or 'imagenet', got {input_norm!r}")
        if model_name.startswith("timm:"):
            self.visual, self.backend, stats = _load_timm(
                model_name[len("timm:"):], pretrained, img_size, patch_size, model_kwargs or {})
        else:
            if model_kwargs:
                raise ValueError("model_kwargs is for timm teachers only")
            self.visual, self.backend, stats = _load_open_clip(model_name, pretrained, quick_gelu)
        if self.backend == "open_clip":
            (ih, iw), (ph, pw) = self.visual.image_size, self.visual.patch_size
            self.out_dim = self.visual.transformer.width  # 768 for ViT-B/16: tokens before proj
        else:
            embed = self.visual.patch_embed
            (ih, iw), (ph, pw) = embed.img_size, embed.patch_size
            self.out_dim = self.visual.embed_dim
        if ih != iw or ph != pw:
            raise ValueError("teacher: only square images and patches are supported")
        self.image_size, self.patch_size = ih, ph  # the resolution the teacher runs at, its patch
        self.grid = ih // ph
        self.student_patch = patch_size or ph
        self.check_grid(img_size or self.grid * self.student_patch, self.student_patch)
        self.input_norm, self.tubelet = input_norm, tubelet
        # the teacher's own input statistics; "imagenet" leaves the ImageNet-normalised input as is
        self.mean, self.std = stats if input_norm == "clip" else (IMAGENET_MEAN, IMAGENET_STD)

        # The one place the teacher is frozen: eval() (no dropout), no grads, never trained, never
        # wrapped in DDP; train() below keeps it in eval mode; features() runs under no_grad.
        self.requires_grad_(False)
        self.eval()
        if dtype is not None:  # once, here: autocast would re-cast the frozen weights every call
            self.to(dtype)
        # ImageNet-normalised input -> the teacher's statistics: one per-channel affine map in fp32,
        # ((x * s_in + m_in) - m_t) / s_t = x * scale + shift. Buffers, registered after the dtype
        # cast: they move with .to(device) once, instead of a host-device copy every step.
        im_m, im_s = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        t_m, t_s = torch.tensor(self.mean), torch.tensor(self.std)
        self.register_buffer("in_scale", (im_s / t_s).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", ((im_m - t_m) / t_s).view(1, 3, 1, 1), persistent=False)

    def train(self, mode=True):
        # a parent's .train() must not switch the frozen teacher out of eval mode
        return super().train(False)

    def check_grid(self, img_size, patch_size):
        """Raise ValueError unless a student with these frames (a side, or (H, W)) and this patch
        has the teacher's token grid, i.e. one target per student token."""
        h, w = img_size if isinstance(img_size, (tuple, list)) else (img_size, img_size)
        g, p = self.grid, patch_size
        if h % p or w % p or h // p != g or w // p != g:
            raise ValueError(
                f"teacher grid {g}x{g} (image {self.image_size}, patch {self.patch_size}) cannot "
                f"match student grid {h / p:g}x{w / p:g} (image {h}x{w}, patch {p}); the student "
                f"needs {g * p}x{g * p} frames for patch {p}")

    def _tokens(self, x):
        """(n, 3, S, S) teacher-normalised frames -> (n, grid*grid, out_dim), row-major (h, w)."""
        if self.backend == "open_clip":
            return self.visual(x)[1]  # ln_post(last block), CLS dropped, no proj
        tokens = self.visual.forward_features(x)  # last block after the final norm
        return tokens[:, self.visual.num_prefix_tokens:]  # drop the class and register tokens

    @torch.no_grad()  # not inference_mode: the loss cannot save inference tensors for backward
    def features(self, video, normalize=False):
        """(B, C, T, H, W) ImageNet-normalised clip -> (B, N, out_dim) float32 teacher tokens."""
        B, C, T, H, W = video.shape
        if T % self.tubelet:
            raise ValueError(f"teacher: T={T} frames is no multiple of the tubelet {self.tubelet}")
        self.check_grid((H, W), self.student_patch)
        # Sec. 3.2 (Eq. 2) / (ref): one teacher frame per tubelet, its first: t = T/2 per clip
        x = rearrange(video[:, :, :: self.tubelet], "b c t h w -> (b t) c h w").float()
        if (self.mean, self.std) != (IMAGENET_MEAN, IMAGENET_STD):
            x = x * self.in_scale.float() + self.in_shift.float()   # the teacher's statistics
        if H != self.image_size:  # e.g. a patch-14 teacher at 196 px under a 224 px/16 student
            # bilinear + antialias: a mild downscale without bicubic's overshoot
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        dtype = next(self.visual.parameters()).dtype  # the weights' dtype (Teacher(dtype=...))
        tokens = self._tokens(x.to(dtype))  # (B*t, h*w, D)
        f = rearrange(tokens.float(), "(b t) n d -> b (t n) d", b=B)  # student's (t, h, w) order
        if normalize:
            # (ref): per clip, per channel over all N tokens, unbiased std
            std = f.std(dim=-2, keepdim=True, unbiased=True)
            f = (f - f.mean(dim=-2, keepdim=True)) / (std + 1e-6)
        return f

    def forward(self, video):
        """(B, C, T, H, W) ImageNet-normalised clip -> (B, N, out_dim) normalised targets (Eq. 2)."""
        return self.features(video, normalize=True)


@functools.lru_cache(maxsize=None)
def channel_stats(mean, std, device):
    """Per-channel (mean, std) tensors on `device`, made once per device: a torch.tensor(list,
    device=cuda) in the step would be a blocking host-device copy every call."""
    return (torch.tensor(mean, dtype=torch.float32, device=device),
            torch.tensor(std, dtype=torch.float32, device=device))


def pixel_targets(video, tubelet=2, patch=16, mean=IMAGENET_MEAN, std=IMAGENET_STD, normalize=True):
    """VideoMAE pixel target (Table 4b): (B, C, T, H, W) -> (B, N, tubelet*patch*patch*C).

    Each token's values are ordered (tubelet, patch, patch, channel). With normalize=True every token
    is normalised per channel over its tubelet*patch*patch pixels (VideoMAE's norm_pix_loss).
    """
    with torch.no_grad():
        m, s = channel_stats(mean, std, video.device)
        x = video.float() * s.view(1, -1, 1, 1, 1) + m.view(1, -1, 1, 1, 1)  # back to [0, 1] pixels
        x = rearrange(x, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c", p0=tubelet, p1=patch, p2=patch)
        if normalize:
            x = (x - x.mean(dim=-2, keepdim=True)) / (x.std(dim=-2, keepdim=True, unbiased=True) + 1e-6)
        return rearrange(x, "b n p c -> b n (p c)")


def target_dim(kind, teacher=None, tubelet=2, patch=16):
    """Decoder output width for a target kind, the one place train.py reads it from: the teacher's
    out_dim for features (768 for the default CLIP ViT-B/16), tubelet*patch*patch*3 for pixels."""
    if kind == "clip":
        return teacher.out_dim if teacher is not None else 768
    if kind == "pixel":
        return tubelet * patch * patch * 3
    raise ValueError(f"unknown target kind {kind!r} (expected 'clip' or 'pixel')")


def build_target(target, name, weights, *, input_norm, tubelet, img_size, patch_size,
                 norm_pix=True, compile=False, device="cpu", dtype=None):
    """Eq. 2's regression targets as train.py asks for them: target "pixel" (normalised per
    tubelet when norm_pix) or "clip" (the frozen Teacher `name` with `weights`; "none" = random),
    built for the student's grid (a patch-14 teacher runs at grid * 14 px; raises if it cannot
    match). dtype: the run's amp dtype (None = fp32), the teacher's weights cast to it once.
    -> (callable video (B, C, T, H, W) -> targets (B, N, Dt), Dt)."""
    if target == "pixel":
        def fn(video):
            return pixel_targets(video, tubelet, patch_size, normalize=norm_pix)
        return fn, target_dim("pixel", tubelet=tubelet, patch=patch_size)
    t = Teacher(name, None if weights.lower() == "none" else weights, input_norm=input_norm,
                tubelet=tubelet, img_size=img_size, patch_size=patch_size, dtype=dtype).to(device)
    return (torch.compile(t) if compile else t), target_dim("clip", t)
