"""Consistency distillation (Song et al. 2023; LCM, Luo et al. 2023) from the same teacher on the same images:
the distillation method a user would pick instead of ADD, trained by this pipeline as the preference study's
baseline (stage ``consistency``).

The consistency function f(x, t) = c_skip(t) x + c_out(t) x0(x, t), with x0 read from the student's v (or
epsilon) output on the teacher's schedule and LCM's boundary scalings (c_skip(0) = 1, c_out(0) = 0, so
f(x, 0) = x). One training step, per sample:

1. index i ~ U{0..N-1} on the teacher's DDIM grid t_i = (i + 1) T/N - 1; the pair (t_{n+k}, t_n) =
   (t_i, max(t_i - k, 0)) with LCM's skipping interval k = T/N;
2. x_{t_{n+k}} = alpha x0 + sigma eps from a training image (latent for a latent teacher);
3. the target: one DDIM step of the frozen teacher, with classifier-free guidance w, from t_{n+k} to t_n, then
   the *target network* (an EMA of the student with decay mu) at t_n, no gradient;
4. the loss: d(f_theta(x_{t_{n+k}}, t_{n+k}), target), per sample (pseudo-Huber by default, as iCT and LCM).

Sampling is ADD's few-step loop (sampling.sample_student) with f in place of the plain x0 estimate, at LCM's
timesteps on the same grid. The budget is ADD's: add.train (steps, batch, optimiser, learning rate, EMA of the
saved weights) is used as it is, so the two students see the same images for the same number of updates.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import losses
from .data import Dataset, to_float
from .diffusion import NoiseSchedule
from .models import EMA
from .text import TextCache
from .training import (Checkpointer, batch_indices, content_digest, global_means, run_loop, setup_run, shard,
                       step_generator)

if TYPE_CHECKING:  # annotations only
    from .config.add import ADDTrainConfig
    from .config.consistency import ConsistencyConfig

DISTANCES = {"mse": losses.distance_mse, "l1": losses.distance_l1, "pseudo_huber": losses.distance_pseudo_huber}


@dataclasses.dataclass(frozen=True)
class SkipGrid:
    """The teacher solver's grid of N timesteps t_i = (i + 1) k - 1, k = T / N (LCM's DDIM timesteps)."""
    T: int
    N: int

    def __post_init__(self):
        if self.N < 1 or self.T % self.N:
            raise ValueError(f"consistency.solver_steps={self.N} must divide num_train_timesteps={self.T}")

    @property
    def k(self) -> int:
        return self.T // self.N

    def timesteps(self) -> torch.Tensor:
        return torch.arange(1, self.N + 1) * self.k - 1

    def pair(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(t_{n+k}, t_n) for grid indices ``index``: the start and the end of one teacher solver step."""
        start = self.timesteps()[index]
        return start, (start - self.k).clamp_min(0)

    def sampling(self, steps: int) -> list[int]:
        """LCM's multistep timesteps (diffusers' LCMScheduler): ``steps`` evenly spaced positions of the grid
        from the top, position i = floor(i N / steps)."""
        if not 1 <= steps <= self.N:
            raise ValueError(f"steps={steps}: a consistency student on a {self.N}-step grid samples 1..{self.N} steps")
        return self.timesteps().flip(0)[torch.arange(steps) * self.N // steps].tolist()


def boundary(t: torch.Tensor, like: torch.Tensor, scaling: float, sigma_data: float) -> tuple[torch.Tensor, torch.Tensor]:
    """LCM's c_skip(t) = sigma_d^2 / ((s t)^2 + sigma_d^2), c_out(t) = s t / sqrt((s t)^2 + sigma_d^2),
    shaped to broadcast against ``like``."""
    st = (t.to(like.device).double() * scaling).view(-1, *([1] * (like.ndim - 1)))
    c_skip = sigma_data ** 2 / (st ** 2 + sigma_data ** 2)
    c_out = st / (st ** 2 + sigma_data ** 2).sqrt()
    return c_skip.to(like.dtype), c_out.to(like.dtype)


def consistency_x0(cfg: ConsistencyConfig, schedule: NoiseSchedule):
    """f as an ``x0_fn(x_t, output, t)`` for sampling.sample_student: the boundary-scaled x0 estimate."""
    def x0_fn(x_t: torch.Tensor, out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c_skip, c_out = boundary(t, x_t, cfg.timestep_scaling, cfg.sigma_data)
        return c_skip * x_t + c_out * schedule.x0_from_output(x_t, out, t)
    return x0_fn


@dataclasses.dataclass
class Draws:
    """Every random draw of one step, for the global batch: grid indices and the forward noise."""
    index: torch.Tensor
    eps: torch.Tensor


def draw_step(grid: SkipGrid, generator: torch.Generator, batch: int, shape: tuple[int, ...]) -> Draws:
    return Draws(torch.randint(0, grid.N, (batch,), generator=generator), torch.randn((batch, *shape), generator=generator))


class ConsistencyLoss:
    """The consistency-distillation loss, per sample (the module header's steps 2-4)."""

    def __init__(self, cfg: ConsistencyConfig, teacher_unet, schedule: NoiseSchedule, empty):
        self.cfg, self.teacher, self.schedule = cfg, teacher_unet, schedule
        self.grid = SkipGrid(schedule.T, cfg.solver_steps)
        self.empty = empty                       # (states, mask) of the empty prompt, batch 1
        self.f = consistency_x0(cfg, schedule)
        self.distance = DISTANCES[cfg.distance]

    def target(self, target_net, z_start: torch.Tensor, t_start: torch.Tensor, t_prev: torch.Tensor, cond) -> torch.Tensor:
        """One guided DDIM step (eta = 0) of the frozen teacher from t_{n+k} to t_n, then the target network's
        f at t_n; no gradient."""
        from .sampling import guided_v

        sched, (states, mask) = self.schedule, cond
        with torch.no_grad():
            n = len(z_start)
            empty = tuple(a.expand(n, *a.shape[1:]) for a in self.empty)
            v = guided_v(self.teacher, z_start, t_start, cond, empty, self.cfg.guidance)
            z_prev = sched.add_noise(sched.x0_from_output(z_start, v, t_start),
                                     sched.eps_from_output(z_start, v, t_start), t_prev)
            return self.f(z_prev, target_net(z_prev, t_prev, encoder_hidden_states=states,
                                             encoder_attention_mask=mask).sample, t_prev)

    def __call__(self, student, target_net, z0: torch.Tensor, cond, index: torch.Tensor, eps: torch.Tensor) -> dict:
        states, mask = cond
        t_start, t_prev = (a.to(z0.device) for a in self.grid.pair(index.cpu()))
        z_start = self.schedule.add_noise(z0, eps, t_start)
        f_online = self.f(z_start, student(z_start, t_start, encoder_hidden_states=states,
                                           encoder_attention_mask=mask).sample, t_start)
        target = self.target(target_net, z_start, t_start, t_prev, cond)
        return {"loss": self.distance(f_online.float(), target.float()), "t_start": t_start}


def train_consistency(cfg: ConsistencyConfig, tc: ADDTrainConfig, teacher, seed: int, train: Dataset,
                      text: TextCache, out_dir: str | Path, checkpoint_dir: str | Path,
                      live_dir: str | Path | None = None, max_steps: int | None = None,
                      progress: bool = True) -> dict:
    """Train a consistency student from ``teacher`` (a latent.Teacher) with ADD's budget ``tc``; save its EMA
    weights (decay tc.ema_decay; the target network is a separate EMA with decay cfg.target_decay)."""
    from .config import fingerprint

    if tc.gradient_accumulation != 1:
        raise ValueError("the consistency baseline trains without gradient accumulation: set "
                         "add.train.gradient_accumulation to 1 (or add it to consistency.train_consistency)")
    inputs = content_digest(train.images, train.labels, train.captions, text.captions, text.states, text.mask,
                            teacher.unet, teacher.space)
    # 1. Devices, processes, data; the teacher's schedule, grid and space.
    accelerator, x_all, cap_all = setup_run(tc, train, text)
    dev = accelerator.device
    sched, space = teacher.schedule, teacher.space.to(dev)
    latent_shape = space.latent_shape(tuple(x_all.shape[1:]))
    # 2. Networks: the student from the teacher, its target network, the frozen teacher.
    torch.manual_seed(seed)
    student = copy.deepcopy(teacher.unet).float().requires_grad_(True).train().to(dev)
    teacher_unet = teacher.unet.eval().requires_grad_(False).to(dev)
    target_ema = EMA(student, cfg.target_decay)
    target_net = copy.deepcopy(student).eval().requires_grad_(False)
    ema = EMA(student, tc.ema_decay)
    opt = torch.optim.Adam(student.parameters(), lr=tc.lr_student, betas=tuple(tc.betas))
    ckpt = Checkpointer(checkpoint_dir, fingerprint(cfg, tc, teacher.schedule.cfg, teacher.source, seed, inputs))
    raw_student = student
    student, opt_p = accelerator.prepare(student, opt)
    empty_1 = tuple(a.to(dev) for a in text[torch.tensor([0])][:2])
    loss_fn = ConsistencyLoss(cfg, teacher_unet, sched, empty_1)

    # 3. One step: draws for the global batch, this process's share, the loss, the update, both EMAs.
    def step_fn(step: int) -> dict:
        d = draw_step(loss_fn.grid, step_generator(seed, step), tc.batch_size, latent_shape)
        idx = batch_indices(step, len(x_all), tc.batch_size, seed)
        x0, cap, index, eps = (shard(a, accelerator) for a in (x_all[idx], cap_all[idx], d.index, d.eps))
        states, mask, _ = text[cap]
        with torch.no_grad():
            z0 = space.encode(to_float(x0).to(dev))
        target_ema.copy_to(target_net)
        with accelerator.autocast():
            out = loss_fn(student, target_net, z0, (states.to(dev), mask.to(dev)), index, eps.to(dev))
        loss = out["loss"].mean()
        if not torch.isfinite(loss):
            return {"loss": loss.item()}  # run_loop stops with a clear message before any update
        opt_p.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if tc.grad_clip > 0:
            accelerator.clip_grad_norm_(student.parameters(), tc.grad_clip)
        opt_p.step()
        target_ema.update(raw_student)
        ema.update(raw_student)
        return global_means({"loss": loss.item()}, accelerator)

    # 4. Train (resuming from the latest matching checkpoint); save the EMA weights as a diffusers model.
    run = run_loop("consistency", step_fn, steps=tc.steps, log_every=tc.log_every,
                   checkpoint_every=tc.checkpoint_every,
                   lr_factor=lambda k: min(1.0, (k + 1) / max(1, tc.warmup_steps)), checkpointer=ckpt,
                   modules={"student": raw_student}, optimizers={"optimizer": opt},
                   emas={"ema": ema, "target": target_ema}, accelerator=accelerator, live_dir=live_dir,
                   max_steps=max_steps, progress=progress)
    saved = copy.deepcopy(raw_student).eval().requires_grad_(False)
    ema.copy_to(saved)
    if accelerator.is_main_process and run["end"] == tc.steps:
        saved.save_pretrained(out_dir, safe_serialization=True)
    return {"steps": run["end"], "resumed_from_step": run["start"], "train_seconds": run["train_seconds"],
            "images_per_second": run["end"] * tc.batch_size / max(run["train_seconds"], 1e-9),
            "history": run["history"], "student": saved, "main_process": accelerator.is_main_process,
            "checkpoints": ckpt.run_dir}
