"""Where the teacher lives: pixel space (the embedded default, trained by the ``teacher`` stage) or the latent
space of a pretrained text-to-image checkpoint (Stable Diffusion class), given as a local diffusers folder.

A :class:`Teacher` bundles what ADD needs from it: the frozen UNet (the student starts as a copy), the noise
schedule it was trained with, and the *space* its UNet works in. A space maps pixels in [-1, 1] to the UNet's
input and back:

- :class:`PixelSpace`: the identity (the embedded default; nothing changes there).
- :class:`VAESpace`: a frozen ``AutoencoderKL``; ``encode`` takes the posterior mean (deterministic, so a
  resumed or multi-process run draws nothing extra) times the VAE's scaling factor, ``decode`` inverts that
  and runs the decoder. ADD (section 3.3, latent models) decodes the student's and the teacher's x0 to pixels
  for the distillation loss and shows the discriminator decoded pixels; gradients of both losses flow through
  the decoder into the student. The decoder dominates the memory of that backward pass at 512 px (README).

A pretrained folder is ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/`` as
``save_pretrained`` writes them (SD 1.5 / 2.1 layout). Its scheduler config must agree with
``teacher.schedule`` in params.yaml (one config path: params are the truth, the checkpoint is checked against
them, and a mismatch is a one-line error naming the key).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .config import ConfigError  # noqa: F401 (re-exported)
from .config.teacher import TeacherConfig, check_pipeline_folder, check_schedule  # noqa: F401 (re-exported)
from .diffusion import NoiseSchedule
from .models import load_unet


class PixelSpace(torch.nn.Module):
    """The identity: the UNet works on pixels."""

    latent = False
    factor = 1  # pixels per UNet input position

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def latent_shape(self, pixel_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(pixel_shape)


class VAESpace(torch.nn.Module):
    """A frozen AutoencoderKL between pixels (C, H, W) in [-1, 1] and latents (c, H/f, W/f)."""

    latent = True

    def __init__(self, vae):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        c = vae.config
        self.scaling = float(c.scaling_factor)
        self.shift = float(getattr(c, "shift_factor", None) or 0.0)
        self.factor = 2 ** (len(c.block_out_channels) - 1)
        self.channels = int(c.latent_channels)

    def train(self, mode: bool = True):  # frozen: always eval
        return super().train(False)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        mean = self.vae.encode(x.to(dtype)).latent_dist.mean
        return ((mean - self.shift) * self.scaling).float()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode((z / self.scaling + self.shift).to(dtype)).sample

    def latent_shape(self, pixel_shape: tuple[int, ...]) -> tuple[int, ...]:
        _, h, w = pixel_shape
        if h % self.factor or w % self.factor:
            raise ConfigError(f"data.resolution: {h}x{w} is not divisible by the VAE's factor {self.factor}")
        return (self.channels, h // self.factor, w // self.factor)


@dataclasses.dataclass
class Teacher:
    """The frozen teacher: its UNet, its noise schedule and the space its UNet works in."""
    unet: torch.nn.Module
    schedule: NoiseSchedule
    space: torch.nn.Module
    source: str                      # 'trained' or the pretrained folder


def load_pretrained(cfg: TeacherConfig, folder: str | Path) -> Teacher:
    """A local diffusers text-to-image folder -> Teacher (UNet, schedule from params checked against the
    checkpoint, VAE space)."""
    from diffusers import AutoencoderKL

    folder = Path(folder)
    check_pipeline_folder(folder)
    check_schedule(cfg.schedule, folder)
    space = VAESpace(AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True))  # never the network
    unet = load_unet(folder / "unet", space.factor)  # SDXL-class: an sdxl.SDXLUNet
    return Teacher(unet, NoiseSchedule(cfg.schedule), space, str(folder))


def load_teacher(cfg: TeacherConfig, model_dir: str | Path) -> Teacher:
    """The teacher of a run: the pretrained folder named in params, or the UNet the ``teacher`` stage trained
    (saved in ``model_dir``)."""
    if cfg.pretrained:
        return load_pretrained(cfg, cfg.pretrained)
    return Teacher(load_unet(model_dir), NoiseSchedule(cfg.schedule), PixelSpace(), "trained")
