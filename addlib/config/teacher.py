"""The ``teacher`` section: the pixel-space teacher trained by the pipeline (its UNet, noise schedule,
training and sampling), or a local diffusers folder used in its place (checked against params before any
compute)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal, Optional

from .loader import ConfigError, check


@dataclasses.dataclass
class UNetConfig:
    block_out_channels: list[int]   # width per resolution level (the main speed lever on a CPU)
    cross_attention: list[bool]     # cross-attention to the text states per level (put it where maps are small)
    layers_per_block: int           # resnets per down block (up blocks get one more, as in diffusers)
    attention_head_dim: int         # channels per attention head
    norm_num_groups: int            # GroupNorm groups; must divide every width

    def validate(self, where: str) -> None:
        check(self.norm_num_groups >= 1, f"{where}.norm_num_groups", f"must be >= 1, got {self.norm_num_groups}")
        check(self.attention_head_dim >= 1, f"{where}.attention_head_dim",
              f"must be >= 1, got {self.attention_head_dim}")
        check(len(self.block_out_channels) == len(self.cross_attention), f"{where}.cross_attention",
              "needs one entry per block_out_channels level")
        check(len(self.block_out_channels) >= 2, f"{where}.block_out_channels", "needs at least two levels")
        for c in self.block_out_channels:
            check(c > 0 and c % self.norm_num_groups == 0, f"{where}.block_out_channels",
                  f"width {c} is not a positive multiple of norm_num_groups={self.norm_num_groups}")
            check(not any(self.cross_attention) or c % self.attention_head_dim == 0,
                  f"{where}.attention_head_dim", f"must divide every width, {c} % {self.attention_head_dim} != 0")
        check(self.layers_per_block >= 1, f"{where}.layers_per_block", "must be >= 1")


@dataclasses.dataclass
class ScheduleConfig:
    num_train_timesteps: int          # T; timesteps are 0..T-1, t = T-1 is pure noise (zero terminal SNR)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
    beta_start: float
    beta_end: float
    prediction_type: Literal["v_prediction", "epsilon"]   # what the UNet outputs
    rescale_zero_terminal_snr: bool   # Lin et al. 2024: t = T-1 is pure noise (ADD's setting; needs v_prediction)

    def validate(self, where: str) -> None:
        check(self.num_train_timesteps >= 10, f"{where}.num_train_timesteps", "must be >= 10")
        check(0 < self.beta_start < self.beta_end < 1, f"{where}.beta_start",
              f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        check(not (self.rescale_zero_terminal_snr and self.prediction_type == "epsilon"),
              f"{where}.prediction_type", "an epsilon-prediction model cannot give x0 from pure noise "
              "(alpha_T = 0 at zero terminal SNR): use v_prediction or rescale_zero_terminal_snr: false")


@dataclasses.dataclass
class TrainConfig:
    steps: int               # optimizer steps
    batch_size: int          # global batch size
    lr: float                # AdamW learning rate
    warmup_steps: int        # linear learning-rate warm-up
    weight_decay: float
    grad_clip: float         # max global grad norm (0 = off)
    cond_dropout: float      # probability of replacing the caption by the empty prompt (for CFG)
    ema_decay: float         # EMA of the weights; the EMA model is the one saved
    checkpoint_every: int    # steps between resumable checkpoints
    log_every: int           # steps between logged loss values
    num_threads: int         # torch CPU threads (0 = leave torch's default)
    mixed_precision: Literal["no", "fp16", "bf16"]

    def validate(self, where: str) -> None:
        check(self.steps >= 1, f"{where}.steps", f"must be >= 1, got {self.steps}")
        check(self.batch_size >= 1, f"{where}.batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.lr > 0, f"{where}.lr", f"must be > 0, got {self.lr}")
        check(self.warmup_steps >= 0, f"{where}.warmup_steps", "must be >= 0")
        check(self.weight_decay >= 0, f"{where}.weight_decay", "must be >= 0")
        check(self.grad_clip >= 0, f"{where}.grad_clip", "must be >= 0")
        check(0.0 <= self.cond_dropout < 1.0, f"{where}.cond_dropout", "must be in [0, 1)")
        check(0.0 <= self.ema_decay < 1.0, f"{where}.ema_decay", "must be in [0, 1)")
        check(self.checkpoint_every >= 1, f"{where}.checkpoint_every", "must be >= 1")
        check(self.log_every >= 1, f"{where}.log_every", "must be >= 1")
        check(self.num_threads >= 0, f"{where}.num_threads", "must be >= 0")


@dataclasses.dataclass
class SampleConfig:
    sampler: Literal["ddim", "dpmsolver++", "euler"]
    steps: int                # sampler steps (network evaluations per image without guidance)
    guidance_scale: float     # classifier-free guidance w; 1 = off
    per_prompt: int           # images per prompt (grid columns)
    seed: int                 # fixed seed of the grid's noise
    prompts: list[str]        # one grid row each

    def validate(self, where: str) -> None:
        check(1 <= self.steps <= 1000, f"{where}.steps", f"must be in [1, 1000], got {self.steps}")
        check(self.guidance_scale >= 0, f"{where}.guidance_scale", "must be >= 0")
        check(self.per_prompt >= 1, f"{where}.per_prompt", "must be >= 1")
        check(len(self.prompts) >= 1, f"{where}.prompts", "needs at least one prompt")


@dataclasses.dataclass
class TeacherConfig:
    # A local diffusers text-to-image folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/; SD 1.5/2.1
    # class; SDXL class with text_encoder_2/ and tokenizer_2/ too) used as the teacher instead of training one: the `teacher` stage then only records and samples
    # it, and `unet`/`train` are unused. null = train the pixel-space teacher below.
    pretrained: Optional[str]
    unet: UNetConfig
    schedule: ScheduleConfig
    train: TrainConfig
    sample: SampleConfig

    def check_inputs(self, root: Path, where: str = "teacher") -> None:
        if self.pretrained:
            folder = Path(self.pretrained) if Path(self.pretrained).is_absolute() else root / self.pretrained
            check_pipeline_folder(folder, f"{where}.pretrained")
            check_schedule(self.schedule, folder, f"{where}.schedule")


# A pretrained teacher folder is checked against params before any compute (latent.py loads it).
PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def check_pipeline_folder(folder: Path, where: str = "teacher.pretrained") -> None:
    if not folder.is_dir():
        raise ConfigError(f"{where}: folder not found: {folder}")
    parts = PIPELINE_PARTS + (("text_encoder_2", "tokenizer_2") if (folder / "text_encoder_2").is_dir() else ())
    missing = [p for p in parts if not (folder / p).is_dir()]
    if missing:
        raise ConfigError(f"{where}: {folder} is not a diffusers text-to-image folder (missing {', '.join(m + '/' for m in missing)})")


def check_schedule(cfg: ScheduleConfig, folder: Path, where: str = "teacher.schedule") -> None:
    """params.yaml's schedule must be the one the checkpoint was trained with, rescaling included: the frozen
    teacher is always queried on its own schedule (a stock SD checkpoint: ``rescale_zero_terminal_snr: false``).
    Zero terminal SNR for the student is ``add.student_zero_terminal_snr``."""
    sc = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    theirs = {"num_train_timesteps": sc.get("num_train_timesteps", 1000), "beta_schedule": sc.get("beta_schedule"),
              "beta_start": sc.get("beta_start"), "beta_end": sc.get("beta_end"),
              "prediction_type": sc.get("prediction_type", "epsilon"),
              "rescale_zero_terminal_snr": bool(sc.get("rescale_betas_zero_snr", False))}
    for key, value in theirs.items():
        ours = getattr(cfg, key)
        same = abs(ours - value) <= 1e-9 * max(1.0, abs(value)) if isinstance(ours, float) else ours == value
        if not same:
            raise ConfigError(f"{where}.{key}: params say {ours!r}, the checkpoint's scheduler says {value!r}")
