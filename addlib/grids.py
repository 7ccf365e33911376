"""A few-step student's sample grid: one row per prompt, a block per step count, the same noise in every block
(the add stage's progress and final grids, the ablation runs', the consistency baseline's)."""
from __future__ import annotations

from pathlib import Path

import torch

from .diffusion import NoiseSchedule
from .text import TextCache


def save_student_grid(student, schedule: NoiseSchedule, text: TextCache, rows: list[int], cfg, steps_list,
                      path: Path, title: str, space=None, timesteps=None, x0_fn=None) -> Path:
    """One row per prompt; a block of ``sample_per_prompt`` columns per step count, the same noise seeds in
    every block (so a column shows one sample refined by more steps). ``timesteps(k)`` and ``x0_fn``: another
    few-step student's timesteps and x0 (the consistency baseline's); by default ADD's."""
    from .plots import block_grid
    from .sampling import initial_noise, sample_student, student_timesteps, unet_input_shape

    if timesteps is None:
        timesteps = lambda k: student_timesteps(k, cfg.student_timesteps, schedule.T)  # noqa: E731
    k = cfg.sample_per_prompt
    ids = torch.tensor(rows).repeat_interleave(k)
    states, mask, _ = text[ids]
    noise = initial_noise(len(ids), unet_input_shape(student), cfg.sample_seed)
    blocks = []
    for n_steps in steps_list:
        x = sample_student(student, schedule, states, mask, noise, timesteps(n_steps), seed=cfg.sample_seed,
                           space=space, x0_fn=x0_fn)
        blocks.append((f"{n_steps} step{'s' if n_steps > 1 else ''}", x))
    return block_grid(blocks, [text.captions[r] for r in rows], k, path, title)
