"""LoRA-ADD (``add.lora``): low-rank adapters on the student UNet instead of all of its weights.

The student is the teacher's UNet with peft LoRA adapters (diffusers' ``add_adapter``, as its LoRA training
examples do): W x + (alpha / r) B A x on the ``target_modules``, A Gaussian and B = 0 at the start, so the
student starts exactly as the teacher (ADD section 3.1) and only A and B train. The EMA covers the adapters
(the frozen weights never change); checkpoints hold the whole student, adapters included, so a resume is exact.
At the end the student is written twice:

- ``models/student``: the fused UNet, W + (alpha / r) B A, a plain diffusers UNet that every later stage (and
  the diffusers export) loads as it loads a fully fine-tuned student;
- ``models/student/lora``: the adapters alone in diffusers' LoRA format, which
  ``pipe.load_lora_weights(folder)`` puts onto the teacher's own pipeline (LCM-LoRA style) and
  ``unet.load_lora_adapter(folder, prefix="unet")`` onto a bare teacher UNet. The scaling alpha / r is folded
  into B, so the file means the same to any loader (tests/test_lora.py reloads it).
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

LORA_DIR = "lora"                          # the adapters' folder inside a student folder
WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' file name


def add_adapters(unet: torch.nn.Module, cfg) -> torch.nn.Module:
    """Freeze ``unet`` and add LoRA adapters as ``cfg`` (a LoRAConfig, config/add.py) says; returns ``unet``."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=list(cfg.target_modules),
                                init_lora_weights="gaussian"))
    if not any(p.requires_grad for p in unet.parameters()):
        raise ValueError(f"add.lora.target_modules {cfg.target_modules} matched no module of the student UNet")
    return unet


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def fused(unet: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``unet`` with its adapters merged into the weights and removed: a plain diffusers UNet."""
    plain = copy.deepcopy(unet)
    plain.fuse_lora()
    plain.unload_lora()
    return plain


def save_adapters(unet: torch.nn.Module, folder: str | Path, cfg) -> Path:
    """The adapters of ``unet`` in diffusers' LoRA format (keys ``unet.*``), alpha / r folded into B."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    scale = cfg.alpha / cfg.rank
    # peft's key format (lora_A / lora_B), which diffusers' loaders read as it is (its older lora.down / lora.up
    # conversion leaves conv adapters unconverted, and a mixed file loads only half of them)
    state = {k: (v * scale if ".lora_B." in k else v).detach().float().contiguous()
             for k, v in get_peft_model_state_dict(unet).items()}
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=state, weight_name=WEIGHTS)
    return Path(folder)
