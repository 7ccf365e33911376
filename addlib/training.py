"""Training loops (the teacher's and ADD's) and what they share: deterministic batches, learning-rate
schedule, resumable checkpoints and logging. ADD's objective lives in objective.py; its step here only draws,
reduces, calls backward and steps the optimizers, in numbered parts.

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
from .data import Dataset, to_float
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


def code_hash() -> str:
    """A hash of the library's source: a checkpoint written by other code is never resumed."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


class Checkpointer:
    """Keeps the latest checkpoint of a run in ``folder``; resumes only one written with the same config
    (``fingerprint``) by the same code (``code_hash``)."""

    def __init__(self, folder: str | Path, fingerprint: str):
        self.folder = Path(folder)
        self.fingerprint = f"{fingerprint}-{code_hash()}"

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
                raise FloatingPointError(f"{name} {k} is {v} at step {step + 1}; "
                                         f"the last good checkpoint is kept in {checkpointer.folder}")
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


# --------------------------------------------------------------------------------------------------
# The teacher: a text-conditional v-prediction diffusion model.


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
    ckpt = Checkpointer(checkpoint_dir, fingerprint(cfg, seed, len(train), text.captions))
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
        loss = losses.prediction_loss(v_hat, schedule.target(x0, eps, t)).mean()
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
    }


# --------------------------------------------------------------------------------------------------
# Adversarial Diffusion Distillation (ADD sections 3.1-3.3); the objective itself is objective.py.


def train_add(cfg, teacher, seed: int, train: Dataset, text: TextCache, discriminator, negative_row: int,
              out_dir: str | Path, checkpoint_dir: str | Path, live_dir: str | Path | None = None,
              grid_dir: str | Path | None = None, max_steps: int | None = None, progress: bool = True,
              fingerprint_extra=None, save: bool = True) -> dict:
    """ADD: train the student against the discriminator (hinge, R1) and the teacher (distillation).

    ``teacher``: a ``latent.Teacher`` (frozen UNet, the schedule it was trained with, the space it works in;
    the student starts as a copy of its UNet unless student_init is 'random', and runs on
    ``diffusion.student_schedule``); ``discriminator``: a Discriminator with a frozen feature network, which
    always sees pixels; ``negative_row``: the text cache row of NFSD's negative prompt. Saves the student's
    EMA weights to ``out_dir`` (``save=False``: no checkpoints, nothing saved).

    Processes and micro-batches: every random draw is made for the global batch and sliced (training.py's
    header), the student is DDP-wrapped by accelerate, D's heads' gradients are averaged explicitly, and each
    micro-batch's loss is scaled by its share of the process batch, so a run gives the same updates (to
    floating point) whatever the number of processes and micro-batches, and resumes across them.
    """
    import contextlib
    import copy

    from .config import fingerprint
    from .diffusion import student_schedule
    from .latent import VAESpace
    from .objective import DiscriminatorLoss, StudentLoss, draw_step

    tc = cfg.train
    # 1. Devices, precision, processes; images and caption rows.
    accelerator, x_all, cap_all = setup_run(tc, train, text)
    dev, wdtype = accelerator.device, weight_dtype(tc.mixed_precision)
    sched_t, space = teacher.schedule, teacher.space.to(dev, wdtype)
    sched_s = student_schedule(sched_t.cfg, cfg.student_zero_terminal_snr)
    pixel_shape = tuple(x_all.shape[1:])
    latent_shape = space.latent_shape(pixel_shape)
    # 2. Networks: student (from the teacher, section 3.1, float32 master weights), frozen teacher and F in
    # the weight dtype, discriminator heads.
    torch.manual_seed(seed)
    student = copy.deepcopy(teacher.unet).requires_grad_(True).train()
    if cfg.student_init == "random":
        student = type(teacher.unet).from_config(teacher.unet.config).train()
    student = student.to(dev)
    if any(p.dtype != torch.float32 for p in student.parameters()):
        student = student.float()  # trained weights stay float32 (a half-precision checkpoint is upcast)
    if tc.gradient_checkpointing:
        student.enable_gradient_checkpointing()
        if isinstance(space, VAESpace):  # both losses backpropagate through the decoder: its activations too
            space.vae.enable_gradient_checkpointing()
    teacher_unet = teacher.unet.eval().requires_grad_(False).to(dev)
    if wdtype != torch.float32:
        teacher_unet = teacher_unet.to(wdtype)
    ema = EMA(student, tc.ema_decay)
    ema_model = copy.deepcopy(student).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(student.parameters(), lr=tc.lr_student, betas=tuple(tc.betas))
    opt_d = torch.optim.Adam(discriminator.heads.parameters(), lr=tc.lr_discriminator, betas=tuple(tc.betas))
    ckpt = Checkpointer(checkpoint_dir, fingerprint(cfg, teacher.schedule.cfg, teacher.source, seed, len(train),
                                                    text.captions, fingerprint_extra))
    raw_student = student
    # The discriminator is called through its parts (features, heads_forward), so it is moved, not wrapped;
    # its heads' gradients are averaged over processes by average_gradients.
    d_raw = discriminator.to(dev).train()
    d_raw.F.to(wdtype)
    student, opt_g_p, opt_d_p = accelerator.prepare(student, opt_g, opt_d)
    # 3. The objective (objective.py): text states of the empty prompt (row 0) and NFSD's negative prompt.
    empty_1 = tuple(a.to(dev) for a in text[torch.tensor([0])][:2])
    negative_1 = tuple(a.to(dev) for a in text[torch.tensor([negative_row])][:2])
    student_loss = StudentLoss(cfg, teacher_unet, sched_t, sched_s, space, d_raw, empty_1, negative_1)
    disc_loss = DiscriminatorLoss(d_raw, cfg.discriminator.r1_gamma)
    grid_text = None
    if grid_dir is not None and text.has(cfg.sample_prompts):
        grid_text = text.rows(cfg.sample_prompts).tolist()
    micro = tc.gradient_accumulation
    per_proc = tc.batch_size // accelerator.num_processes
    if per_proc % micro:
        raise ValueError(f"add.train.gradient_accumulation {micro} does not divide the per-process batch {per_proc}")
    per_micro = per_proc // micro
    first = accelerator.process_index * per_proc
    micro_slices = [slice(first + j * per_micro, first + (j + 1) * per_micro) for j in range(micro)]

    def no_sync(j: int):
        """Skip DDP's gradient all-reduce on all but the last micro-batch (the sum is reduced once)."""
        return accelerator.no_sync(student) if j + 1 < micro else contextlib.nullcontext()

    def logged(parts: dict, sums: dict) -> None:
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float().mean().item() / micro

    # 4. One ADD step.
    def step_fn(step: int) -> dict:
        # 4a. Every random draw of the step, for the global batch; this process's images and captions.
        draws = draw_step(cfg, step_generator(seed, step), step_generator(seed, step, stream=1), tc.batch_size,
                          latent_shape, pixel_shape, sched_t.T)
        idx = batch_indices(step, len(x_all), tc.batch_size, seed)
        sums: dict[str, float] = {}
        # 4b. One power iteration of D's spectral norms: L_G and L_D below see the same normalised weights.
        if cfg.lambda_adv > 0:
            d_raw.spectral_step()
        # 4c. Student update with L_G + lambda L_distill, accumulated over micro-batches; D's heads are frozen
        # (gradients reach the student through them, none is left on them).
        d_raw.heads.requires_grad_(False)
        opt_g_p.zero_grad(set_to_none=True)
        fakes = []
        for j, r in enumerate(micro_slices):
            x0 = to_float(x_all[idx[r]]).to(dev)
            text_r = tuple(a.to(dev) for a in text[cap_all[idx[r]]])
            with no_sync(j), accelerator.autocast():
                out = student_loss(student, x0, text_r, draws.rows(r).to(dev))
                loss = out.loss.mean()
                if not torch.isfinite(loss):
                    return {"loss_student": loss.item()}  # run_loop stops with a clear message before any update
                accelerator.backward(loss / micro if micro > 1 else loss)
            logged(out.parts, sums)
            fakes.append((r, x0, out.x_hat.detach(), out.c_real, out.c_fake))
        d_raw.heads.requires_grad_(True)
        if tc.grad_clip > 0:
            accelerator.clip_grad_norm_(student.parameters(), tc.grad_clip)
        opt_g_p.step()
        ema.update(raw_student)
        # 4d. Discriminator update with L_D (hinge on real and fake, R1 on the heads' inputs for the reals).
        if cfg.lambda_adv > 0:
            opt_d_p.zero_grad(set_to_none=True)
            for r, x0, x_hat, c_real, c_fake in fakes:
                d = draws.rows(r)
                with accelerator.autocast():
                    loss_d, parts = disc_loss(x0, x_hat, c_real, c_fake, d.aug_real, d.aug_fake)
                    loss_d = loss_d.mean()
                accelerator.backward(loss_d / micro if micro > 1 else loss_d)
                logged(parts, sums)
            average_gradients(d_raw.heads.parameters(), accelerator)
            opt_d_p.step()
        done = step + 1
        if grid_text is not None and tc.sample_every and done % tc.sample_every == 0 and accelerator.is_main_process:
            ema.copy_to(ema_model)
            save_student_grid(ema_model, sched_s, text, grid_text, cfg, [1, 2, 4],
                              Path(grid_dir) / f"step_{done:06d}.png", f"ADD student (EMA) at step {done}",
                              space=space)
        return global_means(sums, accelerator)

    # 5. Train (resuming from the latest matching checkpoint).
    run = run_loop("add", step_fn, steps=tc.steps, log_every=tc.log_every, checkpoint_every=tc.checkpoint_every,
                   lr_factor=lambda k: min(1.0, (k + 1) / max(1, tc.warmup_steps)), checkpointer=ckpt,
                   modules={"student": raw_student, "disc_heads": d_raw.heads},
                   optimizers={"opt_student": opt_g, "opt_disc": opt_d}, emas={"ema": ema},
                   accelerator=accelerator, live_dir=live_dir, max_steps=max_steps, progress=progress, save=save)
    # 6. Save the student's EMA weights as a diffusers model.
    ema.copy_to(ema_model)
    if save and accelerator.is_main_process and run["end"] == tc.steps:
        ema_model.save_pretrained(out_dir, safe_serialization=True)
    return {"steps": run["end"], "resumed_from_step": run["start"], "train_seconds": run["train_seconds"],
            "images_per_second": run["end"] * tc.batch_size / max(run["train_seconds"], 1e-9),
            "history": run["history"], "student": ema_model, "main_process": accelerator.is_main_process}


def save_student_grid(student, schedule: NoiseSchedule, text: TextCache, rows: list[int], cfg, steps_list,
                      path: Path, title: str, space=None) -> Path:
    """One row per prompt; a block of ``sample_per_prompt`` columns per step count, the same noise seeds in
    every block (so a column shows one sample refined by more steps)."""
    from .plots import image_grid
    from .sampling import initial_noise, sample_student, student_timesteps, unet_input_shape

    k = cfg.sample_per_prompt
    ids = torch.tensor(rows).repeat_interleave(k)
    states, mask, _ = text[ids]
    noise = initial_noise(len(ids), unet_input_shape(student), cfg.sample_seed)
    grid = [[] for _ in rows]
    col_labels = []
    for n_steps in steps_list:
        ts = student_timesteps(n_steps, cfg.student_timesteps, schedule.T)
        x = sample_student(student, schedule, states, mask, noise, ts, seed=cfg.sample_seed, space=space)
        for r in range(len(rows)):
            grid[r].extend(x[r * k:(r + 1) * k])
        col_labels += [f"{n_steps} step{'s' if n_steps > 1 else ''}"] + [""] * (k - 1)
    return image_grid(grid, path, row_labels=[text.captions[r] for r in rows], title=title,
                      col_labels=col_labels)
