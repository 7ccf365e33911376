"""ADD's training loop (paper section 3.1): the student, initialised from the frozen teacher, trained against
the discriminator (section 3.2) and the teacher's distillation target (section 3.3).

The objective is objective.py (pure callables, per-sample losses); the generic resumable loop is
training.run_loop. One step here, in numbered parts: every random draw of the step, one spectral-norm power
iteration, the student update (L_G + lambda L_distill, D's heads frozen), the discriminator update
(hinge + R1).
"""
from __future__ import annotations

import contextlib
import copy
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.profiler import record_function

from . import grids
from . import lora

from .data import Dataset, to_float
from .discriminator import Discriminator, FeatureNetwork
from .models import EMA
from .pretrain import load_backbone
from .text import TextCache
from .training import (Checkpointer, average_gradients, batch_indices, content_digest, global_means, run_loop,
                       setup_run, step_generator, weight_dtype)

if TYPE_CHECKING:  # annotations only
    from .config.add import DiscriminatorConfig
    from .config.features import FeatureNetConfig


def build_discriminator(feat_cfg: FeatureNetConfig, disc_cfg: DiscriminatorConfig, channels: int,
                        c_text_dim: int, features_dir: Path, seed: int = 0) -> Discriminator:
    """D (section 3.2): the frozen feature network F (the weights in ``features_dir``, or timm's / a random
    init as ``feat_cfg`` says) and trainable heads conditioned on c_text (``c_text_dim`` wide) and c_img."""
    backbone = load_backbone(feat_cfg, channels, features_dir, seed)
    fn = FeatureNetwork(backbone, feat_cfg.taps, feat_cfg.tap_patch_embed)
    return Discriminator(fn, c_text_dim, disc_cfg.c_text, disc_cfg.c_img, disc_cfg.cmap_dim, disc_cfg.group_size)


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
    from .config import fingerprint
    from .diffusion import student_schedule
    from .objective import DiscriminatorLoss, StudentLoss

    tc = cfg.train
    # What the run trains on, by content, before anything is moved or cast: a checkpoint written on other data,
    # captions, text embeddings, teacher (or VAE) weights or feature network F is never resumed.
    inputs = content_digest(train.images, train.labels, train.captions, text.captions, text.states, text.mask,
                            text.pooled, teacher.unet, teacher.space, discriminator.F)
    # 1. Devices, precision, processes; images and caption rows.
    accelerator, x_all, cap_all = setup_run(tc, train, text)
    dev, wdtype = accelerator.device, weight_dtype(tc.mixed_precision)
    sched_t, space = teacher.schedule, teacher.space.to(dev, wdtype)
    sched_s = student_schedule(sched_t.cfg, cfg.student_zero_terminal_snr)
    # 2. Networks: the student (section 3.1), the frozen teacher and F in the weight dtype, D's heads; the EMA,
    # both optimisers, the checkpoints of this run.
    student, teacher_unet = student_and_teacher(cfg, teacher, space, dev, wdtype, seed)
    ema = EMA(student, tc.ema_decay, keys=lora.trainable_names(student) if cfg.lora is not None else None)
    ema_model = copy.deepcopy(student).eval().requires_grad_(False)
    opt_g = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=tc.lr_student,
                             betas=tuple(tc.betas))
    opt_d = torch.optim.Adam(discriminator.heads.parameters(), lr=tc.lr_discriminator, betas=tuple(tc.betas))
    ckpt = Checkpointer(checkpoint_dir, fingerprint(cfg, teacher.schedule.cfg, teacher.source, seed, inputs,
                                                    fingerprint_extra))
    # The discriminator is called through its parts (features, heads_forward), so it is moved, not wrapped;
    # its heads' gradients are averaged over processes by average_gradients.
    d_raw = discriminator.to(dev).train()
    d_raw.F.to(wdtype)
    wrapped, opt_g_p, opt_d_p = accelerator.prepare(student, opt_g, opt_d)
    # 3. The objective (objective.py): text states of the empty prompt (row 0) and NFSD's negative prompt.
    empty_1 = tuple(a.to(dev) for a in text[torch.tensor([0])][:2])
    negative_1 = tuple(a.to(dev) for a in text[torch.tensor([negative_row])][:2])
    student_loss = StudentLoss(cfg, teacher_unet, sched_t, sched_s, space, d_raw, empty_1, negative_1)
    disc_loss = DiscriminatorLoss(d_raw, cfg.discriminator.r1_gamma)
    # 4. One ADD step (ADDStep: the draws, the power iteration, the student's and D's updates, the grids).
    grid_text = text.rows(cfg.sample_prompts).tolist() if grid_dir is not None and text.has(cfg.sample_prompts) \
        else None
    kept_grids = ckpt.run_dir / "progress"  # survives a kill and DVC's removal of outputs: a resumed run has them all
    step = ADDStep(cfg, seed, accelerator, x_all, cap_all, text, wrapped, student, ema, ema_model, d_raw, opt_g_p,
                   opt_d_p, student_loss, disc_loss, sched_s, space, grid_text, grid_dir, kept_grids if save else None)
    # 5. Train (resuming from the latest matching checkpoint).
    run = run_loop("add", step, steps=tc.steps, log_every=tc.log_every, checkpoint_every=tc.checkpoint_every,
                   lr_factor=lambda k: min(1.0, (k + 1) / max(1, tc.warmup_steps)), checkpointer=ckpt,
                   modules={"student": student, "disc_heads": d_raw.heads},
                   optimizers={"opt_student": opt_g, "opt_disc": opt_d}, emas={"ema": ema},
                   accelerator=accelerator, live_dir=live_dir, max_steps=max_steps, progress=progress, save=save)
    # 6. Save the student's EMA weights as a diffusers model (LoRA-ADD: the adapters too); the grids of steps
    # before a resume, from the run's checkpoint folder.
    ema.copy_to(ema_model)
    if grid_text is not None and accelerator.is_main_process and kept_grids.is_dir():
        for png in sorted(kept_grids.glob("step_*.png")):
            if int(png.stem.split("_")[1]) <= run["end"] and not (Path(grid_dir) / png.name).exists():
                shutil.copy2(png, Path(grid_dir) / png.name)
    cost = trained_state(student, opt_g, ema)
    finished = save and accelerator.is_main_process and run["end"] == tc.steps
    if cfg.lora is not None:  # LoRA-ADD: the adapters on their own, and the fused plain UNet as the student
        if finished:
            lora.save_adapters(ema_model, Path(out_dir) / lora.LORA_DIR, cfg.lora)
        ema_model = lora.fused(ema_model)
    if finished:
        ema_model.save_pretrained(out_dir, safe_serialization=True)
    return {"steps": run["end"], "resumed_from_step": run["start"], "train_seconds": run["train_seconds"],
            "images_per_second": run["end"] * tc.batch_size / max(run["train_seconds"], 1e-9), **cost,
            "history": run["history"], "student": ema_model, "main_process": accelerator.is_main_process,
            "checkpoints": ckpt.run_dir}


def student_and_teacher(cfg, teacher, space, dev, wdtype, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The student (section 3.1: a copy of the teacher's UNet, or a random init of its architecture; float32
    master weights; LoRA-ADD: adapters on the frozen copy) and the frozen teacher UNet in the weight dtype."""
    from .latent import VAESpace

    torch.manual_seed(seed)
    student = copy.deepcopy(teacher.unet).requires_grad_(True).train()
    if cfg.student_init == "random":
        student = type(teacher.unet).from_config(teacher.unet.config).train()
    student = student.to(dev)
    if any(p.dtype != torch.float32 for p in student.parameters()):
        student = student.float()  # trained weights stay float32 (a half-precision checkpoint is upcast)
    if cfg.lora is not None:  # LoRA-ADD: the copied teacher weights stay frozen, only the adapters train
        student = lora.add_adapters(student, cfg.lora)
    if cfg.train.gradient_checkpointing:
        student.enable_gradient_checkpointing()
        if isinstance(space, VAESpace):  # both losses backpropagate through the decoder: its activations too
            space.vae.enable_gradient_checkpointing()
    teacher_unet = teacher.unet.eval().requires_grad_(False).to(dev)
    if wdtype != torch.float32:
        teacher_unet = teacher_unet.to(wdtype)
    return student, teacher_unet


class ADDStep:
    """One ADD step, in numbered parts: every random draw of the step, one spectral-norm power iteration, the
    student's update (L_G + lambda L_distill over micro-batches, D's heads frozen), D's update (hinge + R1), and
    a sample grid every ``sample_every`` steps. ``student`` is the module the optimiser steps (``wrapped``: the
    same, as accelerate prepared it); ``kept_grids``: where grids are copied to survive a resume (None: not)."""

    def __init__(self, cfg, seed, accelerator, x_all, cap_all, text, wrapped, student, ema, ema_model, d_raw, opt_g,
                 opt_d, student_loss, disc_loss, sched_s, space, grid_text, grid_dir, kept_grids):
        self.cfg, self.seed, self.accelerator, self.x_all, self.cap_all, self.text = cfg, seed, accelerator, x_all, \
            cap_all, text
        self.wrapped, self.student, self.ema, self.ema_model, self.d_raw = wrapped, student, ema, ema_model, d_raw
        self.opt_g, self.opt_d, self.student_loss, self.disc_loss = opt_g, opt_d, student_loss, disc_loss
        self.sched_s, self.space, self.grid_text, self.grid_dir, self.kept_grids = sched_s, space, grid_text, \
            grid_dir, kept_grids
        tc = cfg.train
        self.micro = tc.gradient_accumulation
        per_proc = tc.batch_size // accelerator.num_processes
        if per_proc % self.micro:
            raise ValueError(f"add.train.gradient_accumulation {self.micro} does not divide the per-process batch "
                             f"{per_proc}")
        per_micro, first = per_proc // self.micro, accelerator.process_index * per_proc
        self.micro_slices = [slice(first + j * per_micro, first + (j + 1) * per_micro) for j in range(self.micro)]
        from .objective import draw_step

        self.draw_step = draw_step  # imported once, not in every step
        self.pixel_shape = tuple(x_all.shape[1:])
        self.latent_shape = space.latent_shape(self.pixel_shape)

    def no_sync(self, j: int):
        """Skip DDP's gradient all-reduce on all but the last micro-batch (the sum is reduced once)."""
        return self.accelerator.no_sync(self.wrapped) if j + 1 < self.micro else contextlib.nullcontext()

    def logged(self, parts: dict, sums: dict) -> None:
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float().mean().item() / self.micro

    def __call__(self, step: int) -> dict:
        with record_function("add/step"):
            return self.one_step(step)

    def one_step(self, step: int) -> dict:
        cfg, tc, accelerator, d_raw, micro = self.cfg, self.cfg.train, self.accelerator, self.d_raw, self.micro
        dev = accelerator.device
        # a. Every random draw of the step, for the global batch; this process's images and captions.
        draws = self.draw_step(cfg, step_generator(self.seed, step), step_generator(self.seed, step, stream=1),
                          tc.batch_size, self.latent_shape, self.pixel_shape, self.student_loss.sched_t.T)
        idx = batch_indices(step, len(self.x_all), tc.batch_size, self.seed)
        sums: dict[str, float] = {}
        # b. One power iteration of D's spectral norms: L_G and L_D below see the same normalised weights.
        if cfg.lambda_adv > 0:
            d_raw.spectral_step()
        # c. Student update with L_G + lambda L_distill, accumulated over micro-batches; D's heads are frozen
        # (gradients reach the student through them, none is left on them).
        d_raw.heads.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        fakes = []
        for j, r in enumerate(self.micro_slices):
            x0 = to_float(self.x_all[idx[r]]).to(dev)
            text_r = tuple(a.to(dev) for a in self.text[self.cap_all[idx[r]]])
            with self.no_sync(j), accelerator.autocast():
                out = self.student_loss(self.wrapped, x0, text_r, draws.rows(r).to(dev))
                loss = out.loss.mean()
                if not torch.isfinite(loss):
                    return {"loss_student": loss.item()}  # run_loop stops with a clear message before any update
                with record_function("add/student_backward"):
                    accelerator.backward(loss / micro if micro > 1 else loss)
            self.logged(out.parts, sums)
            fakes.append((r, x0, out.x_hat.detach(), out.c_real, out.c_fake, out.f_real, out.f_fake))
        d_raw.heads.requires_grad_(True)
        with record_function("add/student_update"):
            if tc.grad_clip > 0:
                accelerator.clip_grad_norm_(self.wrapped.parameters(), tc.grad_clip)
            self.opt_g.step()
            self.ema.update(self.student)
        # d. Discriminator update with L_D (hinge on real and fake, R1 on the heads' inputs for the reals).
        if cfg.lambda_adv > 0:
            self.opt_d.zero_grad(set_to_none=True)
            for r, x0, x_hat, c_real, c_fake, f_real, f_fake in fakes:
                d = draws.rows(r)
                with accelerator.autocast():
                    loss_d, parts = self.disc_loss(x0, x_hat, c_real, c_fake, d.aug_real, d.aug_fake, f_real, f_fake)
                    loss_d = loss_d.mean()
                with record_function("add/D_backward"):
                    accelerator.backward(loss_d / micro if micro > 1 else loss_d)
                self.logged(parts, sums)
            with record_function("add/D_update"):
                average_gradients(d_raw.heads.parameters(), accelerator)
                self.opt_d.step()
        # e. The EMA student's grid every sample_every steps (kept beside the checkpoints for a resumed run).
        done = step + 1
        if self.grid_text is not None and tc.sample_every and done % tc.sample_every == 0 \
                and accelerator.is_main_process:
            self.ema.copy_to(self.ema_model)
            png = grids.save_student_grid(self.ema_model, self.sched_s, self.text, self.grid_text, cfg, [1, 2, 4],
                                          Path(self.grid_dir) / f"step_{done:06d}.png",
                                          f"ADD student (EMA) at step {done}", space=self.space)
            if self.kept_grids is not None:
                self.kept_grids.mkdir(parents=True, exist_ok=True)
                shutil.copy2(png, self.kept_grids / png.name)
        return global_means(sums, accelerator)


def trained_state(student: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: EMA) -> dict:
    """What training the student holds beyond the frozen networks: trainable parameters, and the bytes of them,
    their gradients, Adam moments and EMA (measured on the tensors; activations are not included); and the peak
    memory so far: the accelerator's peak allocation, or on a CPU the process's peak resident size."""
    import resource

    def nbytes(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))

    params = [p for p in student.parameters() if p.requires_grad]
    moments = (t for st in optimizer.state.values() for t in st.values() if getattr(t, "ndim", 0) > 0)
    state = (nbytes(params) + nbytes(p.grad for p in params if p.grad is not None) + nbytes(moments)
             + nbytes(ema.shadow.values()))
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10)  # Linux reports KiB
    return {"trainable_parameters": sum(p.numel() for p in params), "trained_state_mib": state / 2 ** 20,
            "peak_memory_mib": peak}
