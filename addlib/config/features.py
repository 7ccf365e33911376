"""The ``features`` section: F, the discriminator's frozen feature network (a small ViT pretrained by the
``features`` stage, or local timm weights such as DINOv2), and its self-supervised pretraining."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

from .loader import check


@dataclasses.dataclass
class FeaturePretrainConfig:
    objective: Literal["simclr", "none"]  # simclr: self-supervised contrastive; none: frozen random init
    steps: int
    batch_size: int          # images per step (two augmented views each)
    lr: float
    warmup_steps: int
    weight_decay: float
    temperature: float       # NT-Xent temperature
    color_jitter: bool       # the views' brightness/saturation/contrast jitter (SimCLR's); false: F sees contrast
    probe_steps: int         # linear-probe optimisation steps (quality readout, not training)
    checkpoint_every: int
    log_every: int
    num_threads: int

    def validate(self, where: str) -> None:
        check(self.steps >= 1 and self.batch_size >= 2, f"{where}.steps", "need steps >= 1 and batch_size >= 2")
        check(self.lr > 0 and self.temperature > 0, f"{where}.lr", "lr and temperature must be > 0")
        check(self.checkpoint_every >= 1 and self.log_every >= 1, f"{where}.log_every", "must be >= 1")
        check(self.probe_steps >= 1, f"{where}.probe_steps", f"must be >= 1, got {self.probe_steps}")
        check(self.warmup_steps >= 0 and self.weight_decay >= 0, f"{where}.warmup_steps",
              "warmup_steps and weight_decay must be >= 0")
        check(self.num_threads >= 0, f"{where}.num_threads", f"must be >= 0, got {self.num_threads}")


@dataclasses.dataclass
class FeatureNetConfig:
    source: Literal["in_domain", "timm"]  # in_domain: pretrained by the `features` stage; timm: local weights
    timm_name: str           # timm architecture (for in_domain, its family with the sizes below)
    weights: Optional[str]   # local weights file for source=timm (e.g. DINOv2 ViT-S/14 .safetensors)
    img_size: int            # F's input resolution; images are resized to it
    patch_size: int          # in_domain only
    embed_dim: int           # in_domain only
    depth: int               # in_domain only
    num_heads: int           # in_domain only
    taps: list[int]          # 0-based blocks whose token sequences feed the heads
    tap_patch_embed: bool    # also a head on the patch embedding (StyleGAN-T: yes)
    pretrain: FeaturePretrainConfig

    def validate(self, where: str) -> None:
        check(len(self.taps) >= 1, f"{where}.taps", "needs at least one block")
        check(self.img_size >= 1, f"{where}.img_size", f"must be >= 1, got {self.img_size}")
        check(not self.timm_name.lower().startswith(("hf-hub:", "hf_hub:")), f"{where}.timm_name",
              f"{self.timm_name!r} would download from the Hugging Face hub at run time: give timm's architecture "
              "name (e.g. vit_small_patch14_dinov2) with source: timm and a local weights file")
        if self.source == "in_domain":
            for key in ("patch_size", "embed_dim", "depth", "num_heads"):
                check(getattr(self, key) >= 1, f"{where}.{key}", f"must be >= 1, got {getattr(self, key)}")
            check(all(0 <= t < self.depth for t in self.taps), f"{where}.taps",
                  f"blocks must be in [0, depth={self.depth})")
            check(self.img_size % self.patch_size == 0, f"{where}.patch_size",
                  f"must divide img_size={self.img_size}")
            check(self.embed_dim % self.num_heads == 0, f"{where}.num_heads", "must divide embed_dim")
        else:
            check(bool(self.weights), f"{where}.weights", "a local weights file is required when source is 'timm'")

    def check_inputs(self, root: Path, where: str = "features") -> None:
        if self.source == "timm":
            p = Path(self.weights) if Path(self.weights).is_absolute() else root / self.weights
            check(p.is_file(), f"{where}.weights", f"weights file not found: {p}")
