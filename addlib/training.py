"""Training loops (teacher now; the ADD loop joins it) and what they share: deterministic batches,
learning-rate schedule, resumable checkpoints and logging.

Design choices:
- Every random draw of step k (which images, timesteps, noise, condition dropout) comes from a generator
  seeded by (seed, k). A resumed run therefore takes exactly the steps an uninterrupted run would, with no
  RNG state to save, and a global batch is the same whatever the number of processes.
- accelerate owns devices, mixed precision and multi-process gradient averaging. Checkpoints are written
  here rather than by ``accelerator.save_state``, because its ``load_state`` unpickles with
  ``weights_only=False``; ours are safetensors (weights, EMA), ``torch.load(weights_only=True)`` (optimizer)
  and JSON (step, logged history, config fingerprint). A checkpoint whose fingerprint differs from the
  current config is never resumed.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import losses
from .config import TeacherConfig, TrainConfig
from .data import Dataset
from .diffusion import NoiseSchedule
from .models import EMA, build_unet, count_parameters
from .text import TextCache


# --------------------------------------------------------------------------------------------------
# Deterministic per-step randomness.


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7 + stream)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """Indices of global batch ``step``: consecutive slices of a fresh permutation per epoch."""
    pos = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = pos // n, pos % n
    out = torch.empty(batch_size, dtype=torch.long)
    for e in epochs.unique().tolist():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + e))
        sel = epochs == e
        out[sel] = perm[offsets[sel]]
    return out


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak over the remaining steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def shard(x: torch.Tensor, accelerator) -> torch.Tensor:
    """This process's slice of a global batch."""
    n, k = accelerator.num_processes, accelerator.process_index
    per = len(x) // n
    return x[k * per:(k + 1) * per]


# --------------------------------------------------------------------------------------------------
# Checkpoints.


class Checkpointer:
    """Keeps the latest checkpoint of a run in ``folder``; resumes only a matching config fingerprint."""

    def __init__(self, folder: str | Path, fingerprint: str):
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    def latest(self) -> Path | None:
        best = None
        for p in self.folder.glob("checkpoint-*"):
            try:
                state = json.loads((p / "state.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue  # incomplete
            if state.get("fingerprint") == self.fingerprint and (best is None or state["step"] > best[0]):
                best = (state["step"], p)
        return best[1] if best else None

    def save(self, step: int, modules: dict, optimizers: dict, emas: dict, state: dict) -> Path:
        tmp = self.folder / f".tmp-checkpoint-{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, m in modules.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()},
                      str(tmp / f"{name}.safetensors"))
        for name, e in emas.items():
            save_file({k: v.cpu().contiguous() for k, v in e.state_dict().items()},
                      str(tmp / f"{name}.safetensors"))
        for name, o in optimizers.items():
            torch.save(o.state_dict(), tmp / f"{name}.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step, "fingerprint": self.fingerprint}))
        final = self.folder / f"checkpoint-{step}"
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in self.folder.glob("checkpoint-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def load(path: Path, modules: dict, optimizers: dict, emas: dict) -> dict:
        for name, m in modules.items():
            m.load_state_dict(load_file(str(path / f"{name}.safetensors")))
        for name, e in emas.items():
            e.load_state_dict(load_file(str(path / f"{name}.safetensors")))
        for name, o in optimizers.items():
            o.load_state_dict(torch.load(path / f"{name}.pt", map_location="cpu", weights_only=True))
        return json.loads((path / "state.json").read_text())


class Logger:
    """Keeps the logged rows (they travel in the checkpoint) and mirrors them to dvclive."""

    def __init__(self, live_dir: str | Path | None, history: list[dict]):
        self.history = list(history)
        self.live = None
        if live_dir is not None:
            from dvclive import Live

            self.live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
            for row in self.history:  # replay what a resumed run logged before the interruption
                self._write(row)

    def _write(self, row: dict) -> None:
        self.live.step = row["step"]
        for k, v in row.items():
            if k != "step":
                self.live.log_metric(f"train/{k}", v)
        self.live.next_step()

    def log(self, row: dict) -> None:
        self.history.append(row)
        if self.live is not None:
            self._write(row)

    def close(self) -> None:
        if self.live is not None:
            self.live.end()


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


# --------------------------------------------------------------------------------------------------
# The teacher: a text-conditional v-prediction diffusion model.


def train_teacher(cfg: TeacherConfig, seed: int, train: Dataset, text: TextCache, out_dir: str | Path,
                  checkpoint_dir: str | Path, live_dir: str | Path | None = None,
                  max_steps: int | None = None, progress: bool = True) -> dict:
    """Train the teacher; save its EMA weights with ``save_pretrained`` to ``out_dir``; return a summary.

    ``max_steps`` stops early after that many total steps (checkpoint written), as a kill would: used by
    the resume tests.
    """
    from accelerate import Accelerator
    from tqdm import tqdm

    from .config import fingerprint

    tc = cfg.train
    set_threads(tc.num_threads)
    # 1. Devices, precision, processes.
    accelerator = Accelerator(mixed_precision=tc.mixed_precision)
    if tc.batch_size % accelerator.num_processes:
        raise ValueError(f"batch_size {tc.batch_size} does not split over {accelerator.num_processes} processes")
    # 2. Data: images in [-1, 1] and their caption rows in the text cache.
    x_all = train.pixels()
    row_of = {c: i for i, c in enumerate(text.captions)}
    cap_all = torch.tensor([row_of[c] for c in train.captions])
    # 3. Schedule, model, EMA, optimizer.
    schedule = NoiseSchedule(cfg.schedule)
    torch.manual_seed(seed)
    unet = build_unet(cfg.unet, x_all.shape[-1], x_all.shape[1], text.states.shape[-1])
    ema = EMA(unet, tc.ema_decay)
    opt = torch.optim.AdamW(unet.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    # 4. Resume from the latest matching checkpoint.
    ckpt = Checkpointer(checkpoint_dir, fingerprint(cfg, seed, len(train), text.captions))
    start, history, elapsed = 0, [], 0.0
    if (path := ckpt.latest()) is not None:
        state = ckpt.load(path, {"unet": unet}, {"optimizer": opt}, {"ema": ema})
        start, history, elapsed = state["step"], state["history"], state["train_seconds"]
        accelerator.print(f"resuming from {path} at step {start + 1}")
    unet, opt = accelerator.prepare(unet, opt)
    logger = Logger(live_dir if accelerator.is_main_process else None, history)
    # 5. Train.
    end = tc.steps if max_steps is None else min(tc.steps, max_steps)
    run_loss, run_n, t_log = 0.0, 0, time.perf_counter()
    t_run = time.perf_counter()
    bar = tqdm(range(start, end), initial=start, total=tc.steps, desc="teacher", mininterval=10,
               disable=not (progress and accelerator.is_local_main_process))
    for step in bar:
        lr = lr_at(step, tc)
        for g in opt.param_groups:
            g["lr"] = lr
        g_step = step_generator(seed, step)
        idx = batch_indices(step, len(x_all), tc.batch_size, seed)
        x0, cap = x_all[idx], cap_all[idx].clone()
        cap[torch.rand(tc.batch_size, generator=g_step) < tc.cond_dropout] = 0  # row 0 = empty prompt
        t = torch.randint(0, schedule.T, (tc.batch_size,), generator=g_step)
        eps = torch.randn(x0.shape, generator=g_step)
        x0, cap, t, eps = (shard(a, accelerator).to(accelerator.device) for a in (x0, cap, t, eps))
        states, mask, _ = text[cap.cpu()]
        x_t = schedule.add_noise(x0, eps, t)
        with accelerator.autocast():
            v_hat = unet(x_t, t, encoder_hidden_states=states.to(x_t.device),
                         encoder_attention_mask=mask.to(x_t.device)).sample
        loss = losses.v_prediction_loss(v_hat, schedule.v_target(x0, eps, t)).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"teacher loss is {loss.item()} at step {step + 1}; "
                                     f"the last good checkpoint is kept in {checkpoint_dir}")
        accelerator.backward(loss)
        if tc.grad_clip > 0:
            accelerator.clip_grad_norm_(unet.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(accelerator.unwrap_model(unet))
        run_loss += loss.item()
        run_n += 1
        done = step + 1
        if done % tc.log_every == 0 or done == end:
            now = time.perf_counter()
            logger.log({"step": done, "loss": run_loss / run_n, "lr": lr,
                        "images_per_second": run_n * tc.batch_size / (now - t_log)})
            bar.set_postfix(loss=f"{run_loss / run_n:.4f}")
            run_loss, run_n, t_log = 0.0, 0, now
        if (done % tc.checkpoint_every == 0 or done == end) and accelerator.is_main_process:
            ckpt.save(done, {"unet": accelerator.unwrap_model(unet)}, {"optimizer": opt}, {"ema": ema},
                      {"history": logger.history, "train_seconds": elapsed + time.perf_counter() - t_run})
        accelerator.wait_for_everyone()
    bar.close()
    elapsed += time.perf_counter() - t_run
    logger.close()
    # 6. Save the EMA weights as a diffusers model.
    final = accelerator.unwrap_model(unet)
    ema.copy_to(final)
    if accelerator.is_main_process and end == tc.steps:
        final.save_pretrained(out_dir, safe_serialization=True)
    rows = logger.history
    return {
        "steps": end,
        "resumed_from_step": start,
        "parameters": count_parameters(final),
        "final_loss": rows[-1]["loss"] if rows else float("nan"),
        "train_seconds": elapsed,
        "images_per_second": (end * tc.batch_size / elapsed) if elapsed > 0 else float("nan"),
        "unet": final,
        "history": rows,
    }
