"""Sampling. The teacher's solvers (DDIM, DPM-Solver++, Euler via diffusers schedulers) with
classifier-free guidance, and the ADD student's few-step sampler.

Guidance on the v output: v = v(x, empty) + w * (v(x, c) - v(x, empty))  (Ho & Salimans 2022), with
w = 1 meaning no guidance (one network evaluation per step instead of two).
"""
from __future__ import annotations

import torch

from .diffusion import NoiseSchedule
from .timesteps import student_step_counts, trailing_timesteps  # noqa: F401 (re-exported)


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
                   progress: bool = False, space=None) -> torch.Tensor:
    """Solve the teacher's reverse process from ``noise`` at t = T-1 (pure noise) to x0 in [-1, 1].

    states/mask: (N, L, D)/(N, L) text states per sample; empty: (states, mask) of the empty prompt, (1, L, D).
    ``space``: a latent.VAESpace for latent teachers (noise is then latent-shaped; images are decoded).
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
        out.append(decode(space, x))
    return torch.cat(out)


def decode(space, z: torch.Tensor) -> torch.Tensor:
    """The UNet's output space -> images in [-1, 1] on the CPU (identity for pixel-space models)."""
    x = z if space is None else space.decode(z)
    return x.float().clamp(-1, 1).cpu()


def student_timesteps(steps: int, trained: list[int], T: int = 1000) -> list[int]:
    """The student's timesteps for a k-step sample (the rule of :func:`student_step_counts`): the trained
    ones when k equals their number, else the trailing spacing of k steps. Any other k is a one-line
    ValueError: the student would be queried at timesteps it was never trained on."""
    allowed = student_step_counts(trained, T)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps not in allowed:
        raise ValueError(f"steps={steps!r}: a student trained at timesteps {list(trained)} samples with "
                         f"{', '.join(map(str, allowed))} steps (other counts would use timesteps it never saw)")
    return list(trained) if steps == len(trained) else trailing_timesteps(steps, T)


def renoise_generator(seed: int) -> torch.Generator:
    """The generator of the k-step sampler's fresh re-noising draws for sampling seed ``seed``. Its stream is
    disjoint from :func:`initial_noise`'s (same seed, different generator seed): the noise added at step 2
    onwards is independent of x_T (with one seed for both it would *be* x_T for the first batch)."""
    return torch.Generator().manual_seed((seed * 0x9E3779B1 + 0x5DEECE66D) % (2 ** 63))


@torch.no_grad()
def sample_student(unet, schedule: NoiseSchedule, states: torch.Tensor, mask: torch.Tensor,
                   noise: torch.Tensor, timesteps: list[int], seed: int = 0,
                   batch_size: int = 256, space=None, x0_fn=None) -> torch.Tensor:
    """ADD's few-step sampler (section 3, "Sampling"): start from pure noise ``noise`` at timesteps[0]; at each
    student timestep predict x0 (from the network's v or epsilon output); then re-noise that prediction with
    *fresh* noise (from :func:`renoise_generator`, independent of ``noise``) to the *next* timestep and
    predict again. No guidance: one network evaluation per step. ``schedule`` is the student's.
    ``x0_fn(x_t, output, t)``: how an output becomes x0 (default ``schedule.x0_from_output``; the
    consistency baseline's boundary-scaled f, consistency.consistency_x0, makes this LCM's multistep sampler)."""
    x0_fn = schedule.x0_from_output if x0_fn is None else x0_fn
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    g = renoise_generator(seed)
    out = []
    for i in range(0, len(noise), batch_size):
        x = noise[i:i + batch_size].to(device, dtype)
        n = len(x)
        cond = (states[i:i + batch_size].to(device, dtype), mask[i:i + batch_size].to(device, dtype))
        for k, tau in enumerate(timesteps):
            t = torch.full((n,), tau, device=device, dtype=torch.long)
            v = unet(x, t, encoder_hidden_states=cond[0], encoder_attention_mask=cond[1]).sample
            x0 = x0_fn(x, v, t)
            if k + 1 < len(timesteps):
                t_next = torch.full((n,), timesteps[k + 1], device=device, dtype=torch.long)
                eps = torch.randn(x0.shape, generator=g).to(device, dtype)
                x = schedule.add_noise(x0, eps, t_next)
        out.append(decode(space, x0))
    return torch.cat(out)


def unet_input_shape(unet) -> tuple[int, int, int]:
    """(C, H, W) of the UNet's input (latent-shaped for latent models)."""
    c = unet.config
    size = c.sample_size if isinstance(c.sample_size, (tuple, list)) else (c.sample_size, c.sample_size)
    return (c.in_channels, *size)
