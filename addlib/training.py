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
             prepared: dict | None = None) -> dict:
    """Run ``step_fn(step) -> {metric: float}`` for steps [resume point, steps).

    ``modules``/``optimizers``/``emas`` are what a checkpoint holds (modules unwrapped); ``prepared`` maps
    names to the accelerate-prepared objects step_fn uses. Every optimizer's param groups are scaled by
    ``lr_factor(step)`` from their ``base_lr``. Metrics are averaged over each logging interval.
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
        if (done % checkpoint_every == 0 or done == end) and accelerator.is_main_process:
            checkpointer.save(done, modules, optimizers, emas,
                              {"history": logger.history, "train_seconds": elapsed + time.perf_counter() - t_run})
        accelerator.wait_for_everyone()
    bar.close()
    logger.close()
    return {"start": start, "end": end, "history": logger.history,
            "train_seconds": elapsed + time.perf_counter() - t_run}


def setup_run(tc, train: Dataset, text: TextCache):
    """What every text-conditional trainer starts with: threads, the accelerator (devices, precision,
    processes), the training images in [-1, 1], each image's row in the text cache, and caption -> row."""
    from accelerate import Accelerator

    set_threads(tc.num_threads)
    accelerator = Accelerator(mixed_precision=tc.mixed_precision)
    if tc.batch_size % accelerator.num_processes:
        raise ValueError(f"batch_size {tc.batch_size} does not split over {accelerator.num_processes} processes")
    row_of = {c: i for i, c in enumerate(text.captions)}
    return accelerator, train.pixels(), torch.tensor([row_of[c] for c in train.captions]), row_of


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
    accelerator, x_all, cap_all, _ = setup_run(tc, train, text)
    # 3. Schedule, model, EMA, optimizer.
    schedule = NoiseSchedule(cfg.schedule)
    torch.manual_seed(seed)
    unet = build_unet(cfg.unet, x_all.shape[-1], x_all.shape[1], text.states.shape[-1])
    ema = EMA(unet, tc.ema_decay)
    opt = torch.optim.AdamW(unet.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    ckpt = Checkpointer(checkpoint_dir, fingerprint(cfg, seed, len(train), text.captions))
    raw_unet = unet
    unet, opt_p = accelerator.prepare(unet, opt)

    # 4. One step: the v-prediction loss at a uniform timestep, with condition dropout.
    def step_fn(step: int) -> dict:
        g = step_generator(seed, step)
        idx = batch_indices(step, len(x_all), tc.batch_size, seed)
        x0, cap = x_all[idx], cap_all[idx].clone()
        cap[torch.rand(tc.batch_size, generator=g) < tc.cond_dropout] = 0  # row 0 = empty prompt
        t = torch.randint(0, schedule.T, (tc.batch_size,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        x0, cap, t, eps = (shard(a, accelerator) for a in (x0, cap, t, eps))
        states, mask, _ = text[cap]
        x0, t, eps, states, mask = (a.to(accelerator.device) for a in (x0, t, eps, states, mask))
        x_t = schedule.add_noise(x0, eps, t)
        with accelerator.autocast():
            v_hat = unet(x_t, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
        loss = losses.v_prediction_loss(v_hat, schedule.v_target(x0, eps, t)).mean()
        if not torch.isfinite(loss):
            return {"loss": loss.item()}  # run_loop stops with a clear message before any update
        accelerator.backward(loss)
        if tc.grad_clip > 0:
            accelerator.clip_grad_norm_(unet.parameters(), tc.grad_clip)
        opt_p.step()
        opt_p.zero_grad(set_to_none=True)
        ema.update(raw_unet)
        return {"loss": loss.item()}

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
        x0 = schedule.x0_from_v(x, v, t_j)
        if j + 1 < steps:
            t_next = (t.float() * (steps - j - 1) / steps).round().long()
            x = schedule.add_noise(x0, schedule.eps_from_v(x, v, t_j), t_next)
    return x0


def nfsd_target(teacher, schedule: NoiseSchedule, x_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                cond, uncond, negative, s: float) -> torch.Tensor:
    """Noise-free score distillation (Katzir et al. 2023) as a distillation target.

    NFSD replaces SDS's (eps_hat - eps) by delta_D + s * delta_C, with delta_C = eps(x_t, c) - eps(x_t, empty)
    and delta_D = eps(x_t, empty) for t < 200, eps(x_t, empty) - eps(x_t, negative prompt) otherwise.
    The target x_psi = x_hat - (sigma / alpha) (delta_D + s delta_C) makes the SDS-weighted squared distance
    have exactly that gradient (see losses.py).
    """
    eps = lambda c: schedule.eps_from_v(x_t, teacher(x_t, t, encoder_hidden_states=c[0],  # noqa: E731
                                                       encoder_attention_mask=c[1]).sample, t)
    e_c, e_u, e_n = eps(cond), eps(uncond), eps(negative)
    small_t = (t < 200).view(-1, *([1] * (x_t.ndim - 1)))
    delta_d = torch.where(small_t, e_u, e_u - e_n)
    g = delta_d + s * (e_c - e_u)
    return x_hat - schedule.sigma(t, x_t) / schedule.alpha(t, x_t).clamp_min(1e-4) * g


def train_add(cfg, teacher_cfg: TeacherConfig, seed: int, train: Dataset, text: TextCache, teacher,
              discriminator, negative_row: int, out_dir: str | Path, checkpoint_dir: str | Path,
              live_dir: str | Path | None = None, grid_dir: str | Path | None = None,
              max_steps: int | None = None, progress: bool = True, fingerprint_extra=None) -> dict:
    """ADD: train the student against the discriminator (hinge, R1) and the teacher (distillation).

    ``teacher``: the frozen diffusers UNet (the student starts as a copy of it unless student_init is
    'random'); ``discriminator``: a Discriminator with a frozen feature network; ``negative_row``: the text
    cache row of NFSD's negative prompt. Saves the student's EMA weights to ``out_dir``.
    """
    import copy

    from . import discriminator as disc
    from .config import fingerprint

    tc, dc = cfg.train, cfg.discriminator
    # 1-2. Devices, precision, processes; images and caption rows.
    accelerator, x_all, cap_all, row_of = setup_run(tc, train, text)
    schedule = NoiseSchedule(teacher_cfg.schedule)
    tau = torch.tensor(cfg.student_timesteps)
    # 3. Networks: frozen teacher, student (from the teacher, section 3.1), discriminator heads.
    teacher = teacher.eval().requires_grad_(False).to(accelerator.device)
    torch.manual_seed(seed)
    student = copy.deepcopy(teacher).requires_grad_(True).train()
    if cfg.student_init == "random":
        student = type(teacher).from_config(teacher.config).train()
    ema = EMA(student, tc.ema_decay)
    ema_model = copy.deepcopy(student).eval().requires_grad_(False)
    discriminator = discriminator.train()
    opt_g = torch.optim.Adam(student.parameters(), lr=tc.lr_student, betas=tuple(tc.betas))
    opt_d = torch.optim.Adam(discriminator.heads.parameters(), lr=tc.lr_discriminator, betas=tuple(tc.betas))
    ckpt = Checkpointer(checkpoint_dir, fingerprint(cfg, teacher_cfg, seed, len(train), text.captions,
                                                    fingerprint_extra))
    raw_student = student
    # The discriminator is called through its parts (features, heads_forward), so it is moved, not wrapped;
    # multi-process gradient averaging of its heads is the scaling issue's work.
    d_raw = discriminator.to(accelerator.device)
    student, opt_g_p, opt_d_p = accelerator.prepare(student, opt_g, opt_d)
    augment = dict(color="color" in dc.augment, translation="translation" in dc.augment,
                   cutout="cutout" in dc.augment)
    weighting = losses.WEIGHTINGS[cfg.weighting]
    distance = {
        "mse": losses.distance_mse, "l1": losses.distance_l1, "pseudo_huber": losses.distance_pseudo_huber,
        "perceptual": lambda a, b: losses.distance_perceptual(a, b, d_raw.features),
    }[cfg.distance]
    lo, hi = cfg.teacher_t_range
    # Text states of the empty prompt (row 0) and of NFSD's negative prompt, one row each.
    empty_1 = tuple(a.to(accelerator.device) for a in text[torch.tensor([0])][:2])
    negative_1 = tuple(a.to(accelerator.device) for a in text[torch.tensor([negative_row])][:2])
    grid_text = None
    if grid_dir is not None:
        rows = [row_of.get(p) for p in cfg.sample_prompts]
        grid_text = rows if all(r is not None for r in rows) else None

    # 4. One ADD step: a student update (L_G + lambda L_distill), then a discriminator update (L_D).
    def step_fn(step: int) -> dict:
        g = step_generator(seed, step)
        idx = batch_indices(step, len(x_all), tc.batch_size, seed)
        x0, cap = x_all[idx], cap_all[idx]
        s = tau[torch.randint(0, len(tau), (tc.batch_size,), generator=g)]
        eps = torch.randn(x0.shape, generator=g)
        t = torch.randint(lo, hi + 1, (tc.batch_size,), generator=g)
        eps2 = torch.randn(x0.shape, generator=g)
        g_aug = step_generator(seed, step, stream=1)
        x0, cap, s, eps, t, eps2 = (shard(a, accelerator) for a in (x0, cap, s, eps, t, eps2))
        states, mask, pooled = text[cap]
        dev = accelerator.device
        x0, s, eps, t, eps2, states, mask, pooled = (a.to(dev) for a in (x0, s, eps, t, eps2, states, mask, pooled))
        n = len(x0)
        empty = tuple(a.expand(n, *a.shape[1:]) for a in empty_1)
        negative = tuple(a.expand(n, *a.shape[1:]) for a in negative_1)
        cond = (states, mask)
        # Student: x_s = alpha_s x0 + sigma_s eps at a student timestep s; x_hat = x0 prediction.
        x_s = schedule.add_noise(x0, eps, s)
        with accelerator.autocast():
            x_hat = schedule.x0_from_v(x_s, student(x_s, s, encoder_hidden_states=states,
                                                      encoder_attention_mask=mask).sample, s)
        c_img = d_raw.image_embedding(x0) if dc.c_img else None
        c_real = c_fake = d_raw.condition(pooled, c_img)
        pure = s == schedule.T - 1  # alpha = 0: the student's input holds no trace of x0
        if dc.c_img and dc.c_img_pure_noise == "teacher_ode" and pure.any():
            # Deviation from the paper's literal reading (which is silent here): a fake made from pure noise
            # is conditioned on the embedding of the teacher's deterministic solve from that same noise, so
            # D's image condition is a function of the noise and identical outputs stop receiving identical
            # gradients (without it the 1-step student collapses to one template per prompt). Real pairs
            # stay (x0, c_img(x0)).
            with torch.no_grad():
                x_ode = teacher_x0(teacher, schedule, x_s[pure], s[pure], (states[pure], mask[pure]),
                                   (empty[0][pure], empty[1][pure]), dc.ode_guidance, dc.ode_steps)
            c_img_fake = c_img.clone()
            c_img_fake[pure] = d_raw.image_embedding(x_ode.clamp(-1, 1))
            c_fake = d_raw.condition(pooled, c_img_fake)
        out = {}
        loss_g = torch.zeros((), device=dev)
        if cfg.lambda_adv > 0:
            logits_fake = d_raw.heads_forward(d_raw.features(disc.diff_augment(x_hat, g_aug, **augment)), c_fake)
            l_adv = losses.hinge_g(logits_fake).mean()
            loss_g = loss_g + cfg.lambda_adv * l_adv
            out["loss_G"] = l_adv.item()
        if cfg.lambda_distill > 0:
            with torch.no_grad():
                x_t = schedule.add_noise(x_hat.detach(), eps2, t)
                if cfg.weighting == "nfsd":
                    x_psi = nfsd_target(teacher, schedule, x_hat.detach(), x_t, t, cond, empty, negative,
                                        cfg.nfsd_guidance)
                else:
                    x_psi = teacher_x0(teacher, schedule, x_t, t, cond, empty, cfg.teacher_guidance,
                                       cfg.teacher_steps)
            c_t = weighting(schedule.alpha(t, x0), schedule.sigma(t, x0))
            l_distill = losses.distillation_loss(x_hat.float(), x_psi.float(), c_t, distance).mean()
            loss_g = loss_g + cfg.lambda_distill * l_distill
            out["loss_distill"] = l_distill.item()
        out["loss_student"] = loss_g.item()
        if not torch.isfinite(loss_g):
            return out  # run_loop stops with a clear message before any update
        opt_g_p.zero_grad(set_to_none=True)
        accelerator.backward(loss_g)
        if tc.grad_clip > 0:
            accelerator.clip_grad_norm_(student.parameters(), tc.grad_clip)
        opt_g_p.step()
        ema.update(raw_student)
        # Discriminator: hinge on real and fake, R1 on the heads' inputs for real images.
        if cfg.lambda_adv > 0:
            opt_d_p.zero_grad(set_to_none=True)  # also drops the grads L_G left on the heads
            with torch.no_grad():
                f_real = d_raw.features(disc.diff_augment(x0, g_aug, **augment))
                f_fake = d_raw.features(disc.diff_augment(x_hat.detach(), g_aug, **augment))
            f_real = [f.detach().requires_grad_(dc.r1_gamma > 0) for f in f_real]
            logits_real = d_raw.heads_forward(f_real, c_real)
            logits_fake = d_raw.heads_forward(f_fake, c_fake)
            l_d = (losses.hinge_d_real(logits_real) + losses.hinge_d_fake(logits_fake)).mean()
            r1 = losses.r1_penalty(logits_real, f_real).mean() if dc.r1_gamma > 0 else torch.zeros(())
            loss_d = l_d + dc.r1_gamma * r1
            accelerator.backward(loss_d)
            opt_d_p.step()
            out.update(loss_D=l_d.item(), r1=r1.item(),
                       logits_real=float(sum(l.mean() for l in logits_real)),
                       logits_fake=float(sum(l.mean() for l in logits_fake)))
        done = step + 1
        if grid_text is not None and tc.sample_every and done % tc.sample_every == 0 and accelerator.is_main_process:
            ema.copy_to(ema_model)
            save_student_grid(ema_model, schedule, text, grid_text, cfg, [1, 2, 4],
                              Path(grid_dir) / f"step_{done:06d}.png", f"ADD student (EMA) at step {done}")
        return out

    # 5. Train (resuming from the latest matching checkpoint).
    run = run_loop("add", step_fn, steps=tc.steps, log_every=tc.log_every, checkpoint_every=tc.checkpoint_every,
                   lr_factor=lambda k: min(1.0, (k + 1) / max(1, tc.warmup_steps)), checkpointer=ckpt,
                   modules={"student": raw_student, "disc_heads": d_raw.heads},
                   optimizers={"opt_student": opt_g, "opt_disc": opt_d}, emas={"ema": ema},
                   accelerator=accelerator, live_dir=live_dir, max_steps=max_steps, progress=progress)
    # 6. Save the student's EMA weights as a diffusers model.
    ema.copy_to(ema_model)
    if accelerator.is_main_process and run["end"] == tc.steps:
        ema_model.save_pretrained(out_dir, safe_serialization=True)
    return {"steps": run["end"], "resumed_from_step": run["start"], "train_seconds": run["train_seconds"],
            "images_per_second": run["end"] * tc.batch_size / run["train_seconds"],
            "history": run["history"], "student": ema_model}


def save_student_grid(student, schedule: NoiseSchedule, text: TextCache, rows: list[int], cfg, steps_list,
                      path: Path, title: str) -> Path:
    """One row per prompt; a block of ``sample_per_prompt`` columns per step count, the same noise seeds in
    every block (so a column shows one sample refined by more steps)."""
    from .plots import image_grid
    from .sampling import initial_noise, sample_student, student_timesteps

    k = cfg.sample_per_prompt
    ids = torch.tensor(rows).repeat_interleave(k)
    states, mask, _ = text[ids]
    c = student.config
    size = c.sample_size if isinstance(c.sample_size, (tuple, list)) else (c.sample_size, c.sample_size)
    noise = initial_noise(len(ids), (c.in_channels, *size), cfg.sample_seed)
    grid = [[] for _ in rows]
    col_labels = []
    for n_steps in steps_list:
        ts = student_timesteps(n_steps, cfg.student_timesteps, schedule.T)
        x = sample_student(student, schedule, states, mask, noise, ts, seed=cfg.sample_seed)
        for r in range(len(rows)):
            grid[r].extend(x[r * k:(r + 1) * k])
        col_labels += [f"{n_steps} step{'s' if n_steps > 1 else ''}"] + [""] * (k - 1)
    return image_grid(grid, path, row_labels=[text.captions[r] for r in rows], title=title,
                      col_labels=col_labels)
