"""smile checkpoints <-> the Hugging Face transformers VideoMAE format, verified both ways.

    python -m tools.convert to-hf CK OUT_DIR      # config.json + model.safetensors
    python -m tools.convert from-hf DIR CK        # a smile checkpoint, {"model": ..., "args": ...}

What a checkpoint becomes (smile's layout is VideoMAE's, SPEC 1; transformers' VideoMAE classes):
    train.py checkpoint (encoder + decoder)  -> VideoMAEForPreTraining when the decoder predicts
        pixels (its head is fixed at 3 x tubelet x patch^2 outputs: --target pixel); with CLIP
        targets (768-d) or --encoder-only, the encoder alone -> VideoMAEModel (final LayerNorm kept,
        use_mean_pooling false)
    finetune.py checkpoint (classifier)      -> VideoMAEForVideoClassification (mean pooling,
        fc_norm)
    an encoder alone                         -> VideoMAEModel
from-hf maps each back (VideoMAEModel -> the encoder keys probe.py and finetune.py load).

Weight names. smile's attention has a bias-free qkv Linear and separate q_bias / v_bias (k has no
bias); transformers splits qkv into query / key / value and keeps the two biases either as
attention.attention.q_bias / v_bias (transformers 4) or as query.bias / value.bias (transformers 5,
which renames the old names when it loads; some 5.x releases loaded them as zeros, silently: mteb
PR #5094). to-hf writes the layout of the transformers installed; from-hf reads either.

Verified, not trusted: to-hf loads what it wrote with transformers and from-hf loads the folder
with transformers, runs both models on the same random clip (and mask) and refuses, writing
nothing, when any output differs by more than --atol (1e-4): lost q/v biases, another LayerNorm eps,
a wrong grid all show up there, whatever the transformers version. Two known differences stay under
it: transformers builds the decoder's last norm and the classifier's fc_norm with LayerNorm's
default eps 1e-5 where VideoMAE's code (and smile) use 1e-6 (~1e-6 on outputs); and transformers
takes clips as (B, T, C, H, W) where smile takes (B, C, T, H, W). transformers is optional for
smile, needed here: pip install transformers.
"""
import argparse
import json
import os
import shutil
import sys

import torch

from model import MODEL_SIZES, Encoder, PretrainModel, VideoClassifier
from runtime import Parser, fail, load_checkpoint, positive_float, positive_int, save_checkpoint

WB = ("weight", "bias")
HF_CLASS = {"pretrain": "VideoMAEForPreTraining", "classifier": "VideoMAEForVideoClassification",
            "encoder": "VideoMAEModel"}


def need_transformers():
    try:
        import transformers
    except ImportError:
        fail("the Hugging Face converter needs transformers: pip install transformers")
    transformers.utils.logging.disable_progress_bar()
    return transformers


# ============================================================================= the key table


def block_rows(s, h, layout):
    """One transformer block: (smile key, hf keys) rows; qkv.weight is one smile tensor, three hf
    ones (query, key, value rows of it). layout "v4": q_bias / v_bias; "v5": query.bias /
    value.bias."""
    rows = [(f"{s}{a}.{p}", (f"{h}{b}.{p}",)) for a, b in
            (("norm1", "layernorm_before"), ("attn.proj", "attention.output.dense"),
             ("norm2", "layernorm_after"), ("mlp.fc1", "intermediate.dense"),
             ("mlp.fc2", "output.dense")) for p in WB]
    rows.append((f"{s}attn.qkv.weight",
                 tuple(f"{h}attention.attention.{n}.weight" for n in ("query", "key", "value"))))
    q, v = ("q_bias", "v_bias") if layout == "v4" else ("query.bias", "value.bias")
    rows += [(f"{s}attn.q_bias", (f"{h}attention.attention.{q}",)),
             (f"{s}attn.v_bias", (f"{h}attention.attention.{v}",))]
    return rows


def key_table(kind, depth, decoder_depth=0, layout="v5", norm=True):
    """[(smile key, (hf key, ...))] for a whole model. kind: pretrain (smile PretrainModel <->
    VideoMAEForPreTraining), classifier (VideoClassifier <-> VideoMAEForVideoClassification),
    encoder (PretrainModel's encoder.* <-> VideoMAEModel; norm: whether it ends in a LayerNorm)."""
    s, h = {"pretrain": ("encoder.", "videomae."), "classifier": ("", "videomae."),
            "encoder": ("encoder.", "")}[kind]
    rows = [(f"{s}patch_embed.proj.{p}", (f"{h}embeddings.patch_embeddings.projection.{p}",))
            for p in WB]
    for i in range(depth):
        rows += block_rows(f"{s}blocks.{i}.", f"{h}encoder.layer.{i}.", layout)
    if kind == "classifier":
        rows += [(f"fc_norm.{p}", (f"fc_norm.{p}",)) for p in WB]
        rows += [(f"head.{p}", (f"classifier.{p}",)) for p in WB]
    elif norm:
        rows += [(f"{s}norm.{p}", (f"{h}layernorm.{p}",)) for p in WB]
    if kind == "pretrain":
        rows += [("encoder_to_decoder.weight", ("encoder_to_decoder.weight",)),
                 ("mask_token", ("mask_token",))]
        for i in range(decoder_depth):
            rows += block_rows(f"decoder.blocks.{i}.", f"decoder.decoder_layers.{i}.", layout)
        rows += [(f"decoder.{m}.{p}", (f"decoder.{m}.{p}",)) for m in ("norm", "head") for p in WB]
    return rows


def to_hf_state(sd, rows):
    out = {}
    for s, hs in rows:
        for h, t in zip(hs, sd[s].chunk(len(hs)) if len(hs) > 1 else (sd[s],)):
            out[h] = t.clone()
    return out


def from_hf_state(hf, rows):
    """hf: a transformers state dict (either layout) -> smile's; q/v biases absent from the file
    (a config with qv_bias false) are zeros."""
    out = {}
    for s, hs in rows:
        if s.endswith(("q_bias", "v_bias")) and hs[0] not in hf:
            value = hs[0].split("attention.attention.")[0] + "attention.attention.value.weight"
            out[s] = torch.zeros(hf[value].shape[0])
        else:
            out[s] = torch.cat([hf[h] for h in hs]) if len(hs) > 1 else hf[hs[0]]
    return out


# ============================================================================= smile side


def smile_state(state):
    """A smile / VideoMAE checkpoint -> (kind, state dict in the key_table's smile names, args)."""
    args = (state.get("args") or {}) if isinstance(state, dict) else {}
    for key in ("model", "module", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    sd = {}
    for k, v in state.items():
        k = k[len("module."):] if k.startswith("module.") else k
        k = "encoder." + k[len("backbone."):] if k.startswith("backbone.") else k
        if "pos_embed" not in k:          # a fixed sinusoid table, rebuilt for the grid
            sd[k] = v
    if "patch_embed.proj.weight" in sd:   # a classifier, or an encoder saved without a prefix
        if "head.weight" in sd:
            return "classifier", sd, args
        sd = {"encoder." + k: v for k, v in sd.items() if not k.startswith("fc_norm.")}
    if "encoder.patch_embed.proj.weight" not in sd:
        fail("no VideoMAE-layout encoder in this checkpoint (patch_embed.proj.weight)")
    kind = "pretrain" if "decoder.head.weight" in sd else "encoder"
    return kind, sd, args


def shape_of(kind, sd, args):
    """Model size from the weights (heads from the checkpoint's args or MODEL_SIZES)."""
    p = "" if kind == "classifier" else "encoder."
    w = sd[f"{p}patch_embed.proj.weight"]                       # (D, 3, kt, kh, kw)
    depth = len({k.split(".")[1 if p == "" else 2] for k in sd if k.startswith(f"{p}blocks.")})
    match = [n for n, m in MODEL_SIZES.items()
             if (m["embed_dim"], m["depth"]) == (w.shape[0], depth)]
    name = args.get("model") if args.get("model") in match else (match[0] if match else None)
    if name is None:
        fail(f"a {w.shape[0]}-wide, {depth}-block encoder is none of smile's sizes "
             f"{sorted(MODEL_SIZES)}")
    size = dict(MODEL_SIZES[name])
    if kind == "pretrain":
        size["decoder_embed_dim"] = sd["encoder_to_decoder.weight"].shape[0]
        size["decoder_depth"] = len({k.split(".")[2] for k in sd
                                     if k.startswith("decoder.blocks.")})
    return name, dict(size, patch_size=w.shape[3], tubelet_size=w.shape[2])


def smile_model(kind, size, grid, sd):
    """The smile module for a kind, weights loaded strictly (eval mode)."""
    geo = dict(img_size=grid["img_size"], num_frames=grid["num_frames"],
               patch_size=size["patch_size"], tubelet_size=size["tubelet_size"])
    enc = {k: size[k] for k in ("embed_dim", "depth", "num_heads")}
    if kind == "pretrain":
        dec = {k: size[k] for k in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")}
        m = PretrainModel(**geo, **enc, **dec, out_dim=sd["decoder.head.weight"].shape[0])
    elif kind == "classifier":
        m = VideoClassifier(**geo, **enc, num_classes=sd["head.weight"].shape[0])
    else:
        m = Encoder(**geo, **enc, final_norm="encoder.norm.weight" in sd)
        sd = {k[len("encoder."):]: v for k, v in sd.items()}
    m.load_state_dict(sd, strict=True)
    return m.eval()


# ============================================================================= verification


@torch.no_grad()
def compare(kind, smile, hf, grid, patch, tubelet, seed=0):
    """Run both models on one random clip (and mask) -> [(what, max abs difference)]."""
    g = torch.Generator().manual_seed(seed)
    T, S = grid["num_frames"], grid["img_size"]
    video = torch.randn(2, 3, T, S, S, generator=g)                    # smile: (B, C, T, H, W)
    pixels = video.permute(0, 2, 1, 3, 4)                         # transformers: (B, T, C, H, W)
    hf = hf.eval()
    out = []
    if kind == "pretrain":
        n = (T // tubelet) * (S // patch) ** 2
        mask = torch.rand(2, n, generator=g).argsort(1) < n // 2       # half masked, same count
        out.append(("encoder tokens", smile.encoder(video), hf.videomae(pixels).last_hidden_state))
        out.append(("decoder predictions", smile(video, mask),
                    hf(pixels, bool_masked_pos=mask).logits))
    elif kind == "classifier":
        out.append(("encoder tokens", smile.forward_tokens(video),
                    hf.videomae(pixels).last_hidden_state))
        out.append(("logits", smile(video), hf(pixels).logits))
    else:
        out.append(("encoder tokens", smile(video), hf(pixels).last_hidden_state))
    return [(what, (a.float() - b.float()).abs().max().item()) for what, a, b in out]


def load_hf(cls, folder):
    """transformers' own loading of a folder -> (model, loading info); the one place it is called,
    so that the tests can stand in a transformers release that loses the q/v biases."""
    return cls.from_pretrained(folder, output_loading_info=True)


def verify(kind, smile, folder, cls, grid, size, atol):
    hf, info = load_hf(cls, folder)
    diffs = compare(kind, smile, hf, grid, size["patch_size"], size["tubelet_size"])
    worst = max(d for _, d in diffs)
    report = ", ".join(f"{what} {d:.2e}" for what, d in diffs)
    if not worst <= atol:
        lost = [k for k in info.get("missing_keys", []) if "bias" in k][:3]
        fail(f"transformers' {cls.__name__} from {folder} differs from smile's model by "
             f"{worst:.2e} (> --atol {atol:g}; {report})"
             + (f"; transformers did not load {lost} (the q/v-bias loss of transformers 5, mteb "
                "PR #5094)" if lost else "") + "; nothing written")
    print(f"verified: max |smile - transformers| = {report} (<= {atol:g})")


# ============================================================================= the two commands


def to_hf(ck, out_dir, img_size=None, num_frames=None, encoder_only=False, atol=1e-4):
    transformers = need_transformers()
    kind, sd, args = smile_state(load_checkpoint(ck))
    name, size = shape_of(kind, sd, args)
    grid = {"img_size": img_size or args.get("img_size", 224),
            "num_frames": num_frames or args.get("num_frames", 16)}
    pixel_dim = 3 * size["tubelet_size"] * size["patch_size"] ** 2
    if kind == "pretrain" and (encoder_only or sd["decoder.head.weight"].shape[0] != pixel_dim):
        if not encoder_only:
            print(f"the decoder predicts {sd['decoder.head.weight'].shape[0]}-d targets; "
                  f"VideoMAEForPreTraining's head is fixed at {pixel_dim} pixels: writing the "
                  "encoder alone (VideoMAEModel)")
        kind = "encoder"
        sd = {k: v for k, v in sd.items() if k.startswith("encoder.")}
    smile = smile_model(kind, size, grid, sd)
    norm = kind != "encoder" or "encoder.norm.weight" in sd
    config = transformers.VideoMAEConfig(
        image_size=grid["img_size"], patch_size=size["patch_size"], num_channels=3,
        num_frames=grid["num_frames"], tubelet_size=size["tubelet_size"],
        hidden_size=size["embed_dim"], num_hidden_layers=size["depth"],
        num_attention_heads=size["num_heads"], intermediate_size=4 * size["embed_dim"],
        hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True,
        use_mean_pooling=kind == "classifier" or not norm,
        decoder_hidden_size=size.get("decoder_embed_dim", 384),
        decoder_num_hidden_layers=size.get("decoder_depth", 4),
        decoder_num_attention_heads=size.get("decoder_num_heads", 6),
        decoder_intermediate_size=4 * size.get("decoder_embed_dim", 384), norm_pix_loss=True,
        **({"num_labels": sd["head.weight"].shape[0]} if kind == "classifier" else {}))
    cls = getattr(transformers, HF_CLASS[kind])
    hf = cls(config)
    layout = "v4" if any(k.endswith(".q_bias") for k in hf.state_dict()) else "v5"
    rows = key_table(kind, size["depth"], size.get("decoder_depth", 0), layout, norm)
    hf.load_state_dict(to_hf_state(sd, rows), strict=True)
    tmp = f"{out_dir.rstrip('/')}.tmp{os.getpid()}"
    try:
        hf.save_pretrained(tmp)
        verify(kind, smile, tmp, cls, grid, size, atol)
        os.makedirs(out_dir, exist_ok=True)
        for f in os.listdir(tmp):
            os.replace(os.path.join(tmp, f), os.path.join(out_dir, f))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out_dir}: transformers {cls.__name__} (ViT-{name}, {grid['num_frames']} frames "
          f"x {grid['img_size']} px, clips (B, T, C, H, W), ImageNet mean/std)")


def read_hf_folder(folder):
    """config.json and the weights (model.safetensors, sharded or not, or pytorch_model.bin), read
    directly: the mapping to smile does not depend on how transformers would load them."""
    try:
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
    except OSError as e:
        fail(f"{folder}: no config.json ({e.strerror})")
    files = [os.path.join(folder, "model.safetensors")]
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted({os.path.join(folder, v) for v in json.load(f)["weight_map"].values()})
    sd = {}
    for path in files:
        if os.path.isfile(path):
            from safetensors.torch import load_file
            sd.update(load_file(path))
    bin_path = os.path.join(folder, "pytorch_model.bin")
    if not sd and os.path.isfile(bin_path):
        sd = torch.load(bin_path, map_location="cpu", weights_only=True)
    if not sd:
        fail(f"{folder}: no model.safetensors or pytorch_model.bin")
    return config, sd


def from_hf(folder, ck, atol=1e-4):
    transformers = need_transformers()
    config, hf = read_hf_folder(folder)
    arch = (config.get("architectures") or ["VideoMAEModel"])[0]
    kind = {v: k for k, v in HF_CLASS.items()}.get(arch)
    if config.get("model_type") != "videomae" or kind is None:
        fail(f"{folder}: {config.get('model_type')} / {arch} is not a transformers VideoMAE model")
    if kind == "encoder" and any(k.startswith("videomae.") for k in hf):
        hf = {k[len("videomae."):]: v for k, v in hf.items() if k.startswith("videomae.")}
    norm = not config.get("use_mean_pooling", True)
    if (kind == "pretrain" and not norm) or (kind == "classifier" and norm):
        fail(f"{folder}: {arch} with use_mean_pooling {not norm} has no smile counterpart")
    if config.get("hidden_act", "gelu") != "gelu" or \
            config.get("intermediate_size") != 4 * config.get("hidden_size"):
        fail(f"{folder}: smile's blocks are GELU MLPs of 4x the width")
    layout = "v4" if any(k.endswith(".q_bias") for k in hf) else "v5"
    depth, dec_depth = config["num_hidden_layers"], config.get("decoder_num_hidden_layers", 0)
    rows = key_table(kind, depth, dec_depth if kind == "pretrain" else 0, layout, norm)
    qv_bias = config.get("qv_bias", config.get("qkv_bias", True))
    wanted = [h for s, hs in rows for h in hs if qv_bias or not s.endswith(("q_bias", "v_bias"))]
    missing, unused = [h for h in wanted if h not in hf], sorted(set(hf) - set(wanted))
    if missing or unused:
        fail(f"{folder}: the weights do not fit {arch}"
             + (f"; missing {missing[:4]}" if missing else "")
             + (f"; not used {unused[:4]}" if unused else ""))
    sd = from_hf_state(hf, rows)
    p = config["patch_size"]
    p = p[0] if isinstance(p, (list, tuple)) else p
    name, size = shape_of(kind, sd, {})
    if size["num_heads"] != config["num_attention_heads"] or (kind == "pretrain" and (
            size["decoder_num_heads"] != config["decoder_num_attention_heads"])):
        fail(f"{folder}: heads {config['num_attention_heads']} do not match smile's ViT-{name}")
    s = config["image_size"]
    grid = {"img_size": s[0] if isinstance(s, (list, tuple)) else s,
            "num_frames": config["num_frames"]}
    smile = smile_model(kind, size, grid, sd)
    verify(kind, smile, folder, getattr(transformers, arch), grid, size, atol)
    out_dim = sd["decoder.head.weight"].shape[0] if kind == "pretrain" else None
    args = {"model": name, "patch_size": p, "tubelet": config["tubelet_size"], **grid,
            **({"target": "pixel"} if out_dim == 3 * config["tubelet_size"] * p * p else {})}
    save_checkpoint({"model": sd, "args": args, "source": os.path.abspath(folder),
                     "hf_config": json.loads(json.dumps(config))}, ck)
    print(f"wrote {ck}: smile {type(smile).__name__ if kind != 'encoder' else 'encoder'} "
          f"(ViT-{name}) from {arch}; python probe.py --checkpoint {ck} ... loads it")


def main(argv=None):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("to-hf", help="a smile checkpoint -> a transformers VideoMAE folder")
    a.add_argument("checkpoint")
    a.add_argument("out_dir")
    a.add_argument("--img-size", type=positive_int, default=None,
                   help="the clip side the transformers model takes (default: the "
                   "checkpoint's run, else 224)")
    a.add_argument("--num-frames", type=positive_int, default=None,
                   help="frames per clip (default: the checkpoint's run, else 16)")
    a.add_argument("--encoder-only", action="store_true",
                   help="from a pretraining checkpoint, write the encoder alone (VideoMAEModel)")
    b = sub.add_parser("from-hf", help="a transformers VideoMAE folder -> a smile checkpoint")
    b.add_argument("folder")
    b.add_argument("checkpoint")
    for s in (a, b):
        s.add_argument("--atol", type=positive_float, default=1e-4,
                       help="largest output difference accepted between the two models")
    args = p.parse_args(argv)
    if args.command == "to-hf":
        to_hf(args.checkpoint, args.out_dir, args.img_size, args.num_frames, args.encoder_only,
              args.atol)
    else:
        if not os.path.isdir(args.folder):
            fail(f"{args.folder} is not a folder (a local transformers save; huggingface-cli "
                 "download REPO --local-dir DIR fetches one)")
        from_hf(args.folder, args.checkpoint, args.atol)


if __name__ == "__main__":
    sys.exit(main())
