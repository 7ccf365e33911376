"""The forward process: a variance-preserving schedule with zero terminal SNR, and v-prediction algebra.

ADD (section 3.1 and Appendix) needs the last student timestep to be pure noise, so the schedule is rescaled
to zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
Algorithm 1): sqrt(alpha_bar) is shifted and scaled so that it is exactly 0 at t = T-1 and unchanged at t = 0.
With alpha_T = 0 an epsilon-prediction model cannot recover x0, hence v-prediction (Salimans & Ho 2022):

    x_t = alpha_t x0 + sigma_t eps,        v = alpha_t eps - sigma_t x0,       alpha_t^2 + sigma_t^2 = 1
    x0  = alpha_t x_t - sigma_t v,         eps = sigma_t x_t + alpha_t v.

Pretrained epsilon-prediction teachers (SD 1.5 class) are supported on their original schedule
(``rescale_zero_terminal_snr: false``): x0 = (x_t - sigma_t eps) / alpha_t, with alpha_{T-1} > 0. The
``*_from_output`` methods convert whatever the network predicts.

Two schedules in ADD: the frozen teacher is always queried on the schedule it was *trained* with
(``teacher.schedule``, checked against a pretrained checkpoint's scheduler config), while the student's may be
that schedule rescaled to zero terminal SNR (:func:`student_schedule`, ``add.student_zero_terminal_snr``).
For the embedded default both are the same (its teacher is trained at zero terminal SNR).
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # annotations only
    from .config.teacher import ScheduleConfig


def base_betas(cfg: ScheduleConfig) -> torch.Tensor:
    T = cfg.num_train_timesteps
    if cfg.beta_schedule == "linear":
        return torch.linspace(cfg.beta_start, cfg.beta_end, T, dtype=torch.float64)
    if cfg.beta_schedule == "scaled_linear":
        return torch.linspace(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, T, dtype=torch.float64) ** 2
    # squaredcos_cap_v2 (Nichol & Dhariwal 2021), betas capped at 0.999
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, Algorithm 1: keep sqrt(alpha_bar_0), make sqrt(alpha_bar_{T-1}) exactly 0."""
    sqrt_ab = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ab = sqrt_ab ** 2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1 - alphas


def student_schedule(teacher: ScheduleConfig, zero_terminal_snr: bool) -> "NoiseSchedule":
    """The student's schedule: the teacher's betas, rescaled to zero terminal SNR if ``zero_terminal_snr``
    (ADD section 3.1: the first student step t = T-1 is then pure noise; needs v-prediction, the config checks
    it), else the teacher's own schedule. A stock SD 2.1-v checkpoint's student thus starts from x0 = -v at
    t = T-1, where its teacher had alpha = 0.068; an epsilon student (SD 1.5) keeps the stock schedule and takes
    pure noise as x_{T-1}, as SD's own samplers do."""
    return NoiseSchedule(dataclasses.replace(teacher, rescale_zero_terminal_snr=zero_terminal_snr
                                             or teacher.rescale_zero_terminal_snr))


class NoiseSchedule:
    """alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t) for integer t in [0, T)."""

    def __init__(self, cfg: ScheduleConfig):
        self.cfg = cfg
        self.T = cfg.num_train_timesteps
        self.prediction_type = cfg.prediction_type
        betas = base_betas(cfg)
        if cfg.rescale_zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        if cfg.rescale_zero_terminal_snr:
            self.alphas_cumprod[-1] = 0.0  # exact; the cumulative product leaves ~1e-20 of rounding
        self._alpha = self.alphas_cumprod.sqrt().float()
        self._sigma = (1 - self.alphas_cumprod).sqrt().float()

    def _gather(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        out = table.to(like.device)[t.long()].to(like.dtype)
        return out.view(-1, *([1] * (like.ndim - 1)))

    def alpha(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self._gather(self._alpha, t, like)

    def sigma(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self._gather(self._sigma, t, like)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        ab = self.alphas_cumprod[t.long().cpu()]
        return ab / (1 - ab)

    # --- forward process and v-parameterisation --------------------------------------------------
    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.alpha(t, x0) * x0 + self.sigma(t, x0) * eps

    def v_target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.alpha(t, x0) * eps - self.sigma(t, x0) * x0

    def x0_from_v(self, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.alpha(t, x_t) * x_t - self.sigma(t, x_t) * v

    def eps_from_v(self, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.sigma(t, x_t) * x_t + self.alpha(t, x_t) * v

    # --- whatever the network predicts (v or eps) -> x0, eps, and its training target -----------------
    def x0_from_output(self, x_t: torch.Tensor, out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "v_prediction":
            return self.x0_from_v(x_t, out, t)
        return (x_t - self.sigma(t, x_t) * out) / self.alpha(t, x_t)

    def eps_from_output(self, x_t: torch.Tensor, out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.eps_from_v(x_t, out, t) if self.prediction_type == "v_prediction" else out

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.v_target(x0, eps, t) if self.prediction_type == "v_prediction" else eps

    # --- the same schedule as a diffusers scheduler, for the teacher's samplers ---------------------
    def diffusers_scheduler(self, sampler: str):
        """A diffusers scheduler over exactly these betas (checked in tests), v-prediction, trailing steps."""
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

        common = dict(num_train_timesteps=self.T, beta_schedule=self.cfg.beta_schedule,
                      beta_start=self.cfg.beta_start, beta_end=self.cfg.beta_end,
                      prediction_type=self.prediction_type,
                      rescale_betas_zero_snr=self.cfg.rescale_zero_terminal_snr,
                      timestep_spacing="trailing")
        if sampler == "ddim":
            return DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **common)
        if sampler == "dpmsolver++":
            return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                               final_sigmas_type="zero", **common)
        if sampler == "euler":
            return EulerDiscreteScheduler(**common)
        raise ValueError(f"unknown sampler {sampler!r} (ddim, dpmsolver++, euler)")
