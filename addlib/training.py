"""The resumable training loop every trainer shares: deterministic batches, learning-rate schedule,
checkpoints, logging, the NaN guard, processes. The trainers: teacher.py (the teacher), distillation.py (ADD,
its objective objective.py), pretrain.py (F), evaluators.py (the metrics' networks).

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
from pathlib import Path
import shutil
import time
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from .data import Dataset
from .text import TextCache

if TYPE_CHECKING:  # annotations only
    from .config.teacher import TrainConfig


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


def code_hash() -> str:
    """A hash of the library's source: a checkpoint written by other code is never resumed."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def content_digest(*inputs) -> str:
    """A hash of what a run trains on, by content: tensors (dtype, shape and bytes), modules (every weight and
    buffer by name), strings, numbers and lists or dicts of them. Goes into a checkpoint's fingerprint, so a
    checkpoint is never resumed on other data, captions, text embeddings, teacher or feature network."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)

    def feed(o) -> None:
        if isinstance(o, torch.nn.Module):
            for k, v in o.state_dict().items():
                h.update(k.encode())
                feed(v)
        elif isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(o, dict):
            for k, v in o.items():
                h.update(repr(k).encode())
                feed(v)
        elif isinstance(o, (list, tuple)):
            h.update(f"[{len(o)}".encode())
            for x in o:
                feed(x)
        else:
            h.update(repr(o).encode())

    for o in inputs:
        feed(o)
    return h.hexdigest()


SANE_WEIGHT = 1e4  # a checkpoint is written only if every weight is finite and no larger than this in magnitude


class Checkpointer:
    """The checkpoints of one run: ``folder/<fingerprint>/checkpoint-<step>``, the fingerprint covering the config,
    the inputs by content (content_digest) and the code (``code_hash``). Only a checkpoint of the same run is
    resumed; a save replaces that run's older checkpoints and never touches another run's. Weights that are not
    finite, or have blown up (|w| > SANE_WEIGHT), are never written, so a run that diverges keeps its last
    sane checkpoint."""

    def __init__(self, folder: str | Path, fingerprint: str):
        self.folder = Path(folder)
        self.fingerprint = f"{fingerprint}-{code_hash()}"
        self.run_dir = self.folder / self.fingerprint

    def latest(self) -> Path | None:
        best = None
        for p in self.run_dir.glob("checkpoint-*"):
            try:
                state = json.loads((p / "state.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue  # incomplete
            if state.get("fingerprint") == self.fingerprint and (best is None or state["step"] > best[0]):
                best = (state["step"], p)
        return best[1] if best else None

    @staticmethod
    def sane(tensors) -> bool:
        return all(bool(torch.isfinite(v).all()) and float(v.abs().max()) <= SANE_WEIGHT
                   for v in tensors if v.is_floating_point() and v.numel())

    def save(self, step: int, modules: dict, optimizers: dict, emas: dict, state: dict) -> Path | None:
        """Write checkpoint ``step`` (None if the weights are not sane: nothing is written or removed)."""
        weights = {name: {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}
                   for name, m in modules.items()}
        weights.update({name: {k: v.cpu().contiguous() for k, v in e.state_dict().items()} for name, e in emas.items()})
        if not all(self.sane(w.values()) for w in weights.values()):
            return None
        tmp = self.run_dir / f".tmp-checkpoint-{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, w in weights.items():
            save_file(w, str(tmp / f"{name}.safetensors"))
        for name, o in optimizers.items():
            torch.save(o.state_dict(), tmp / f"{name}.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step, "fingerprint": self.fingerprint}))
        final = self.run_dir / f"checkpoint-{step}"
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in self.run_dir.glob("checkpoint-*"):
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
# The loop every trainer shares: resume, learning-rate schedule, logging, NaN guard, checkpoints.


def run_loop(name: str, step_fn, *, steps: int, log_every: int, checkpoint_every: int, lr_factor,
             checkpointer: Checkpointer, modules: dict, optimizers: dict, emas: dict, accelerator,
             live_dir: str | Path | None = None, max_steps: int | None = None, progress: bool = True,
             prepared: dict | None = None, save: bool = True) -> dict:
    """Run ``step_fn(step) -> {metric: float}`` for steps [resume point, steps).

    ``modules``/``optimizers``/``emas`` are what a checkpoint holds (modules unwrapped); ``prepared`` maps
    names to the accelerate-prepared objects step_fn uses. Every optimizer's param groups are scaled by
    ``lr_factor(step)`` from their ``base_lr``. Metrics are averaged over each logging interval.
    ``save=False`` writes no checkpoints (benchmarks).
    """
    from tqdm import tqdm

    start, history, elapsed = 0, [], 0.0
    if (path := checkpointer.latest()) is not None:
        state = checkpointer.load(path, modules, optimizers, emas)
        start, history, elapsed = state["step"], state["history"], state["train_seconds"]
        accelerator.print(f"{name}: resuming from {path} at step {start + 1}")
    for opt in optimizers.values():
        for g in opt.param_groups:
            g.setdefault("base_lr", g["lr"])
    logger = Logger(live_dir if accelerator.is_main_process else None, history)
    end = steps if max_steps is None else min(steps, max_steps)
    sums: dict[str, float] = {}
    n_since, t_log, t_run = 0, time.perf_counter(), time.perf_counter()
    bar = tqdm(range(start, end), initial=start, total=steps, desc=name, mininterval=10,
               disable=not (progress and accelerator.is_local_main_process))
    for step in bar:
        factor = lr_factor(step)
        for opt in optimizers.values():
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
        metrics = step_fn(step)
        for k, v in metrics.items():
            if not math.isfinite(v):
                last = checkpointer.latest()
                kept = (f"its last checkpoint with sane weights ({last}) is kept and a rerun resumes from it"
                        if last is not None else "no checkpoint with sane weights was written")
                raise FloatingPointError(f"{name} {k} is {v} at step {step + 1}; {kept}; to start this run "
                                         f"afresh delete {checkpointer.run_dir} (or change its params, e.g. a "
                                         f"lower learning rate, which starts a new run)")
            sums[k] = sums.get(k, 0.0) + v
        n_since += 1
        done = step + 1
        if done % log_every == 0 or done == end:
            now = time.perf_counter()
            row = {"step": done, **{k: v / n_since for k, v in sums.items()}, "lr_factor": factor,
                   "steps_per_second": n_since / (now - t_log)}
            logger.log(row)
            bar.set_postfix({k: f"{v:.4f}" for k, v in list(row.items())[1:3]})
            sums, n_since, t_log = {}, 0, now
        if save and (done % checkpoint_every == 0 or done == end) and accelerator.is_main_process:
            checkpointer.save(done, modules, optimizers, emas,
                              {"history": logger.history, "train_seconds": elapsed + time.perf_counter() - t_run})
        accelerator.wait_for_everyone()
    bar.close()
    logger.close()
    return {"start": start, "end": end, "history": logger.history,
            "train_seconds": elapsed + time.perf_counter() - t_run}


def setup_run(tc, train: Dataset, text: TextCache):
    """What every text-conditional trainer starts with: threads, the accelerator (devices, precision,
    processes), the training images (uint8; a batch becomes [-1, 1] floats with ``to_float``) and each
    image's row in the text cache."""
    from accelerate import Accelerator

    set_threads(tc.num_threads)
    accelerator = Accelerator(mixed_precision=tc.mixed_precision)
    if tc.batch_size % accelerator.num_processes:
        raise ValueError(f"batch_size {tc.batch_size} does not split over {accelerator.num_processes} processes")
    return accelerator, train.images, text.rows(train.captions)


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype of frozen networks under a mixed-precision setting (trained weights stay float32)."""
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def average_gradients(params, accelerator) -> None:
    """Mean of the gradients over processes, for parameters that are not wrapped in DDP (D's heads are
    called through their parts, several times per step, which DDP's one-forward-one-backward hooks do not
    support)."""
    if accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= accelerator.num_processes


def global_means(metrics: dict[str, float], accelerator) -> dict[str, float]:
    """Logged values averaged over processes (each process holds an equal share of the global batch)."""
    if accelerator.num_processes == 1 or not metrics:
        return metrics
    t = torch.tensor(list(metrics.values()), dtype=torch.float64, device=accelerator.device)
    t = accelerator.reduce(t, reduction="mean")
    return dict(zip(metrics, t.tolist()))


def warmup_cosine(cfg: TrainConfig):
    """lr_factor for run_loop: lr_at(step) / peak lr."""
    return lambda step: lr_at(step, cfg) / cfg.lr
