"""The ``add`` section: Adversarial Diffusion Distillation itself (the student's timesteps, the
distillation loss, the discriminator, LoRA and the training loop's budget)."""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional

from .loader import check


@dataclasses.dataclass
class DiscriminatorConfig:
    c_text: bool             # projection-condition on the pooled text embedding (Table 1b)
    c_img: bool              # projection-condition on F's CLS embedding of the real x0 (Table 1b)
    r1_gamma: float          # R1 weight on the heads' inputs (paper: 1e-5)
    augment: list[Literal["color", "translation", "cutout"]]  # differentiable augmentation, real and fake
    cmap_dim: int            # projection dimension (StyleGAN-T: 64)
    group_size: int          # local batch-norm group size (StyleGAN-T: 8)
    # c_img of a *fake* whose student input was pure noise (alpha = 0): 'real' = the paper's literal reading
    # (the unrelated real x0 the batch drew); 'teacher_ode' = the embedding of the teacher's deterministic
    # solve from the same noise, a per-noise target (a deviation, see distillation.train_add).
    c_img_pure_noise: Literal["real", "teacher_ode"]
    # ... of a fake whose student input had noise (0 < alpha_s < 1): 'real' = the paper (the x0 that was noised);
    # 'teacher_ode' = the embedding of the teacher's solve from that same noisy input (issue 21: how much of x0's
    # detail x_s still carries falls with s, and the student cannot be asked to reproduce the rest)
    c_img_noisy: Literal["real", "teacher_ode"]
    ode_steps: int           # steps of that teacher solve from pure noise; from s < T-1 proportionally fewer,
                             # ceil(ode_steps (s + 1) / T), so every solve takes steps of the same size
    ode_solver: Literal["ddim", "dpmsolver++"]  # its solver: DDIM (first order) | DPM-Solver++(2M) (second order:
                             # as accurate in fewer steps, so fewer teacher calls; issue 37)
    ode_guidance: float      # its classifier-free guidance

    def validate(self, where: str) -> None:
        check(self.r1_gamma >= 0, f"{where}.r1_gamma", "must be >= 0")
        check(self.cmap_dim >= 1 and self.group_size >= 1, f"{where}.cmap_dim", "cmap_dim and group_size >= 1")
        check(self.ode_steps >= 1 and self.ode_guidance >= 0, f"{where}.ode_steps", "ode_steps >= 1, ode_guidance >= 0")


@dataclasses.dataclass
class ADDTrainConfig:
    steps: int
    batch_size: int
    lr_student: float
    lr_discriminator: float
    betas: list[float]       # Adam betas for both optimisers
    warmup_steps: int
    grad_clip: float         # max global grad norm of the student (0 = off)
    ema_decay: float         # EMA of the student; the EMA model is the one saved
    checkpoint_every: int
    log_every: int
    sample_every: int        # steps between sample grids logged during training (0 = off)
    num_threads: int
    mixed_precision: Literal["no", "fp16", "bf16"]   # also the dtype of the frozen teacher, VAE and F
    gradient_accumulation: int    # micro-batches per step (each process's batch is cut into this many; keep
                                  # micro-batches a multiple of discriminator.group_size: D's batch-norm groups)
    gradient_checkpointing: bool  # recompute the student UNet's activations in backward (memory for time)

    def validate(self, where: str) -> None:
        check(self.steps >= 1 and self.batch_size >= 1, f"{where}.steps", "steps and batch_size must be >= 1")
        check(self.lr_student > 0 and self.lr_discriminator > 0, f"{where}.lr_student", "learning rates must be > 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{where}.betas",
              "needs two values in [0, 1)")
        check(self.grad_clip >= 0 and 0 <= self.ema_decay < 1, f"{where}.ema_decay", "must be in [0, 1)")
        check(self.checkpoint_every >= 1 and self.log_every >= 1 and self.sample_every >= 0,
              f"{where}.log_every", "intervals must be >= 1 (sample_every >= 0)")
        check(self.gradient_accumulation >= 1 and self.batch_size % self.gradient_accumulation == 0,
              f"{where}.gradient_accumulation", f"must be >= 1 and divide batch_size={self.batch_size}")
        check(self.warmup_steps >= 0, f"{where}.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check(self.num_threads >= 0, f"{where}.num_threads", f"must be >= 0, got {self.num_threads}")


@dataclasses.dataclass
class LoRAConfig:
    """LoRA-ADD (addlib/lora.py): only low-rank adapters on the student UNet train, W + (alpha / r) B A."""
    rank: int                  # r
    alpha: float               # the adapters' scale is alpha / r (peft's lora_alpha)
    target_modules: list[str]  # module names peft adapts (diffusers' UNet names: to_q, to_k, to_v, to_out.0, conv1, ...)

    def validate(self, where: str) -> None:
        check(self.rank >= 1, f"{where}.rank", f"must be >= 1, got {self.rank}")
        check(self.alpha > 0, f"{where}.alpha", f"must be > 0, got {self.alpha}")
        check(len(self.target_modules) >= 1, f"{where}.target_modules", "needs at least one module name")


@dataclasses.dataclass
class ADDConfig:
    student_timesteps: list[int]   # tau_1 > ... > tau_N; training draws one uniformly; tau_1 = T-1 is pure noise
    student_init: Literal["teacher", "random"]    # Table 1c
    weighting: Literal["exponential", "sds", "nfsd"]  # c(t) of the distillation loss (Table 1d)
    distance: Literal["mse", "l1", "pseudo_huber", "perceptual", "perceptual+pseudo_huber"]  # d of the distillation loss
    distill_space: Literal["pixel", "latent"]  # latent teachers: d on decoded pixels (the paper) or on latents
    lambda_distill: float    # lambda (paper: 2.5); 0 = adversarial only (Table 1d)
    lambda_adv: float        # weight of L_G; 0 = distillation only (Table 1d)
    teacher_steps: int       # teacher denoising steps building the target (Table 1f: 1, 2, 4)
    teacher_t_range: list[int]   # teacher timesteps t ~ U[lo, hi] for re-noising the student output
    teacher_t_at_most_s: bool    # inputs with noise (s < T-1): t ~ U[lo, min(hi, s)] (ours; the paper: U[lo, hi])
    student_input: Literal["data", "student"]  # the x0 noised into an input x_s with s < tau_1: the data's (the
                             # paper) | the student's own estimate one trained timestep earlier, made as its sampler
                             # makes it, without gradient (ours: DMD2's backward simulation; docs/multistep.md)
    simulated_samplers: list[int]  # student_input: student: the samplers (step counts) whose chains make the inputs;
                             # a row at s takes the chain of one sampler that calls the student at s after its first
                             # call, drawn uniformly ([4]: the 4-step sampler's only; [2, 4]: at 499 also the 2-step's)
    lambda_ode: float        # inputs with noise (s < T-1): + lambda_ode c(s) d(x_hat, sg(x_ode)), x_ode the teacher's
                             # deterministic solve from the same x_s (ours: DMD's regression; 0 = the paper)
    teacher_guidance: float  # classifier-free guidance of the teacher's target (exponential/sds)
    nfsd_guidance: float     # s of NFSD's delta_C term
    nfsd_negative_prompt: str  # NFSD's description of a *bad* image (delta_D = eps(empty) - eps(negative));
                               # the empty prompt would make delta_D = 0 (refused for weighting nfsd)
    student_zero_terminal_snr: bool  # the student's schedule: the teacher's rescaled to zero terminal SNR
                                     # (t = T-1 pure noise; needs v-prediction) | false: the teacher's own.
                                     # The frozen teacher always runs on the schedule it was trained with
    lora: Optional[LoRAConfig]  # null: the student's weights all train; else only LoRA adapters (LoRA-ADD)
    discriminator: DiscriminatorConfig
    train: ADDTrainConfig
    sample_prompts: list[str]
    sample_per_prompt: int
    sample_seed: int

    def validate(self, where: str) -> None:
        ts = self.student_timesteps
        check(len(ts) >= 1 and all(a > b for a, b in zip(ts, ts[1:])) and min(ts) >= 0,
              f"{where}.student_timesteps", "must be strictly decreasing non-negative timesteps")
        check(self.lambda_distill >= 0 and self.lambda_adv >= 0, f"{where}.lambda_distill", "weights must be >= 0")
        check(self.lambda_distill + self.lambda_adv > 0, f"{where}.lambda_adv", "both loss weights are 0")
        check(self.lambda_ode >= 0, f"{where}.lambda_ode", f"must be >= 0, got {self.lambda_ode}")
        check(len(set(self.simulated_samplers)) == len(self.simulated_samplers), f"{where}.simulated_samplers",
              f"must be distinct step counts, got {self.simulated_samplers}")
        for key in ("teacher_guidance", "nfsd_guidance"):
            check(getattr(self, key) >= 0, f"{where}.{key}", f"must be >= 0, got {getattr(self, key)}")
        check(self.teacher_steps in (1, 2, 4), f"{where}.teacher_steps", "must be 1, 2 or 4")
        check(not (self.distance.startswith("perceptual") and self.distill_space == "latent"), f"{where}.distance",
              f"{self.distance} is a distance between images: use distill_space: pixel")
        lo_hi = self.teacher_t_range
        check(len(lo_hi) == 2 and 0 <= lo_hi[0] <= lo_hi[1], f"{where}.teacher_t_range", "needs [lo, hi], lo <= hi")
        check(self.weighting != "nfsd" or self.nfsd_negative_prompt.strip() != "", f"{where}.nfsd_negative_prompt",
              "is the empty (unconditional) prompt, so NFSD's delta_D = eps(empty) - eps(negative) would be 0: "
              "describe a bad image (e.g. 'a blurry, smudged, unreadable scribble')")
        check(self.sample_per_prompt >= 1 and len(self.sample_prompts) >= 1, f"{where}.sample_prompts",
              "needs prompts and sample_per_prompt >= 1")
        check(self.lora is None or self.student_init == "teacher", f"{where}.lora",
              "adapters fine-tune the teacher's weights: needs student_init: teacher")
