"""Sampling. The teacher's solvers (DDIM, DPM-Solver++, Euler via diffusers schedulers) with
classifier-free guidance; the ADD student's few-step sampler is added by the ADD issue.

Guidance on the v output: v = v(x, empty) + w * (v(x, c) - v(x, empty))  (Ho & Salimans 2022), with
w = 1 meaning no guidance (one network evaluation per step instead of two).
"""
from __future__ import annotations

import torch

from .diffusion import NoiseSchedule


def initial_noise(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Fixed-seed starting noise, generated on the CPU so every device gets the same images."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g)


def guided_v(unet, x: torch.Tensor, t: torch.Tensor, cond, uncond, w: float) -> torch.Tensor:
    """The (guided) v prediction. cond / uncond are (states, mask) pairs; uncond is unused when w == 1."""
    states, mask = cond
    if w == 1.0:
        return unet(x, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
    u_states, u_mask = uncond
    v = unet(torch.cat([x, x]), torch.cat([t, t]),
             encoder_hidden_states=torch.cat([states, u_states]),
             encoder_attention_mask=torch.cat([mask, u_mask])).sample
    v_c, v_u = v.chunk(2)
    return v_u + w * (v_c - v_u)


@torch.no_grad()
def sample_teacher(unet, schedule: NoiseSchedule, states: torch.Tensor, mask: torch.Tensor,
                   empty: tuple[torch.Tensor, torch.Tensor], noise: torch.Tensor, sampler: str = "ddim",
                   steps: int = 50, guidance_scale: float = 1.0, batch_size: int = 256,
                   progress: bool = False) -> torch.Tensor:
    """Solve the teacher's reverse process from ``noise`` at t = T-1 (pure noise) to x0 in [-1, 1].

    states/mask: (N, L, D)/(N, L) text states per sample; empty: (states, mask) of the empty prompt, (1, L, D).
    """
    from tqdm import tqdm

    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    out = []
    for i in tqdm(range(0, len(noise), batch_size), disable=not progress, desc=f"{sampler} {steps} steps"):
        x = noise[i:i + batch_size].to(device, dtype)
        n = len(x)
        cond = (states[i:i + batch_size].to(device, dtype), mask[i:i + batch_size].to(device, dtype))
        uncond = (empty[0].to(device, dtype).expand(n, -1, -1), empty[1].to(device, dtype).expand(n, -1))
        scheduler = schedule.diffusers_scheduler(sampler)
        scheduler.set_timesteps(steps, device=device)
        x = x * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            tt = t.expand(n).to(device)
            v = guided_v(unet, scheduler.scale_model_input(x, t), tt, cond, uncond, guidance_scale)
            x = scheduler.step(v, t, x).prev_sample
        out.append(x.float().clamp(-1, 1).cpu())
    return torch.cat(out)
