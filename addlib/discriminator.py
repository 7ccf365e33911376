"""The ADD discriminator (section 3.2), following StyleGAN-T's projected discriminator.

    D(x; c_text, c_img) = { D_k(F_k(x); c_text, c_img) }_k

- F is a *frozen* pretrained ViT (any timm VisionTransformer). Its token sequence is tapped after chosen
  blocks plus, as StyleGAN-T does, after the position embedding (the patch embedding with positions added and
  the CLS token prepended); the CLS token is folded into the patch tokens (added to each), and each tap is
  handed to its head as a (B, C, N) sequence. F stays in eval mode and never receives gradients for
  its weights, but gradients flow *through* it to the generated images.
- Each head D_k: a kernel-1 conv block, then a residual block whose conv has kernel 9 and circular padding;
  every conv is spectrally normalised and followed by a local batch norm and LeakyReLU(0.2); a final
  kernel-1 conv maps to a 64-d c-map.
- Spectral norm's power iteration runs once per training step (:meth:`Discriminator.spectral_step`), not once
  per forward: the heads are kept in eval mode, so the student's L_G and both halves of L_D see the same
  normalised weights whatever the number of forwards or micro-batches (the local batch norm has no running
  statistics, so eval mode changes nothing else).
- Projection conditioning (Miyato & Koyama 2018): the condition c = [c_text, c_img] (each switchable) is
  mapped to the same 64 dims, and the logit per token is <out, cmap(c)> / sqrt(64).

Improvements over the public StyleGAN-T code (see ADD_NOTES): tapped features are stored per instance
(two discriminators never share hook state), and the local batch norm accepts any batch size.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def sn_conv1d(c_in: int, c_out: int, kernel_size: int, circular: bool = False) -> nn.Module:
    conv = nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2,
                     padding_mode="circular" if circular else "zeros")
    return nn.utils.parametrizations.spectral_norm(conv)


class LocalBatchNorm(nn.Module):
    """Batch norm whose statistics are taken over small groups of samples (and all tokens), with no
    running statistics, so a sample's normalisation does not depend on a large batch.

    The batch is cut into ceil(B / group_size) groups of near-equal size (``torch.tensor_split``), so any
    batch size works: B = 1 normalises over tokens only; B = 9 with groups of 8 gives groups of 5 and 4.
    """

    def __init__(self, channels: int, group_size: int = 8, eps: float = 1e-5):
        super().__init__()
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, N)
        B = x.shape[0]
        n_groups = math.ceil(B / self.group_size)
        if B % n_groups == 0:  # equal groups: one reshaped reduction (the common case, and much faster)
            g = x.reshape(n_groups, B // n_groups, *x.shape[1:])
            mean = g.mean(dim=(1, 3), keepdim=True)
            var = g.var(dim=(1, 3), keepdim=True, unbiased=False)
            x_hat = ((g - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)
        else:
            parts = []
            for g in torch.tensor_split(x, n_groups, dim=0):
                mean = g.mean(dim=(0, 2), keepdim=True)
                var = g.var(dim=(0, 2), keepdim=True, unbiased=False)
                parts.append((g - mean) * torch.rsqrt(var + self.eps))
            x_hat = torch.cat(parts)
        return x_hat * self.weight[None, :, None] + self.bias[None, :, None]


def conv_block(c_in: int, c_out: int, kernel_size: int, group_size: int) -> nn.Module:
    return nn.Sequential(sn_conv1d(c_in, c_out, kernel_size, circular=kernel_size > 1),
                         LocalBatchNorm(c_out, group_size), nn.LeakyReLU(0.2))


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.fn(x)) / math.sqrt(2)


class DiscHead(nn.Module):
    """One head D_k over a (B, C, N) token sequence; returns per-token logits (B, N)."""

    def __init__(self, channels: int, c_dim: int, cmap_dim: int = 64, group_size: int = 8):
        super().__init__()
        self.main = nn.Sequential(conv_block(channels, channels, 1, group_size),
                                  Residual(conv_block(channels, channels, 9, group_size)))
        self.c_dim, self.cmap_dim = c_dim, cmap_dim
        self.cls = sn_conv1d(channels, cmap_dim if c_dim > 0 else 1, 1)
        self.cmapper = nn.Linear(c_dim, cmap_dim) if c_dim > 0 else None

    def forward(self, f: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        out = self.cls(self.main(f))  # (B, cmap, N)
        if self.cmapper is None:
            return out[:, 0]
        cmap = self.cmapper(c)[:, :, None]  # (B, cmap, 1)
        return (out * cmap).sum(1) / math.sqrt(self.cmap_dim)


class FeatureNetwork(nn.Module):
    """A frozen timm ViT tapped after ``taps`` blocks (and the patch embedding, if ``tap_patch_embed``).

    Inputs in [-1, 1] are resized to the backbone's resolution, repeated to its input channels if needed,
    and normalised with its mean/std. Outputs: a list of (B, C, N) tap sequences and the backbone's pooled
    image embedding (B, C) (``forward_head(pre_logits=True)``: CLS for DINO-type ViTs, the token mean for
    the in-domain ViT), which is c_img.
    """

    def __init__(self, backbone: nn.Module, taps: Sequence[int], tap_patch_embed: bool = True,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.taps = list(taps)
        n_blocks = len(backbone.blocks)
        if any(not 0 <= t < n_blocks for t in self.taps):
            raise ValueError(f"taps {self.taps} out of range for a ViT with {n_blocks} blocks")
        self.tap_patch_embed = tap_patch_embed
        self.img_size = tuple(backbone.patch_embed.img_size)
        self.in_chans = backbone.patch_embed.proj.in_channels
        cfg = getattr(backbone, "pretrained_cfg", {}) or {}
        mean = mean if mean is not None else cfg.get("mean", (0.5,) * self.in_chans)
        std = std if std is not None else cfg.get("std", (0.5,) * self.in_chans)
        self.register_buffer("mean", torch.tensor(mean[: self.in_chans]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std[: self.in_chans]).view(1, -1, 1, 1), persistent=False)
        self._store: dict[str, torch.Tensor] = {}  # per-instance hook outputs
        self._hooks = []
        if tap_patch_embed:  # after the position embedding (StyleGAN-T hooks timm's pos_drop): tokens know where they are
            self._hooks.append(backbone.pos_drop.register_forward_hook(self._keep("patch")))
        for t in self.taps:
            self._hooks.append(backbone.blocks[t].register_forward_hook(self._keep(f"block{t}")))
        self.dims = [backbone.embed_dim] * (len(self.taps) + int(tap_patch_embed))

    def _keep(self, name: str):
        def hook(module, args, output):
            self._store[name] = output
        return hook

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: dropout / drop-path stay off
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != self.img_size:
            x = F.interpolate(x.float(), size=self.img_size, mode="bilinear", align_corners=False, antialias=True)
        if x.shape[1] != self.in_chans:
            x = x.expand(-1, self.in_chans, -1, -1) if x.shape[1] == 1 else x.mean(1, keepdim=True)
        return ((x + 1) / 2 - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        self._store.clear()
        final = self.backbone.forward_features(self.preprocess(x))
        p = getattr(self.backbone, "num_prefix_tokens", 1)
        feats = []
        for name in (["patch"] if self.tap_patch_embed else []) + [f"block{t}" for t in self.taps]:
            tok = self._store[name]
            feats.append(tok[:, p:] + tok[:, :1])  # fold CLS into the patch tokens
        self._store.clear()
        return [f.transpose(1, 2) for f in feats], self.backbone.forward_head(final, pre_logits=True)


def draw_augment(n: int, channels: int, h: int, w: int, generator: torch.Generator | None = None,
                 color: bool = True, translation: bool = True, cutout: bool = True) -> dict[str, torch.Tensor]:
    """The random parameters of ``n`` augmentations (CPU tensors, one row per sample). Drawn for the global
    batch and then indexed, so each process or micro-batch applies exactly the draws a single-process run
    would give its samples."""
    p: dict[str, torch.Tensor] = {}
    if color:
        p["brightness"] = torch.rand(n, generator=generator)
        if channels > 1:
            p["saturation"] = torch.rand(n, generator=generator)
        p["contrast"] = torch.rand(n, generator=generator)
    if translation:
        sh, sw = max(1, h // 8), max(1, w // 8)
        p["ty"] = torch.randint(-sh, sh + 1, (n,), generator=generator)
        p["tx"] = torch.randint(-sw, sw + 1, (n,), generator=generator)
    if cutout:
        p["cy"] = torch.randint(0, h - h // 2 + 1, (n,), generator=generator)
        p["cx"] = torch.randint(0, w - w // 2 + 1, (n,), generator=generator)
    return p


def apply_augment(x: torch.Tensor, p: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """Differentiable augmentation (Zhao et al. 2020, as StyleGAN-T uses) with parameters from
    :func:`draw_augment`: colour (brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5]), translation by
    up to 1/8 of the side (filled with -1), cutout of a square of half the side (set to -1). Inputs in [-1, 1]."""
    if not p:  # no augmentation drawn
        return x
    b, _, h, w = x.shape
    dev = x.device
    col = lambda k: p[k].to(dev, x.dtype).view(-1, 1, 1, 1)  # noqa: E731
    if "brightness" in p:
        x = x + (col("brightness") - 0.5)
        if "saturation" in p and x.shape[1] > 1:
            m = x.mean(1, keepdim=True)
            x = (x - m) * (col("saturation") * 2) + m
        m = x.mean((1, 2, 3), keepdim=True)
        x = (x - m) * (col("contrast") + 0.5) + m
    if "ty" in p:
        ty, tx = p["ty"].to(dev), p["tx"].to(dev)
        yy = (torch.arange(h, device=dev)[None] - ty[:, None])  # (b, h) source rows
        xx = (torch.arange(w, device=dev)[None] - tx[:, None])
        valid = ((yy >= 0) & (yy < h))[:, :, None] & ((xx >= 0) & (xx < w))[:, None, :]
        rows = yy.clamp(0, h - 1)[:, None, :, None].expand(-1, x.shape[1], -1, w)
        x = torch.gather(x, 2, rows)
        cols = xx.clamp(0, w - 1)[:, None, None, :].expand(-1, x.shape[1], h, -1)
        x = torch.gather(x, 3, cols) * valid[:, None].to(x.dtype) + (-1.0) * (~valid[:, None]).to(x.dtype)
    if "cy" in p:
        ch, cw = h // 2, w // 2
        cy, cx = p["cy"].to(dev), p["cx"].to(dev)
        ys = torch.arange(h, device=dev)[None]
        xs = torch.arange(w, device=dev)[None]
        my = (ys >= cy[:, None]) & (ys < cy[:, None] + ch)
        mx = (xs >= cx[:, None]) & (xs < cx[:, None] + cw)
        hole = (my[:, :, None] & mx[:, None, :])[:, None]
        x = torch.where(hole, torch.full_like(x, -1.0), x)
    return x


def diff_augment(x: torch.Tensor, generator: torch.Generator | None = None, color: bool = True,
                 translation: bool = True, cutout: bool = True) -> torch.Tensor:
    """Draw one augmentation per sample and apply it (see :func:`draw_augment`, :func:`apply_augment`)."""
    return apply_augment(x, draw_augment(len(x), *x.shape[1:], generator, color, translation, cutout))


class Discriminator(nn.Module):
    """Frozen F plus one trainable head per tap, projection-conditioned on c_text and/or c_img."""

    def __init__(self, feature_net: FeatureNetwork, c_text_dim: int, use_c_text: bool = True,
                 use_c_img: bool = True, cmap_dim: int = 64, group_size: int = 8):
        super().__init__()
        self.F = feature_net
        self.use_c_text, self.use_c_img = use_c_text, use_c_img
        c_dim = (c_text_dim if use_c_text else 0) + (feature_net.backbone.embed_dim if use_c_img else 0)
        self.heads = nn.ModuleList(DiscHead(d, c_dim, cmap_dim, group_size) for d in feature_net.dims)
        self.heads.eval()  # spectral norm's power iteration runs only in spectral_step

    def train(self, mode: bool = True):
        super().train(mode)
        self.heads.eval()
        return self

    @torch.no_grad()
    def spectral_step(self) -> None:
        """One power iteration of every spectrally normalised conv (once per training step): reading a
        parametrised weight in train mode updates its singular-vector estimates u, v in place."""
        for m in self.heads.modules():
            if nn.utils.parametrize.is_parametrized(m, "weight"):
                m.train()
                _ = m.weight
                m.eval()

    def condition(self, c_text: torch.Tensor | None, c_img: torch.Tensor | None) -> torch.Tensor | None:
        parts = ([c_text] if self.use_c_text else []) + ([F.normalize(c_img, dim=-1)] if self.use_c_img else [])
        return torch.cat(parts, dim=1) if parts else None

    @torch.no_grad()
    def image_embedding(self, x0: torch.Tensor) -> torch.Tensor:
        """c_img: F's embedding of the real image (ADD conditions both real and fake logits on it)."""
        return self.F(x0)[1]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.F(x)[0]

    def heads_forward(self, feats: list[torch.Tensor], c: torch.Tensor | None) -> list[torch.Tensor]:
        return [head(f, c) for head, f in zip(self.heads, feats)]

    def forward(self, x: torch.Tensor, c_text: torch.Tensor | None = None,
                c_img: torch.Tensor | None = None) -> list[torch.Tensor]:
        return self.heads_forward(self.features(x), self.condition(c_text, c_img))
