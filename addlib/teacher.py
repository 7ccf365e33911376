"""The teacher trained here: a text-conditional diffusion model (diffusers' UNet2DConditionModel) on the
prepared data, with condition dropout for classifier-free guidance, on training.run_loop. A pretrained teacher
is loaded instead by latent.load_teacher."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .data import Dataset, to_float
from .diffusion import NoiseSchedule
from .models import EMA, build_unet, count_parameters
from .text import TextCache
from .training import (Checkpointer, batch_indices, content_digest, global_means, run_loop, setup_run, shard,
                       step_generator, warmup_cosine)

if TYPE_CHECKING:  # annotations only
    from .config.teacher import TeacherConfig


def prediction_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error ||out - target||^2 / dim: the diffusion objective for the network's
    parameterisation (v-prediction, Salimans & Ho 2022, or epsilon-prediction, Ho et al. 2020).

    Its minimiser is E[target | x_t, c], from which x0 follows (see diffusion.py).
    """
    return (out.float() - target.float()).pow(2).flatten(1).mean(1)


def train_teacher(cfg: TeacherConfig, seed: int, train: Dataset, text: TextCache, out_dir: str | Path,
                  checkpoint_dir: str | Path, live_dir: str | Path | None = None,
                  max_steps: int | None = None, progress: bool = True) -> dict:
    """Train the teacher; save its EMA weights with ``save_pretrained`` to ``out_dir``; return a summary.

    ``max_steps`` stops early after that many total steps (checkpoint written), as a kill would: used by
    the resume tests.
    """
    from .config import fingerprint

    tc = cfg.train
    # 1-2. Devices, precision, processes; images in [-1, 1] and their caption rows in the text cache.
    accelerator, x_all, cap_all = setup_run(tc, train, text)
    # 3. Schedule, model, EMA, optimizer.
    schedule = NoiseSchedule(cfg.schedule)
    torch.manual_seed(seed)
    unet = build_unet(cfg.unet, x_all.shape[-1], x_all.shape[1], text.states.shape[-1]).to(accelerator.device)
    ema = EMA(unet, tc.ema_decay)
    opt = torch.optim.AdamW(unet.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    inputs = content_digest(train.images, train.labels, train.captions, text.captions, text.states, text.mask)
    ckpt = Checkpointer(checkpoint_dir, fingerprint(cfg, seed, inputs))  # never resumed on other inputs
    raw_unet = unet
    unet, opt_p = accelerator.prepare(unet, opt)

    # 4. One step: the v-prediction loss at a uniform timestep, with condition dropout.
    def step_fn(step: int) -> dict:
        g = step_generator(seed, step)
        idx = batch_indices(step, len(x_all), tc.batch_size, seed)
        x0, cap = to_float(x_all[idx]), cap_all[idx].clone()
        cap[torch.rand(tc.batch_size, generator=g) < tc.cond_dropout] = 0  # row 0 = empty prompt
        t = torch.randint(0, schedule.T, (tc.batch_size,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        x0, cap, t, eps = (shard(a, accelerator) for a in (x0, cap, t, eps))
        states, mask, _ = text[cap]
        x0, t, eps, states, mask = (a.to(accelerator.device) for a in (x0, t, eps, states, mask))
        x_t = schedule.add_noise(x0, eps, t)
        with accelerator.autocast():
            v_hat = unet(x_t, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
        loss = prediction_loss(v_hat, schedule.target(x0, eps, t)).mean()
        if not torch.isfinite(loss):
            return {"loss": loss.item()}  # run_loop stops with a clear message before any update
        accelerator.backward(loss)
        if tc.grad_clip > 0:
            accelerator.clip_grad_norm_(unet.parameters(), tc.grad_clip)
        opt_p.step()
        opt_p.zero_grad(set_to_none=True)
        ema.update(raw_unet)
        return global_means({"loss": loss.item()}, accelerator)

    # 5. Train (resuming from the latest matching checkpoint).
    run = run_loop("teacher", step_fn, steps=tc.steps, log_every=tc.log_every,
                   checkpoint_every=tc.checkpoint_every, lr_factor=warmup_cosine(tc), checkpointer=ckpt,
                   modules={"unet": raw_unet}, optimizers={"optimizer": opt}, emas={"ema": ema},
                   accelerator=accelerator, live_dir=live_dir, max_steps=max_steps, progress=progress)
    # 6. Save the EMA weights as a diffusers model.
    ema.copy_to(raw_unet)
    if accelerator.is_main_process and run["end"] == tc.steps:
        raw_unet.save_pretrained(out_dir, safe_serialization=True)
    rows = run["history"]
    return {
        "steps": run["end"],
        "resumed_from_step": run["start"],
        "parameters": count_parameters(raw_unet),
        "final_loss": rows[-1]["loss"] if rows else float("nan"),
        "train_seconds": run["train_seconds"],
        "images_per_second": run["end"] * tc.batch_size / run["train_seconds"],
        "unet": raw_unet,
        "history": rows,
        "main_process": accelerator.is_main_process,
        "checkpoints": ckpt.run_dir,
    }
