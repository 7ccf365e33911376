"""Networks: the text-conditional diffusion UNet (teacher, and later the ADD student) and its EMA.

The UNet is diffusers' ``UNet2DConditionModel`` cross-attending to the text encoder's token states, so a
trained model is saved and loaded with ``save_pretrained``/``from_pretrained`` (safetensors) like any
diffusers model. On a CPU, cross-attention at the highest resolution roughly doubles the step cost, so
``UNetConfig.cross_attention`` places it per resolution level (the default: only the smallest map).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import UNet2DConditionModel

if TYPE_CHECKING:  # annotations only
    from .config.teacher import UNetConfig


def build_unet(cfg: UNetConfig, resolution: int, channels: int, cross_attention_dim: int) -> UNet2DConditionModel:
    """A randomly initialised UNet2DConditionModel predicting v (same channels in and out)."""
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.cross_attention]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.cross_attention)]
    mid = "UNetMidBlock2DCrossAttn" if cfg.cross_attention[-1] else None
    return UNet2DConditionModel(
        sample_size=resolution,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        mid_block_type=mid,
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
    )


def load_unet(path: str | Path, vae_scale_factor: int | None = None) -> UNet2DConditionModel:
    """A saved UNet folder (a trained teacher or student, a pipeline's ``unet/``); an SDXL-class one (added
    ``text_time`` conditioning) as :class:`sdxl.SDXLUNet`, with ``vae_scale_factor`` (its VAE's) recorded."""
    if json.loads((Path(path) / "config.json").read_text()).get("addition_embed_type") == "text_time":
        from .sdxl import SDXLUNet

        unet = SDXLUNet.from_pretrained(path, local_files_only=True)
        if vae_scale_factor is not None:
            unet.register_to_config(_vae_scale_factor=int(vae_scale_factor))
        return unet
    return UNet2DConditionModel.from_pretrained(path, local_files_only=True)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class EMA:
    """Exponential moving average of a model's floating-point state.

    decay_k = min(decay, (1 + k) / (10 + k)) after k updates, so early averages are not dominated by the
    random initialisation (the warm-up used by diffusers' EMAModel). The state is a flat tensor dict,
    stored with safetensors.
    """

    def __init__(self, model: torch.nn.Module, decay: float, keys: set[str] | None = None):
        """``keys``: average only these entries of the state (LoRA-ADD: the adapters; the rest never moves)."""
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()
                       if v.dtype.is_floating_point and (keys is None or k in keys)}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach().float(), 1 - d)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        state = model.state_dict()
        for k, v in self.shadow.items():
            state[k].copy_(v.to(state[k].dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.shadow, "__updates__": torch.tensor(self.updates)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        self.updates = int(state.pop("__updates__"))
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise ValueError(f"EMA state does not match the model ({len(missing)} keys differ)")
        self.shadow = {k: v.float().to(self.shadow[k].device).clone() for k, v in state.items()}
