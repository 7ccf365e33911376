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
# Adversarial Diffusion Distillation (ADD sections 3.1-3.3).


def teacher_x0(teacher, schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, cond, uncond,
               guidance: float, steps: int) -> torch.Tensor:
    """The teacher's x0 estimate from x_t: one prediction (steps = 1), or a deterministic DDIM solve from
    t to 0 in ``steps`` steps (Table 1f), with classifier-free guidance ``guidance``."""
    from .sampling import guided_v

    x = x_t
    for j in range(steps):
        t_j = (t.float() * (steps - j) / steps).round().long()
        v = guided_v(teacher, x, t_j, cond, uncond, guidance)
        x0 = schedule.x0_from_output(x, v, t_j)
        if j + 1 < steps:
            t_next = (t.float() * (steps - j - 1) / steps).round().long()
            x = schedule.add_noise(x0, schedule.eps_from_output(x, v, t_j), t_next)
    return x0


def nfsd_target(teacher, schedule: NoiseSchedule, x_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                cond, uncond, negative, s: float) -> torch.Tensor:
    """Noise-free score distillation (Katzir et al. 2023) as a distillation target.

    NFSD replaces SDS's (eps_hat - eps) by delta_D + s * delta_C, with delta_C = eps(x_t, c) - eps(x_t, empty)
    and delta_D = eps(x_t, empty) for t < 200, eps(x_t, empty) - eps(x_t, negative prompt) otherwise.
    The target x_psi = x_hat - (sigma / alpha) (delta_D + s delta_C) makes the SDS-weighted squared distance
    have exactly that gradient (see losses.py).
    """
    eps = lambda c: schedule.eps_from_output(x_t, teacher(x_t, t, encoder_hidden_states=c[0],  # noqa: E731
                                                       encoder_attention_mask=c[1]).sample, t)
    e_c, e_u, e_n = eps(cond), eps(uncond), eps(negative)
    small_t = (t < 200).view(-1, *([1] * (x_t.ndim - 1)))
    delta_d = torch.where(small_t, e_u, e_u - e_n)
    g = delta_d + s * (e_c - e_u)
    return x_hat - schedule.sigma(t, x_t) / schedule.alpha(t, x_t).clamp_min(1e-4) * g


def train_add(cfg, teacher, seed: int, train: Dataset, text: TextCache, discriminator, negative_row: int,
              out_dir: str | Path, checkpoint_dir: str | Path, live_dir: str | Path | None = None,
              grid_dir: str | Path | None = None, max_steps: int | None = None, progress: bool = True,
              fingerprint_extra=None, save: bool = True) -> dict:
    """ADD: train the student against the discriminator (hinge, R1) and the teacher (distillation).

    ``teacher``: a ``latent.Teacher`` (frozen UNet, its schedule, the space it works in; the student starts
    as a copy of its UNet unless student_init is 'random'); ``discriminator``: a Discriminator with a frozen
    feature network, which always sees pixels; ``negative_row``: the text cache row of NFSD's negative
    prompt. Saves the student's EMA weights to ``out_dir`` (``save=False``: no checkpoints, nothing saved).

    Processes and micro-batches: every random draw is made for the global batch and sliced (training.py's
    header), the student is DDP-wrapped by accelerate, D's heads' gradients are averaged explicitly, and each
    micro-batch's loss is scaled by its share of the process batch, so a run gives the same updates (to
    floating point) whatever the number of processes and micro-batches, and resumes across them.
    """
    import contextlib
    import copy

    from . import discriminator as disc
    from .config import fingerprint
    from .latent import VAESpace

    tc, dc = cfg.train, cfg.discriminator
    # 1-2. Devices, precision, processes; images and caption rows.
    accelerator, x_all, cap_all = setup_run(tc, train, text)
    dev, wdtype = accelerator.device, weight_dtype(tc.mixed_precision)
    schedule, space = teacher.schedule, teacher.space.to(dev, wdtype)
    tau = torch.tensor(cfg.student_timesteps)
    pixel_shape = tuple(x_all.shape[1:])
    latent_shape = space.latent_shape(pixel_shape)
    # 3. Networks: student (from the teacher, section 3.1, float32 master weights), frozen teacher and F in
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
    discriminator = discriminator.train()
    opt_g = torch.optim.Adam(student.parameters(), lr=tc.lr_student, betas=tuple(tc.betas))
    opt_d = torch.optim.Adam(discriminator.heads.parameters(), lr=tc.lr_discriminator, betas=tuple(tc.betas))
    ckpt = Checkpointer(checkpoint_dir, fingerprint(cfg, teacher.schedule.cfg, teacher.source, seed, len(train),
                                                    text.captions, fingerprint_extra))
    raw_student = student
    # The discriminator is called through its parts (features, heads_forward), so it is moved, not wrapped;
    # its heads' gradients are averaged over processes by average_gradients.
    d_raw = discriminator.to(dev)
    d_raw.F.to(wdtype)
    student, opt_g_p, opt_d_p = accelerator.prepare(student, opt_g, opt_d)
    augment = dict(color="color" in dc.augment, translation="translation" in dc.augment,
                   cutout="cutout" in dc.augment)
    weighting = losses.WEIGHTINGS[cfg.weighting]
    distance = {
        "mse": losses.distance_mse, "l1": losses.distance_l1, "pseudo_huber": losses.distance_pseudo_huber,
        "perceptual": lambda a, b: losses.distance_perceptual(a, b, d_raw.features),
    }[cfg.distance]
    lo, hi = cfg.teacher_t_range
    T = schedule.cfg.num_train_timesteps
    # Text states of the empty prompt (row 0) and of NFSD's negative prompt, one row each.
    empty_1 = tuple(a.to(dev) for a in text[torch.tensor([0])][:2])
    negative_1 = tuple(a.to(dev) for a in text[torch.tensor([negative_row])][:2])
    grid_text = None
    if grid_dir is not None and text.has(cfg.sample_prompts):
        grid_text = text.rows(cfg.sample_prompts).tolist()
    n_proc, micro = accelerator.num_processes, tc.gradient_accumulation
    per_proc = tc.batch_size // n_proc
    if per_proc % micro:
        raise ValueError(f"add.train.gradient_accumulation {micro} does not divide the per-process batch {per_proc}")
    per_micro = per_proc // micro

    def micro_slices():
        """Global-batch rows of this process's micro-batches."""
        first = accelerator.process_index * per_proc
        return [slice(first + j * per_micro, first + (j + 1) * per_micro) for j in range(micro)]

    def no_sync(j: int):
        """Skip DDP's gradient all-reduce on all but the last micro-batch (the sum is reduced once)."""
        return accelerator.no_sync(student) if j + 1 < micro else contextlib.nullcontext()

    # 4. One ADD step: a student update (L_G + lambda L_distill), then a discriminator update (L_D).
    def step_fn(step: int) -> dict:
        B = tc.batch_size
        g = step_generator(seed, step)
        idx = batch_indices(step, len(x_all), B, seed)
        s_all = tau[torch.randint(0, len(tau), (B,), generator=g)]
        eps_all = torch.randn((B, *latent_shape), generator=g)
        t_all = torch.randint(lo, hi + 1, (B,), generator=g)
        if cfg.teacher_t_at_most_s:  # same draw, rescaled into [lo, min(hi, s)] where the input has noise
            top = torch.where(s_all < T - 1, s_all.clamp(lo, hi), torch.full_like(s_all, hi))
            t_all = lo + (t_all - lo) * (top - lo + 1) // (hi - lo + 1)
        eps2_all = torch.randn((B, *latent_shape), generator=g)
        g_aug = step_generator(seed, step, stream=1)
        # Augmentation parameters for the generator's fakes, D's reals and D's fakes (in that order).
        aug_g, aug_real, aug_fake = ([disc.draw_augment(B, *pixel_shape, g_aug, **augment) for _ in range(3)]
                                     if cfg.lambda_adv > 0 else [None] * 3)
        rows_of = lambda p, r: {k: v[r] for k, v in p.items()}  # noqa: E731
        sums: dict[str, float] = {}
        kept = []  # per micro-batch: what the discriminator update needs

        def add(metrics: dict) -> None:
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v / micro

        # Student update, accumulated over micro-batches.
        opt_g_p.zero_grad(set_to_none=True)
        for j, r in enumerate(micro_slices()):
            x0 = to_float(x_all[idx[r]]).to(dev)
            states, mask, pooled = (a.to(dev) for a in text[cap_all[idx[r]]])
            s, eps, t, eps2 = (a[r].to(dev) for a in (s_all, eps_all, t_all, eps2_all))
            n = len(x0)
            empty = tuple(a.expand(n, *a.shape[1:]) for a in empty_1)
            negative = tuple(a.expand(n, *a.shape[1:]) for a in negative_1)
            cond = (states, mask)
            out: dict[str, float] = {}
            with no_sync(j), accelerator.autocast():
                # Student: z_s = alpha_s z0 + sigma_s eps at a student timestep s; z_hat = its x0 prediction
                # (z = x for the pixel-space teacher); x_hat = the decoded image.
                z0 = space.encode(x0)
                z_s = schedule.add_noise(z0, eps, s)
                z_hat = schedule.x0_from_output(z_s, student(z_s, s, encoder_hidden_states=states,
                                                             encoder_attention_mask=mask).sample, s)
                x_hat = space.decode(z_hat)
                c_img = d_raw.image_embedding(x0) if dc.c_img else None
                c_real = c_fake = d_raw.condition(pooled, c_img)
                pure = s == schedule.T - 1  # alpha = 0: the student's input holds no trace of x0
                if dc.c_img and dc.c_img_pure_noise == "teacher_ode" and pure.any():
                    # Deviation from the paper's literal reading (which is silent here): a fake made from pure
                    # noise is conditioned on the embedding of the teacher's deterministic solve from that same
                    # noise, so D's image condition is a function of the noise and identical outputs stop
                    # receiving identical gradients (without it the 1-step student collapses to one template
                    # per prompt). Real pairs stay (x0, c_img(x0)).
                    with torch.no_grad():
                        z_ode = teacher_x0(teacher_unet, schedule, z_s[pure], s[pure], (states[pure], mask[pure]),
                                           (empty[0][pure], empty[1][pure]), dc.ode_guidance, dc.ode_steps)
                        x_ode = space.decode(z_ode).float().clamp(-1, 1)
                    c_img_fake = c_img.clone()
                    c_img_fake[pure] = d_raw.image_embedding(x_ode)
                    c_fake = d_raw.condition(pooled, c_img_fake)
                loss_g = torch.zeros((), device=dev)
                if cfg.lambda_adv > 0:
                    # Spectral norm runs one power iteration per forward in train mode: later micro-batches
                    # reuse the first one's, so L_G sees the weights a single batch would.
                    d_raw.heads.train(j == 0)
                    f_fake = d_raw.features(disc.apply_augment(x_hat, rows_of(aug_g, r)))
                    l_adv = losses.hinge_g(d_raw.heads_forward(f_fake, c_fake)).mean()
                    d_raw.heads.train(True)
                    loss_g = loss_g + cfg.lambda_adv * l_adv
                    out["loss_G"] = l_adv.item()
                if cfg.lambda_distill > 0:
                    with torch.no_grad():
                        z_t = schedule.add_noise(z_hat.detach(), eps2, t)
                        if cfg.weighting == "nfsd":
                            z_psi = nfsd_target(teacher_unet, schedule, z_hat.detach(), z_t, t, cond, empty, negative,
                                                cfg.nfsd_guidance)
                        else:
                            z_psi = teacher_x0(teacher_unet, schedule, z_t, t, cond, empty, cfg.teacher_guidance,
                                               cfg.teacher_steps)
                        # The paper's latent setting: compare decoded images (distill_space: pixel).
                        target = z_psi if cfg.distill_space == "latent" else space.decode(z_psi)
                    pred = z_hat if cfg.distill_space == "latent" else x_hat
                    c_t = weighting(schedule.alpha(t, pred), schedule.sigma(t, pred))
                    l_distill = losses.distillation_loss(pred.float(), target.float(), c_t, distance).mean()
                    loss_g = loss_g + cfg.lambda_distill * l_distill
                    out["loss_distill"] = l_distill.item()
                out["loss_student"] = loss_g.item()
                if not torch.isfinite(loss_g):
                    return out  # run_loop stops with a clear message before any update
                accelerator.backward(loss_g / micro if micro > 1 else loss_g)
            add(out)
            kept.append((r, x0, x_hat.detach(), c_real.detach() if c_real is not None else None,
                         c_fake.detach() if c_fake is not None else None))
        if tc.grad_clip > 0:
            accelerator.clip_grad_norm_(student.parameters(), tc.grad_clip)
        opt_g_p.step()
        ema.update(raw_student)
        # Discriminator: hinge on real and fake, R1 on the heads' inputs for real images.
        if cfg.lambda_adv > 0:
            opt_d_p.zero_grad(set_to_none=True)  # also drops the grads L_G left on the heads
            for r, x0, x_hat, c_real, c_fake in kept:
                with accelerator.autocast():
                    with torch.no_grad():
                        f_real = d_raw.features(disc.apply_augment(x0, rows_of(aug_real, r)))
                        f_fake = d_raw.features(disc.apply_augment(x_hat, rows_of(aug_fake, r)))
                    f_real = [f.detach().float().requires_grad_(dc.r1_gamma > 0) for f in f_real]
                    f_fake = [f.float() for f in f_fake]
                    logits_real = d_raw.heads_forward(f_real, c_real)
                    logits_fake = d_raw.heads_forward(f_fake, c_fake)
                    l_d = (losses.hinge_d_real(logits_real) + losses.hinge_d_fake(logits_fake)).mean()
                    r1 = losses.r1_penalty(logits_real, f_real).mean() if dc.r1_gamma > 0 else torch.zeros(())
                    loss_d = l_d + dc.r1_gamma * r1
                accelerator.backward(loss_d / micro if micro > 1 else loss_d)
                add(dict(loss_D=l_d.item(), r1=r1.item(),
                         logits_real=float(sum(l.detach().mean() for l in logits_real)),
                         logits_fake=float(sum(l.detach().mean() for l in logits_fake))))
            average_gradients(d_raw.heads.parameters(), accelerator)
            opt_d_p.step()
        done = step + 1
        if grid_text is not None and tc.sample_every and done % tc.sample_every == 0 and accelerator.is_main_process:
            ema.copy_to(ema_model)
            save_student_grid(ema_model, schedule, text, grid_text, cfg, [1, 2, 4],
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
