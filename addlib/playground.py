"""What notebooks/playground.ipynb calls: the trained student at a few step counts beside the teacher's solvers,
on your prompts and the same noise, with the time each took on this machine."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from . import config as C


def compare(p: C.Params, prompts: list[str], student_steps: list[int], teacher_rows: list[tuple[str, int, float]],
            per_prompt: int = 4, seed: int = 0, student_dir: str | Path = "models/student",
            teacher_dir: str | Path = "models/teacher") -> tuple[list[tuple[str, torch.Tensor]], list[dict]]:
    """Blocks for plots.block_grid (``per_prompt`` samples of each prompt per block, the same noise in every
    block) and one timing row per block: the student at each of ``student_steps``, then the teacher at each
    (sampler, steps, guidance) of ``teacher_rows``."""
    from .latent import load_teacher
    from .export import ADDSampler
    from .sampling import initial_noise, sample_teacher, unet_input_shape
    from .text import TextEncoder

    student = ADDSampler.from_pretrained(student_dir)
    teacher = load_teacher(p.teacher, teacher_dir)
    encoder = TextEncoder.from_config(p.text_encoder)
    batch = [q for q in prompts for _ in range(per_prompt)]
    states, mask, _ = encoder(batch)
    empty = encoder([""])[:2]
    noise = initial_noise(len(batch), unet_input_shape(teacher.unet), seed)
    blocks, timings = [], []
    for k in student_steps:
        t0 = time.perf_counter()
        x = student(batch, steps=k, seed=seed)
        seconds = time.perf_counter() - t0
        blocks.append((f"ADD student\n{k} step{'s' if k > 1 else ''}", x))
        timings.append({"model": "student", "sampler": "add", "steps": k, "guidance": 1.0,
                        "seconds_per_image": seconds / len(batch)})
    for sampler, steps, w in teacher_rows:
        t0 = time.perf_counter()
        x = sample_teacher(teacher.unet.eval(), teacher.schedule, states, mask, empty, noise, sampler, steps, w,
                           space=teacher.space)
        seconds = time.perf_counter() - t0
        blocks.append((f"teacher {sampler}\n{steps} steps, w={w:g}", x))
        timings.append({"model": "teacher", "sampler": sampler, "steps": steps, "guidance": w,
                        "seconds_per_image": seconds / len(batch)})
    return blocks, timings
