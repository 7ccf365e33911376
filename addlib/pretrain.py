"""Networks the method needs *pretrained*, made here because no pretrained image weights exist offline.

The discriminator's feature network F (ADD section 3.2; the paper's best is DINOv2 ViT-S, Table 1a). Users
with real weights set ``features.source: timm`` and ``features.weights: /path/to/file`` and this module only
loads them (``load_backbone``). Otherwise the ``features`` stage pretrains a small ViT on the training images.

Objective: **SimCLR** (Chen et al. 2020), self-supervised contrastive learning between two augmented views.
Why: the paper found self-supervised (DINO) features best for F; a classifier objective would tie F to the
labels that evaluation uses, and the evaluation's feature network (a classifier) and CLIP-score tower
(contrastive image-text) must differ from F in network, objective and training run, so that the
discriminator cannot lower FID by matching the metric's own features (Kynkaanniemi et al. 2023). A small
patch grid (2-px patches, 64 tokens at 16x16) replaces the 16-px patches a 224-px ViT uses.
The stage reports F's linear-probe accuracy next to that of the same ViT at random init.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .discriminator import diff_augment
from .training import Checkpointer, batch_indices, content_digest, run_loop, set_threads, step_generator

if TYPE_CHECKING:  # annotations only
    from .config.features import FeatureNetConfig


def build_vit(cfg: FeatureNetConfig, in_chans: int) -> nn.Module:
    """The in-domain ViT: the timm family ``timm_name`` at F's sizes, randomly initialised."""
    import timm

    return timm.create_model(cfg.timm_name, pretrained=False, img_size=cfg.img_size, patch_size=cfg.patch_size,
                             in_chans=in_chans, embed_dim=cfg.embed_dim, depth=cfg.depth,
                             num_heads=cfg.num_heads, num_classes=0, global_pool="avg")


def load_backbone(cfg: FeatureNetConfig, in_chans: int, weights_dir: str | Path | None = None,
                  seed: int = 0) -> nn.Module:
    """F's backbone, ready to freeze.

    source=timm: ``timm.create_model(timm_name, pretrained=True)`` from the local ``weights`` file (safetensors
    or a torch file loaded with weights_only), at ``img_size`` (timm resamples the position embedding);
    grey images are repeated to its 3 channels by FeatureNetwork. source=in_domain: the stage's weights in
    ``weights_dir``; with objective 'none', the random init of ``seed`` (Table 1a's random-F row).
    """
    import timm

    if cfg.source == "timm":
        return timm.create_model(cfg.timm_name, pretrained=True, num_classes=0, img_size=cfg.img_size,
                                 pretrained_cfg_overlay=dict(file=str(cfg.weights)))
    torch.manual_seed(seed)
    vit = build_vit(cfg, in_chans)
    if cfg.pretrain.objective != "none":
        vit.load_state_dict(load_file(str(Path(weights_dir) / "backbone.safetensors")))
    return vit


def random_affine(x: torch.Tensor, g: torch.Generator, max_rot: float = 15.0, scale=(0.8, 1.1),
                  translate: float = 0.12) -> torch.Tensor:
    """Per-sample rotation, scale and translation (bilinear, background = -1)."""
    b = x.shape[0]
    rot = (torch.rand(b, generator=g) * 2 - 1) * math.radians(max_rot)
    sc = torch.empty(b).uniform_(scale[0], scale[1], generator=g)
    tr = (torch.rand(b, 2, generator=g) * 2 - 1) * translate * 2
    cos, sin = torch.cos(rot) / sc, torch.sin(rot) / sc
    theta = torch.stack([torch.stack([cos, -sin, tr[:, 0]], 1), torch.stack([sin, cos, tr[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


def simclr_view(x: torch.Tensor, g: torch.Generator, color: bool = True) -> torch.Tensor:
    """Affine jitter plus (optionally) colour; no cutout: half-image holes on 16x16 digits stalled the loss."""
    return diff_augment(random_affine(x, g), g, color=color, translation=False, cutout=False)


class SimCLR(nn.Module):
    """Backbone + projection head (discarded after pretraining); the representation is the backbone's
    pooled embedding (mean of the patch tokens for the in-domain ViT: it learned faster than CLS here)."""

    def __init__(self, backbone: nn.Module, proj_dim: int = 64):
        super().__init__()
        self.backbone = backbone
        d = backbone.embed_dim
        # BatchNorm in the projection head, as in SimCLR: without it the tiny ViT collapses to one
        # embedding for every image within a few steps (loss stuck at log(2B - 1)).
        self.head = nn.Sequential(nn.Linear(d, 4 * d), nn.BatchNorm1d(4 * d), nn.ReLU(), nn.Linear(4 * d, proj_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss (Chen et al. 2020), per anchor (2B values): z1[i] and z2[i] are positives,
    every other of the 2B embeddings a negative; cosine similarity divided by ``temperature``."""
    z = torch.nn.functional.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = len(z1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return torch.nn.functional.cross_entropy(sim, positive, reduction="none")


def pretrain_features(cfg: FeatureNetConfig, seed: int, x_train: torch.Tensor, out_dir: str | Path,
                      checkpoint_dir: str | Path, live_dir: str | Path | None = None,
                      max_steps: int | None = None, progress: bool = True) -> dict:
    """SimCLR-pretrain F's ViT on ``x_train`` ([-1, 1] images); save backbone weights to ``out_dir``."""
    from accelerate import Accelerator

    from .config import fingerprint
    from .training import warmup_cosine

    pc = cfg.pretrain
    set_threads(pc.num_threads)
    accelerator = Accelerator()
    torch.manual_seed(seed)
    model = SimCLR(build_vit(cfg, x_train.shape[1]))
    opt = torch.optim.AdamW(model.parameters(), lr=pc.lr, weight_decay=pc.weight_decay)
    ckpt = Checkpointer(checkpoint_dir, fingerprint(cfg, seed, content_digest(x_train)))
    model_p, opt_p = accelerator.prepare(model, opt)
    x_in = x_train if x_train.shape[-1] == cfg.img_size else F.interpolate(
        x_train, size=cfg.img_size, mode="bilinear", antialias=True, align_corners=False)

    def step_fn(step: int) -> dict:
        g = step_generator(seed, step)
        x = x_in[batch_indices(step, len(x_in), pc.batch_size, seed)]
        v1, v2 = simclr_view(x, g, pc.color_jitter), simclr_view(x, g, pc.color_jitter)
        z = model_p(torch.cat([v1, v2]).to(accelerator.device))
        loss = nt_xent(z[: len(x)], z[len(x):], pc.temperature).mean()
        if not torch.isfinite(loss):
            return {"loss": loss.item()}
        accelerator.backward(loss)
        opt_p.step()
        opt_p.zero_grad(set_to_none=True)
        return {"loss": loss.item()}

    run = run_loop("features", step_fn, steps=pc.steps, log_every=pc.log_every,
                   checkpoint_every=pc.checkpoint_every, lr_factor=warmup_cosine(pc), checkpointer=ckpt,
                   modules={"model": model}, optimizers={"optimizer": opt}, emas={}, accelerator=accelerator,
                   live_dir=live_dir, max_steps=max_steps, progress=progress)
    if run["end"] == pc.steps and accelerator.is_main_process:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.backbone.state_dict().items()},
                  str(Path(out_dir) / "backbone.safetensors"))
    return {"steps": run["end"], "resumed_from_step": run["start"], "train_seconds": run["train_seconds"],
            "history": run["history"], "backbone": model.backbone.eval(), "checkpoints": ckpt.run_dir}


@torch.no_grad()
def embed(backbone: nn.Module, x: torch.Tensor, img_size: int, batch_size: int = 512) -> torch.Tensor:
    """F's image embeddings (what c_img uses) of [-1, 1] images, resized to F's resolution."""
    from .discriminator import FeatureNetwork

    fn = FeatureNetwork(backbone, taps=[], tap_patch_embed=False)
    return torch.cat([fn(x[i:i + batch_size])[1] for i in range(0, len(x), batch_size)])


def linear_probe(z_train: torch.Tensor, y_train: torch.Tensor, z_test: torch.Tensor, y_test: torch.Tensor,
                 steps: int = 300, lr: float = 0.05, seed: int = 0) -> float:
    """Held-out accuracy of a linear (softmax) classifier on frozen, standardised features."""
    mu, sd = z_train.mean(0), z_train.std(0) + 1e-6
    a, b = (z_train - mu) / sd, (z_test - mu) / sd
    torch.manual_seed(seed)
    n_cls = int(y_train.max()) + 1
    lin = nn.Linear(a.shape[1], n_cls)
    opt = torch.optim.Adam(lin.parameters(), lr=lr, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(lin(a), y_train)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return float((lin(b).argmax(1) == y_test).float().mean())
