"""The SMILE student: a VideoMAE-style ViT encoder-decoder, and the classifier used downstream.

Paper: SMILE (CVPR 2025) Sec. 3.1 and 4.1, Appendix F.3. The layout follows VideoMAE exactly
(SPEC 1), so that the released VideoMAE-family checkpoints (VideoMAE, SMILE, MGMAE, MGM, SIGMA) load
with strict=True and give the same numbers; tests/test_model.py pins this against
tests/data/videomae_tiny_reference.pt.

Shapes, with letters fixed once for the whole project:
    B batch, C channels, T/H/W frames/height/width of a clip,
    t/h/w token grid (T / tubelet, H / patch, W / patch), N = t*h*w tokens,
    Nv visible tokens, Nm masked tokens (Nv + Nm = N), D encoder width, Dd decoder width.
Mask convention (all of smile): True = masked (dropped from the encoder, predicted by the decoder).
Tokens are flattened in (t, h, w) order. Inside the forward the mask is used as integer indices,
never as a boolean index (x[mask] is a nonzero(): a host-device sync and a torch.compile graph break
each): mask_indices(mask) -> (visible_idx (B, Nv), masked_idx (B, Nm)),
gather_tokens(x, idx) -> (B, K, D).
Precision: the residual stream is kept in the parameters' dtype (fp32 under autocast), as in timm.

    model = PretrainModel(**MODEL_SIZES["small"], out_dim=768)
    pred = model(video, mask)   # video (B, 3, 16, 224, 224), mask (B, 1568)
                                # -> pred (B, 1248, 768)
    idx = mask_indices(mask)    # on the CPU, where the mask is made: then the forward never syncs
    pred = model(video, idx)    # the same numbers; gather_tokens(targets, idx[1]) are pred's
                                # targets
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Encoder/decoder shapes. small = ViT-S and base = ViT-B as in the paper (SPEC 1); tiny is for CPU
# work.
MODEL_SIZES = {
    "tiny": dict(embed_dim=192, depth=4, num_heads=3, decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6, decoder_embed_dim=192, decoder_depth=4, decoder_num_heads=3),
    "base": dict(embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=384, decoder_depth=4, decoder_num_heads=6),
}


def sinusoid_table(n_position, dim):
    """Fixed 1-D sinusoid position table (1, N, D) over the flattened token index, as in VideoMAE.

    Even channels take sin, odd channels cos, of pos / 10000^(2*(j//2)/D). Not learned and not
    saved, so it is rebuilt for whatever grid a clip has (other frame counts and resolutions just
    work).
    """
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]                   # (N, 1)
    j = torch.arange(dim, dtype=torch.float64)[None, :]                             # (1, D)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()[None]                                                       # (1, N, D)


# ============================================================================= the ViT


class PatchEmbed(nn.Module):
    """2x16x16 tubelets -> tokens with one Conv3d whose kernel equals its stride (Sec. 3.1)."""

    def __init__(self, patch_size=16, tubelet_size=2, in_chans=3, embed_dim=768):
        super().__init__()
        k = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=k, stride=k)

    def forward(self, x):              # x (B, C, T, H, W)
        x = self.proj(x)               # (B, D, t, h, w)
        return x.flatten(2).transpose(1, 2)  # (B, N, D), tokens in (t, h, w) order

    # x (B, C, T, H, W), visible_idx (B, Nv) int64 -> (B, Nv, D)
    def forward_visible(self, x, visible_idx):
        """The same numbers as gather_tokens(forward(x), visible_idx), computed for the visible
        tubelets only: kernel = stride makes the conv one linear map per tubelet, so at mask ratio
        0.8 this is 5x less work (and memory)."""
        B, C, T, H, W = x.shape
        kt, kh, kw = self.proj.kernel_size
        t, h, w = T // kt, H // kh, W // kw
        x = x[:, :, :t * kt, :h * kh, :w * kw].reshape(B, C, t, kt, h, kh, w, kw)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)                  # (B, t, h, w, C, kt, kh, kw), a view
        ti, hi, wi = visible_idx // (h * w), visible_idx // w % h, visible_idx % w   # (B, Nv) each
        b = torch.arange(B, device=x.device)[:, None]                      # (B, 1)
        # (B, Nv, C, kt, kh, kw): integer indexing, visible tubelets only
        x = x[b, ti, hi, wi]
        return F.linear(x.flatten(2), self.proj.weight.flatten(1), self.proj.bias)  # (B, Nv, D)


class Attention(nn.Module):
    """Multi-head self-attention. VideoMAE keeps q and v biases apart from the bias-free qkv Linear
    (k has no bias), so checkpoints carry attn.qkv.weight, attn.q_bias, attn.v_bias."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):                                                           # x (B, N, D)
        B, N, D = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias)                                    # (B, N, 3D)
        # (B, nh, N, hs)
        q, k, v = qkv.view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        # SDPA picks flash / memory-efficient kernels on GPU; same maths as
        # softmax(q k^T / sqrt(hs)) v.
        x = F.scaled_dot_product_attention(q, k, v)                                 # (B, nh, N, hs)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def drop_path(x, p, training):
    """Stochastic depth: drop the whole residual branch of a sample with probability p
    (finetuning)."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - p)
    return x * keep / (1 - p)


class Block(nn.Module):
    """Pre-LN transformer block with joint space-time attention over all tokens (Sec. 3.1)."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path

    def forward(self, x):
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


def run_blocks(blocks, x, grad_checkpointing=False):
    """Run a stack of blocks; with grad_checkpointing, recompute activations in backward to save
    memory."""
    for blk in blocks:
        if grad_checkpointing and x.requires_grad:
            x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = blk(x)
    return x


def position_table(table, n):
    """The cached table when the grid is the default one, else a freshly built one for n tokens.

    In the cached table's dtype, which follows the parameters (fp32 unless the model was cast):
    adding it in fp32 keeps the residual stream fp32 under autocast (see Encoder.forward).
    """
    return table if table.shape[1] == n else sinusoid_table(n, table.shape[2]).to(table)


class Encoder(nn.Module):
    """ViT encoder that sees only the visible tokens (VideoMAE: every sample keeps the same
    number)."""

    def __init__(self, img_size=224, patch_size=16, num_frames=16, tubelet_size=2, embed_dim=768,
                 depth=12, num_heads=12, mlp_ratio=4.0, drop_path=0.0, final_norm=True):
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, tubelet_size, 3, embed_dim)
        n = (num_frames // tubelet_size) * (img_size // patch_size) ** 2
        self.register_buffer("pos_embed", sinusoid_table(n, embed_dim), persistent=False)
        rates = torch.linspace(0, drop_path, depth).tolist()   # stochastic depth grows with depth
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, r) for r in rates])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6) if final_norm else nn.Identity()
        self.grad_checkpointing = False

    def forward(self, video, mask=None):
        """video (B, C, T, H, W); mask None (all N tokens), a bool (B, N) mask (True = masked) or
        the (visible_idx, masked_idx) pair of mask_indices -> (B, N or Nv, D), visible tokens in
        token order.

        The position table is added in fp32 (not cast to x's dtype): under bf16 autocast the patch
        embedding's output is bf16, and fp32 + bf16 gives fp32, so the residual stream x stays fp32
        through every block (x + f(x) with f's Linear outputs in bf16 is fp32), as in timm. Casting
        the table to bf16 instead would keep the whole residual stream in bf16 (8-bit mantissa):
        each block's small update would be rounded away against the running sum.
        """
        if mask is None:
            x = self.patch_embed(video)            # (B, N, D), bf16 under autocast
            x = x + position_table(self.pos_embed, x.shape[1])     # fp32: the residual stream
        else:                 # embed the visible tubelets only (same numbers, 5x less work)
            visible_idx, masked_idx = _as_indices(mask)
            x = self.patch_embed.forward_visible(video, visible_idx)                # (B, Nv, D)
            # (1, N, D)
            pos = position_table(self.pos_embed, visible_idx.shape[1] + masked_idx.shape[1])
            x = x + gather_tokens(pos, visible_idx)         # (B, Nv, D) fp32: the residual stream
        x = run_blocks(self.blocks, x, self.grad_checkpointing)
        return self.norm(x)


class Decoder(nn.Module):
    """VideoMAE's light decoder: [visible, masked] tokens in, predictions for the masked ones out
    (Eq. 2)."""

    def __init__(self, embed_dim=384, depth=4, num_heads=6, out_dim=768, mlp_ratio=4.0):
        super().__init__()
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, out_dim)
        self.grad_checkpointing = False

    def forward(self, x, num_masked):              # x (B, Nv + Nm, Dd), masked tokens last
        x = run_blocks(self.blocks, x, self.grad_checkpointing)
        # predictions for masked tokens only: (B, Nm, out)
        return self.head(self.norm(x[:, -num_masked:]))


def init_weights(m, linear_std=None):
    """Reference init (SPEC 1): Linear xavier-uniform (the pretraining model) or, given linear_std,
    a normal of that std (the finetuning model's, modeling_finetune._init_weights: timm's
    trunc_normal_, cut at +-2 absolute, so not at all at std 0.02), zero bias; LayerNorm weight 1 /
    bias 0."""
    if isinstance(m, nn.Linear):
        if linear_std is None:
            nn.init.xavier_uniform_(m.weight)
        else:
            nn.init.trunc_normal_(m.weight, std=linear_std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class PretrainModel(nn.Module):
    """Masked video model (VideoMAE layout): encoder on visible tokens -> decoder predicts masked
    tokens.

    SMILE's decoder predicts out_dim = 768 CLIP features per masked token (Eq. 2); VideoMAE's
    predicts 2*16*16*3 = 1536 pixels. forward(video, mask) -> (B, Nm, out_dim), masked tokens in
    token order; mask is a bool (B, N) mask or, for a forward without any host sync or graph break,
    the pair mask_indices(mask); the targets in the same order are
    gather_tokens(targets, masked_idx).
    """

    def __init__(self, img_size=224, patch_size=16, num_frames=16, tubelet_size=2, embed_dim=768,
                 depth=12, num_heads=12, decoder_embed_dim=384, decoder_depth=4,
                 decoder_num_heads=6, out_dim=768, mlp_ratio=4.0):
        super().__init__()
        self.encoder = Encoder(img_size, patch_size, num_frames, tubelet_size, embed_dim, depth,
                               num_heads, mlp_ratio)
        self.encoder_to_decoder = nn.Linear(embed_dim, decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer("pos_embed",
                             sinusoid_table(self.encoder.pos_embed.shape[1], decoder_embed_dim),
                             persistent=False)
        self.decoder = Decoder(decoder_embed_dim, decoder_depth, decoder_num_heads, out_dim,
                               mlp_ratio)
        self.apply(init_weights)
        # as the reference (modeling_pretrain.py): its top-level model never applies _init_weights,
        # so encoder_to_decoder keeps PyTorch's default Linear init, and its trunc_normal_ cuts the
        # mask token at +-1 std (a = -std, b = std)
        self.encoder_to_decoder.reset_parameters()
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)

    def set_grad_checkpointing(self, enable=True):
        self.encoder.grad_checkpointing = self.decoder.grad_checkpointing = enable

    def forward(self, video, mask, targets=None):
        """video (B, C, T, H, W), mask (B, N) bool or mask_indices(mask) -> pred (B, Nm, out_dim);
        given targets (B, N, out_dim) for every token, Eq. 2's loss instead (forward_loss)."""
        visible_idx, masked_idx = idx = _as_indices(mask)           # (B, Nv), (B, Nm)
        x = self.encoder_to_decoder(self.encoder(video, idx))       # (B, Nv, Dd)
        # (1, N, Dd)
        pos = position_table(self.pos_embed, visible_idx.shape[1] + masked_idx.shape[1])
        pos_vis = gather_tokens(pos, visible_idx)                   # (B, Nv, Dd)
        pos_msk = gather_tokens(pos, masked_idx)                    # (B, Nm, Dd)
        # fp32 table and mask token: the decoder's residual stream stays fp32 under autocast too
        # (B, Nv + Nm, Dd): [visible, masked]
        x = torch.cat([x + pos_vis, self.mask_token + pos_msk], dim=1)
        pred = self.decoder(x, masked_idx.shape[1])         # (B, Nm, out_dim); Nm a shape, no sync
        return pred if targets is None else self.forward_loss(pred, targets, masked_idx)

    def forward_loss(self, pred, targets, masked_idx):
        """Eq. 2: the mean squared error on the masked tokens only. pred (B, Nm, Dt) in token order,
        targets (B, N, Dt) for all tokens (the teacher's, or pixels) -> a scalar, in fp32."""
        return F.mse_loss(pred.float(), gather_tokens(targets, masked_idx))


class VideoClassifier(nn.Module):
    """Downstream model (VideoMAE finetune layout): encoder on all tokens -> mean pool -> fc_norm
    -> head.

    Same encoder keys as the pretraining model without the `encoder.` prefix; `norm` is replaced by
    mean pooling followed by `fc_norm`, as in VideoMAE's finetuning code.
    """

    def __init__(self, img_size=224, patch_size=16, num_frames=16, tubelet_size=2, embed_dim=768,
                 depth=12, num_heads=12, mlp_ratio=4.0, num_classes=400, drop_path=0.0,
                 head_init_scale=1.0, decoder_embed_dim=None, decoder_depth=None,
                 decoder_num_heads=None):
        super().__init__()
        # decoder_*: ignored, named so that a MODEL_SIZES preset serves both models while any other
        # (misspelt) keyword raises TypeError instead of silently falling back to a default.
        enc = Encoder(img_size, patch_size, num_frames, tubelet_size, embed_dim, depth, num_heads,
                      mlp_ratio, drop_path, final_norm=False)
        self.patch_embed, self.blocks, self.grad_checkpointing = enc.patch_embed, enc.blocks, False
        self.register_buffer("pos_embed", enc.pos_embed, persistent=False)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        # every Linear (head included) a normal of std 0.02, as the reference's finetuning model:
        # the "no pretraining" baselines start from this
        self.apply(lambda m: init_weights(m, linear_std=0.02))
        with torch.no_grad():   # Table 17: head init scale 0.001 keeps the first logits near zero
            self.head.weight.mul_(head_init_scale)
            self.head.bias.mul_(head_init_scale)

    def forward_tokens(self, video, layer=None):
        """video (B, C, T, H, W) -> (B, N, D) tokens before pooling: the last block's output, or
        block `layer`'s (1-based; tools/segment.py reads an inner one)."""
        x = self.patch_embed(video)                # (B, N, D), bf16 under autocast
        x = x + position_table(self.pos_embed, x.shape[1])  # fp32 residual stream (Encoder.forward)
        return run_blocks(self.blocks[:layer], x, self.grad_checkpointing)

    def forward_features(self, video):             # -> (B, D)
        return self.fc_norm(self.forward_tokens(video).mean(dim=1))

    def forward(self, video):                      # -> (B, num_classes)
        return self.head(self.forward_features(video))


# ============================================================================= index masks
# The speed devices, after the ViT they serve: the mask travels as integer indices made once on the
# CPU (mask_indices), tokens are picked with torch.gather (gather_tokens), never x[mask]: no
# host-device sync and no torch.compile graph break in the forward. (PatchEmbed.forward_visible's
# divmod gather and the fp32 residual stream are the other two.)


def mask_indices(mask):
    """bool mask (B, N), True = masked -> (visible_idx (B, Nv), masked_idx (B, Nm)), int64 token
    indices.

    Each row lists the visible (resp. masked) tokens in increasing token order, i.e. exactly the
    order of x[~mask] (resp. x[mask]) (a stable argsort of the mask puts the False entries first).
    Every sample must mask the same number of tokens (SPEC 3; ValueError otherwise). That number is
    read from the mask once, here: one host read, free while the mask is still on the CPU (in the
    loader or before .to(device)), so call this there and pass the pair on (under torch.compile this
    read is a graph break; the model's forward given the pair has none). Downstream,
    Nm = masked_idx.shape[1] is a shape, known without a sync and a constant for torch.compile.
    """
    B, N = mask.shape
    counts = mask.sum(1)                                                 # (B,) masked per sample
    # min and max in one number, so that checking costs no second host read (nor graph break)
    lo, hi = divmod(int(counts.min() * (N + 1) + counts.max()), N + 1) if B else (0, 0)
    if lo != hi:
        raise ValueError(f"every sample must mask the same number of tokens, got {lo} to {hi}")
    order = torch.argsort(mask, dim=1, stable=True)                   # (B, N): visible, then masked
    nv = N - hi
    return order[:, :nv], order[:, nv:]


def gather_tokens(x, idx):
    """x (B, N, D) (or (1, N, D), shared by the batch), idx (B, K) int64 -> (B, K, D):
    x[b, idx[b, i]].

    A torch.gather: no sync, no graph break. Contract with PretrainModel: for
    visible_idx, masked_idx = mask_indices(mask), gather_tokens(targets, masked_idx)[:, i] is the
    target of model(video, mask)[:, i] (both in masked-token order, the order of targets[mask]);
    gather_tokens(x, visible_idx) equals x[~mask].view(B, Nv, D).
    """
    x = x.expand(idx.shape[0], -1, -1)                                   # (B, N, D), a view
    return torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[2]))


def _as_indices(mask):
    """A bool mask (B, N) or the pair from mask_indices
    -> (visible_idx (B, Nv), masked_idx (B, Nm))."""
    return mask_indices(mask) if isinstance(mask, torch.Tensor) else tuple(mask)


# ============================================================================= checkpoints


def classifier_state_dict(state):
    """Map a pretraining (or finetuning) checkpoint onto VideoClassifier keys (SPEC 1).

    Accepts {"model": sd}, {"module": sd}, {"state_dict": sd} or a bare state_dict; strips
    `encoder.` / `backbone.` / DDP's `module.` prefixes; drops decoder keys, the mask token and any
    saved position table (it is rebuilt for the evaluation grid). The encoder's final `norm.*` is
    kept so that loading reports it as unexpected.
    """
    for key in ("model", "module", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "encoder.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        if k.startswith(("decoder.", "encoder_to_decoder.", "mask_token", "pos_embed")):
            continue
        out[k] = v
    return out


def load_encoder(classifier, path_or_state, verbose=True):
    """Load encoder weights into a VideoClassifier from a file or a loaded checkpoint.

    Returns (missing, unexpected) key lists; prints them when verbose. Uses weights_only=True
    loading.
    """
    state = path_or_state
    if isinstance(path_or_state, str):
        state = torch.load(path_or_state, map_location="cpu", weights_only=True)
    sd = classifier_state_dict(state)
    head_shape = classifier.head.weight.shape
    # another dataset's head: drop it
    if "head.weight" in sd and sd["head.weight"].shape != head_shape:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    missing, unexpected = classifier.load_state_dict(sd, strict=False)
    if verbose:
        print(f"loaded encoder: missing {list(missing)} | unexpected {list(unexpected)}")
    return list(missing), list(unexpected)


def count_params(module):
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":
    for name, size in MODEL_SIZES.items():
        m = PretrainModel(**size)
        print(f"{name:6s} encoder {count_params(m.encoder) / 1e6:6.1f}M | decoder "
              f"{(count_params(m) - count_params(m.encoder)) / 1e6:5.1f}M")
    m = PretrainModel(img_size=64, num_frames=8, **MODEL_SIZES["tiny"], out_dim=1536)
    mask = torch.zeros(2, 4 * 4 * 4, dtype=torch.bool)
    mask[:, ::2] = True
    print("tiny forward:", tuple(m(torch.randn(2, 3, 8, 64, 64), mask).shape))
