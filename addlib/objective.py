"""The ADD objective (sections 3.2 and 3.3) as pure callables, in the manner of EDM's ``loss.py``: each call
returns *per-sample* losses (and the per-sample values a step logs); nothing here reduces over the batch, calls
``backward`` or steps an optimizer. ``distillation.train_add`` owns those.

    StudentLoss:        L(x0, c) = lambda_adv L_G(x_hat) + lambda L_distill(x_hat, sg(x_psi))
                                   [+ lambda_ode c(s) d(x_hat, sg(x_ode)) for inputs with noise; ours, off in the paper]
    DiscriminatorLoss:  L_D(x0, x_hat) = hinge_real(x0) + hinge_fake(x_hat) + gamma R1(x0)

Every random draw of a step is made by :func:`draw_step` for the *global* batch and sliced (training.py's
header), so both callables are deterministic functions of their inputs, and a step gives the same values
whatever the number of processes and micro-batches.

Two schedules (diffusion.py): the student noises its input and reads its x0 on the *student's* schedule; the
frozen teacher is re-noised into, read back and weighted (c(t)) on the schedule it was trained with.
"""
from __future__ import annotations

import dataclasses

import torch
from torch.profiler import record_function

from . import discriminator as disc_mod
from . import losses
from .diffusion import NoiseSchedule
from .targets import nfsd_target, teacher_x0  # noqa: F401 (the objective's targets; tests import them here)
from .timesteps import trailing_timesteps


# --------------------------------------------------------------------------------------------------
# One step's random draws.


@dataclasses.dataclass
class Draws:
    """Every random draw of one ADD step, one row per sample of the global batch."""
    s: torch.Tensor            # (B,) student timesteps, uniform over add.student_timesteps
    eps: torch.Tensor          # noise of the student's input x_s = alpha_s x0 + sigma_s eps
    t: torch.Tensor            # (B,) teacher timesteps of the re-noised student output
    eps_prime: torch.Tensor    # fresh noise of that re-noising (never eps)
    aug_g: dict | None         # D's augmentation of the generator's fakes (L_G)
    aug_real: dict | None      # ... of D's reals (L_D)
    aug_fake: dict | None      # ... of D's fakes (L_D)
    eps_chain: torch.Tensor | None = None  # (B, N-1, ...) add.student_input: student: the noises of the sampler's
                               # chain that makes the student's own estimate: x_{tau_1}, then the re-noisings
                               # at tau_2 .. tau_{N-1} (the last re-noising, at s itself, is eps)
    sampler_u: torch.Tensor | None = None  # (B,) U[0, 1): which of add.simulated_samplers makes a row's chain (only
                               # drawn when there are several)

    def rows(self, r) -> "Draws":
        """The draws of rows ``r`` (a micro-batch or a process's share)."""
        pick = lambda a: None if a is None else ({k: v[r] for k, v in a.items()} if isinstance(a, dict)  # noqa: E731
                                                  else a[r])
        return Draws(*(pick(getattr(self, f.name)) for f in dataclasses.fields(self)))

    def to(self, device) -> "Draws":
        """Timesteps and noises on ``device`` (augmentation parameters are moved where they are applied)."""
        return dataclasses.replace(self, s=self.s.to(device), eps=self.eps.to(device), t=self.t.to(device),
                                   eps_prime=self.eps_prime.to(device),
                                   eps_chain=None if self.eps_chain is None else self.eps_chain.to(device),
                                   sampler_u=None if self.sampler_u is None else self.sampler_u.to(device))


def teacher_timesteps(u: torch.Tensor, s: torch.Tensor, lo: int, hi: int, T: int, at_most_s: bool) -> torch.Tensor:
    """Teacher timesteps from uniform integer draws ``u`` in [lo, hi]: as they are (the paper's U[lo, hi]), or,
    with ``at_most_s``, rescaled into [lo, min(hi, s)] for an input that had noise (s < T-1), so the teacher
    never re-noises the student's output further than the student's input was."""
    if not at_most_s:
        return u
    top = torch.where(s < T - 1, s.clamp(lo, hi), torch.full_like(s, hi))
    return lo + (u - lo) * (top - lo + 1) // (hi - lo + 1)


def draw_step(cfg, generator: torch.Generator, aug_generator: torch.Generator, batch: int,
              latent_shape: tuple, pixel_shape: tuple, T: int) -> Draws:
    """The draws of one step for a global batch of ``batch`` (``cfg``: ADDConfig). Order of draws: s, eps, t,
    eps_prime (then, with ``student_input: student`` only, eps_chain, and with several simulated samplers their
    choice) from ``generator``; the three augmentations from ``aug_generator``. So the paper's input (``data``)
    draws exactly what it drew before the options existed."""
    tau = torch.tensor(cfg.student_timesteps)
    lo, hi = cfg.teacher_t_range
    s = tau[torch.randint(0, len(tau), (batch,), generator=generator)]
    eps = torch.randn((batch, *latent_shape), generator=generator)
    t = teacher_timesteps(torch.randint(lo, hi + 1, (batch,), generator=generator), s, lo, hi, T,
                          cfg.teacher_t_at_most_s)
    eps_prime = torch.randn((batch, *latent_shape), generator=generator)
    eps_chain = (torch.randn((batch, len(tau) - 1, *latent_shape), generator=generator)
                 if cfg.student_input == "student" else None)
    sampler_u = (torch.rand(batch, generator=generator)
                 if cfg.student_input == "student" and len(cfg.simulated_samplers) > 1 else None)
    augment = {k: k in cfg.discriminator.augment for k in ("color", "translation", "cutout")}
    augs = ([disc_mod.draw_augment(batch, *pixel_shape, aug_generator, **augment) for _ in range(3)]
            if cfg.lambda_adv > 0 else [None] * 3)
    return Draws(s, eps, t, eps_prime, *augs, eps_chain=eps_chain, sampler_u=sampler_u)


# --------------------------------------------------------------------------------------------------
# The two losses.


@dataclasses.dataclass
class StudentOutput:
    loss: torch.Tensor         # (B,) lambda_adv L_G + lambda L_distill (+ lambda_ode L_ode)
    parts: dict                # name -> (B,) tensor: loss_G, loss_distill, loss_ode, loss_student (what the step logs)
    x_hat: torch.Tensor        # the student's decoded x0 (with its graph)
    c_real: torch.Tensor | None  # D's condition for the real x0 (no graph)
    c_fake: torch.Tensor | None  # ... for the student's x_hat
    f_real: list | None = None   # F's taps of the real x0 (no graph), for D's step when its reals are not augmented
    f_fake: list | None = None   # ... of x_hat (no graph), for D's step when its fakes are not augmented


class StudentLoss:
    """The student's objective, section 3: L = lambda_adv L_G + lambda L_distill, per sample.

    1. x_s = alpha_s z0 + sigma_s eps at a student timestep s; x_hat = the student's x0 prediction (decoded).
       With ``student_input: student`` (ours), z0 of an input at s < tau_1 is the student's own estimate one
       trained timestep earlier, as its sampler makes it (:meth:`sampled_x0`), in place of the data's.
    2. L_G = -sum_k mean_n D_k(F_k(x_hat); c_text, c_img), the gradient flowing through the frozen F.
    3. x_hat re-noised with fresh eps' at a teacher timestep t on the teacher's schedule; the frozen teacher's
       x0 estimate x_psi (or NFSD's target) is the target, under stop-gradient; L_distill = c(t) d(x_hat, x_psi).
    4. With ``lambda_ode > 0`` (ours), for inputs with noise (s < T-1): + lambda_ode c(s) d(x_hat, sg(x_ode)), x_ode
       the teacher's deterministic solve from the same x_s (:meth:`teacher_solve`), c(.) the distillation weighting
       read on the student's schedule at s. L_distill re-noises the student's *own* output, so nothing else ties
       a later call's output to the input it was given (docs/multistep.md, hypothesis 8).
    """

    def __init__(self, cfg, teacher_unet, teacher_schedule: NoiseSchedule, student_schedule: NoiseSchedule,
                 space, discriminator, empty, negative):
        self.cfg = cfg                          # ADDConfig
        self.teacher = teacher_unet             # frozen teacher UNet (eval, no grad)
        self.sched_t = teacher_schedule         # the schedule the teacher was trained with
        self.sched_s = student_schedule         # the student's (zero terminal SNR where configured)
        self.space = space                      # PixelSpace or VAESpace (D and pixel distances see pixels)
        self.D = discriminator                  # frozen F + heads (the step freezes the heads for this loss)
        self.empty, self.negative = empty, negative  # (states, mask), each (1, L, D): "" and NFSD's negative
        self.weighting = losses.WEIGHTINGS[cfg.weighting]
        self.perceptual = cfg.distance in ("perceptual", "perceptual+pseudo_huber")

    def distance(self, fx: list | None = None):
        """d(x, y) per sample (add.distance); ``fx``: F's taps of x when they are computed already."""
        perceptual = lambda a, b: losses.distance_perceptual(a, b, self.D.features, fx)  # noqa: E731
        return {
            "mse": losses.distance_mse, "l1": losses.distance_l1, "pseudo_huber": losses.distance_pseudo_huber,
            "perceptual": perceptual,
            # the mean of the two: F's features are built blind to tone (SimCLR's colour jitter), pixels are not
            "perceptual+pseudo_huber": lambda a, b: 0.5 * (perceptual(a, b) + losses.distance_pseudo_huber(a, b)),
        }[self.cfg.distance]

    def chains(self, s: torch.Tensor, u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, the timesteps at which its sampler calls the student before s (padded with 0) and how many.
        The sampler: one of ``add.simulated_samplers`` that calls the student at s after its first call, drawn by
        ``u`` uniformly (the N-step sampler, at every trained timestep, is always one); a row at tau_1 has none."""
        tau = list(self.cfg.student_timesteps)
        grids = [trailing_timesteps(n, self.sched_s.T) for n in sorted(self.cfg.simulated_samplers) if n < len(tau)]
        grids = [g for g in grids if set(g) <= set(tau)] + [tau]   # the N-step sampler's is always one
        calls = torch.zeros(len(s), max(len(tau) - 1, 1), dtype=torch.long)
        m = torch.zeros(len(s), dtype=torch.long)
        for i, si in enumerate(s.tolist()):
            cands = [g for g in grids if si in g[1:]]
            if cands:
                g = cands[int(float(u[i]) * len(cands))] if len(cands) > 1 else cands[0]
                m[i] = k = g.index(si)
                calls[i, :k] = torch.tensor(g[:k])
        return calls.to(s.device), m.to(s.device)

    @torch.no_grad()
    def sampled_x0(self, student, z0: torch.Tensor, d: Draws, states, mask) -> torch.Tensor:
        """The x0 that each row's input x_s noises. ``student_input: data`` (the paper): the data's z0. ``student``
        (DMD2's backward simulation): the estimate the row's sampler (:meth:`chains`; sampling.sample_student)
        holds before it calls the student at s: the chain starts from eps_chain[:, 0] at its first timestep, and
        each call's x0 is re-noised with fresh eps_chain[:, j] to the sampler's next timestep; no gradient. The
        caller's re-noising to s itself uses eps. A row at tau_1 keeps the data's z0."""
        if self.cfg.student_input == "data":
            return z0
        calls, m = self.chains(d.s, d.sampler_u)
        if not (m > 0).any():
            return z0
        x = d.eps_chain[:, 0].to(z0.dtype).clone()
        est = z0.clone()
        for j in range(int(m.max())):
            on = m > j                                  # rows whose chain makes its (j+1)-th call
            t_j = calls[on, j]
            out = student(x[on], t_j, encoder_hidden_states=states[on], encoder_attention_mask=mask[on]).sample
            est[on] = self.sched_s.x0_from_output(x[on], out, t_j).to(est.dtype)
            nxt = m > j + 1                             # rows that call again: re-noise to their next timestep
            if nxt.any():
                x[nxt] = self.sched_s.add_noise(est[nxt], d.eps_chain[nxt, j + 1].to(est.dtype),
                                                calls[nxt, j + 1]).to(x.dtype)
        return est

    def solve_rows(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows that need the teacher's solve from their own input (:meth:`teacher_solve`): for D's c_img of
        the fake (pure-noise rows with ``c_img_pure_noise: teacher_ode``, noisy rows with ``c_img_noisy:
        teacher_ode``), and for the ODE regression (noisy rows, when lambda_ode > 0)."""
        dc = self.cfg.discriminator
        pure = s == self.sched_s.T - 1
        none = torch.zeros_like(pure)
        img = ((pure & (dc.c_img_pure_noise == "teacher_ode")) | (~pure & (dc.c_img_noisy == "teacher_ode"))
               if dc.c_img else none)
        return img, (~pure if self.cfg.lambda_ode > 0 else none)

    @torch.no_grad()
    def teacher_solve(self, z_x0, z_s, eps, s, rows, states, mask) -> torch.Tensor:
        """z_ode: the teacher's deterministic solve (``ode_solver``, guidance ``ode_guidance``) of rows ``rows`` from their
        input, zeros elsewhere. From pure noise: from the noise itself. From a noisy input: from x_s of the same
        x0 (``z_x0``, :meth:`sampled_x0`) and the same eps on the teacher's own schedule, in ceil(ode_steps (s + 1)
        / T) steps (the step size of the solve from pure noise)."""
        dc = self.cfg.discriminator
        pure = s == self.sched_s.T - 1
        z_in = torch.where(pure.view(-1, *[1] * (z_s.ndim - 1)), z_s, self.sched_t.add_noise(z_x0, eps, s))
        steps = (dc.ode_steps * (s + 1) + self.sched_t.T - 1) // self.sched_t.T
        z_ode = torch.zeros_like(z_in)
        empty = tuple(a.expand(int(rows.sum()), *a.shape[1:]) for a in self.empty)
        # one solve of every row: steps of equal index share a teacher call (teacher_x0's per-row steps)
        z_ode[rows] = teacher_x0(self.teacher, self.sched_t, z_in[rows], s[rows], (states[rows], mask[rows]), empty,
                                 dc.ode_guidance, steps[rows], dc.ode_solver)
        return z_ode

    def fake_condition(self, pooled, c_img, z_ode, rows, z_x0=None, noised_rows=None) -> torch.Tensor | None:
        """D's condition for the fakes: c_img of the x0 that each fake's input noised, but for rows ``rows``
        (:meth:`solve_rows`) the embedding of the teacher's solve ``z_ode`` from the fake's own input. For a fake
        from pure noise (``c_img_pure_noise: teacher_ode``; alpha_s = 0 carries no trace of the x0 whose c_img the
        batch drew) this is a deviation from the paper's literal reading (which is silent here) that makes D's image
        condition a function of the noise, so identical outputs stop receiving identical gradients (without it the
        1-step student collapses to one template per prompt). With ``c_img_noisy: teacher_ode`` a fake from a noisy
        input is judged against what the teacher makes of that input. With ``c_img_noisy: real`` (the paper) it is
        judged against the x0 its input noised: the data's, or with backward simulation (``student_input:
        student``) the student's own estimate ``z_x0`` for rows ``noised_rows``, never the data x0 it did not see."""
        own = noised_rows is not None and bool(noised_rows.any())
        if not rows.any() and not own:
            return self.D.condition(pooled, c_img)
        with torch.no_grad():
            c_img = c_img.clone()
            if own:
                c_img[noised_rows] = self.D.image_embedding(self.space.decode(z_x0[noised_rows]).float().clamp(-1, 1))
            if rows.any():
                c_img[rows] = self.D.image_embedding(self.space.decode(z_ode[rows]).float().clamp(-1, 1))
        return self.D.condition(pooled, c_img)

    def __call__(self, student, x0: torch.Tensor, text, d: Draws) -> StudentOutput:
        cfg = self.cfg
        states, mask, pooled = text
        n = len(x0)
        latent = cfg.distill_space == "latent"
        # 1. The student's x0 from x_s (z = x for a pixel-space teacher); x_s noises the data's z0 or the
        # student's own earlier estimate (student_input).
        z0 = self.space.encode(x0)
        with record_function("add/backward_simulation"):
            z_x0 = self.sampled_x0(student, z0, d, states, mask)
        with record_function("add/student_forward"):
            z_s = self.sched_s.add_noise(z_x0, d.eps, d.s)
            z_hat = self.sched_s.x0_from_output(
                z_s, student(z_s, d.s, encoder_hidden_states=states, encoder_attention_mask=mask).sample, d.s)
            x_hat = self.space.decode(z_hat)
        # 2. D's conditions: c_text and the real image's c_img (section 3.2, Table 1b); the teacher's solves from
        # the fakes' inputs, made once for c_img and the ODE regression.
        img_rows, ode_rows = self.solve_rows(d.s)
        with record_function("add/teacher_solve"):
            z_ode = (self.teacher_solve(z_x0, z_s, d.eps, d.s, img_rows | ode_rows, states, mask)
                     if (img_rows | ode_rows).any() else None)
        # F runs once on the real x0 (c_img and D's reals) and once on x_hat (L_G, the perceptual distances and
        # D's fakes) wherever no augmentation stands between.
        adv = cfg.lambda_adv > 0
        f_real = f_hat = c_img = None
        with record_function("add/c_img"):
            if cfg.discriminator.c_img or (adv and not d.aug_real):
                with torch.no_grad():
                    f_real, c_img = self.D.F(x0)
            c_img = c_img if cfg.discriminator.c_img else None
            c_real = self.D.condition(pooled, c_img)
            # rows whose input noised the student's own estimate and whose c_img is of "the real" x0: that estimate
            own = (d.s != cfg.student_timesteps[0]) & ~img_rows \
                if cfg.student_input == "student" and c_img is not None else None
            c_fake = self.fake_condition(pooled, c_img, z_ode, img_rows, z_x0, own)
        if (adv and not d.aug_g) or (self.perceptual and not latent):
            with record_function("add/F_x_hat"):
                f_hat = self.D.features(x_hat)
        loss = torch.zeros(n, device=x0.device)
        parts = {}
        # 3. Adversarial: L_G = -sum_k D_k(F_k(x_hat)).
        if adv:
            with record_function("add/L_G"):
                f_fake = f_hat if not d.aug_g else self.D.features(disc_mod.apply_augment(x_hat, d.aug_g))
                l_adv = losses.hinge_g(self.D.heads_forward(f_fake, c_fake))
            loss = loss + cfg.lambda_adv * l_adv
            parts["loss_G"] = l_adv
        pred = z_hat if latent else x_hat   # the paper's latent setting compares decoded images (distill_space)
        # 4. Distillation: the teacher denoises the re-noised x_hat; c(t) d(x_hat, sg(x_psi)).
        if cfg.lambda_distill > 0:
            with torch.no_grad(), record_function("add/distill_target"):
                z_t = self.sched_t.add_noise(z_hat.detach(), d.eps_prime, d.t)
                empty = tuple(a.expand(n, *a.shape[1:]) for a in self.empty)
                if cfg.weighting == "nfsd":
                    negative = tuple(a.expand(n, *a.shape[1:]) for a in self.negative)
                    z_psi = nfsd_target(self.teacher, self.sched_t, z_hat.detach(), z_t, d.t, (states, mask), empty,
                                        negative, cfg.nfsd_guidance)
                else:
                    z_psi = teacher_x0(self.teacher, self.sched_t, z_t, d.t, (states, mask), empty,
                                       cfg.teacher_guidance, cfg.teacher_steps)
                target = z_psi if latent else self.space.decode(z_psi)
            with record_function("add/distill_distance"):
                c_t = self.weighting(self.sched_t.alpha(d.t, pred), self.sched_t.sigma(d.t, pred))
                l_distill = losses.distillation_loss(pred.float(), target.float(), c_t,
                                                     self.distance(None if latent else f_hat))
            loss = loss + cfg.lambda_distill * l_distill
            parts["loss_distill"] = l_distill
        # 5. ODE regression (ours) for inputs with noise: c(s) d(x_hat, sg(x_ode)), c(.) at s on the student's
        # schedule; rows from pure noise contribute 0.
        if cfg.lambda_ode > 0:
            l_ode = torch.zeros(n, device=x0.device)
            if ode_rows.any():
                with torch.no_grad(), record_function("add/ode_target_decode"):
                    target = z_ode[ode_rows] if latent else self.space.decode(z_ode[ode_rows])
                with record_function("add/ode_distance"):
                    p, s = pred[ode_rows], d.s[ode_rows]
                    c_s = self.weighting(self.sched_s.alpha(s, p), self.sched_s.sigma(s, p))
                    f_p = None if latent or f_hat is None else [f[ode_rows] for f in f_hat]
                    l_ode = l_ode.index_put((ode_rows,), losses.distillation_loss(p.float(), target.float(), c_s,
                                                                                  self.distance(f_p)))
            loss = loss + cfg.lambda_ode * l_ode
            parts["loss_ode"] = l_ode
        parts["loss_student"] = loss
        detached = lambda fs, aug: None if fs is None or aug else [f.detach() for f in fs]  # noqa: E731  (aug: {} = none)
        return StudentOutput(loss, parts, x_hat, None if c_real is None else c_real.detach(),
                             None if c_fake is None else c_fake.detach(), detached(f_real, d.aug_real),
                             detached(f_hat, d.aug_fake))


class DiscriminatorLoss:
    """D's objective, section 3.2: hinge on real and fake, R1 on the heads' inputs for the reals, per sample.

        L_D = sum_k mean_n max(0, 1 - D_k(F_k(x0))) + sum_k mean_n max(0, 1 + D_k(F_k(x_hat))) + gamma R1

    F is frozen, so its features are computed without a graph; the fakes carry no gradient to the student.
    """

    def __init__(self, discriminator, r1_gamma: float):
        self.D = discriminator        # frozen F + trainable heads
        self.gamma = r1_gamma         # R1 weight (token-count normalised, losses.r1_penalty)

    def __call__(self, x0: torch.Tensor, x_hat: torch.Tensor, c_real, c_fake, aug_real: dict | None,
                 aug_fake: dict | None, f_real: list | None = None, f_fake: list | None = None
                 ) -> tuple[torch.Tensor, dict]:
        """``f_real``, ``f_fake``: F's taps of the (unaugmented) x0 and x_hat when the student's loss has them
        (StudentOutput); F is frozen, so they are the taps this step would compute again."""
        with torch.no_grad(), record_function("add/D_features"):
            if f_real is None:
                f_real = self.D.features(disc_mod.apply_augment(x0, aug_real))
            if f_fake is None:
                f_fake = self.D.features(disc_mod.apply_augment(x_hat.detach(), aug_fake))
        with record_function("add/D_heads"):
            f_real = [f.detach().float().requires_grad_(self.gamma > 0) for f in f_real]
            logits_real = self.D.heads_forward(f_real, c_real)
            logits_fake = self.D.heads_forward([f.float() for f in f_fake], c_fake)
            l_d = losses.hinge_d_real(logits_real) + losses.hinge_d_fake(logits_fake)
        with record_function("add/D_R1"):
            r1 = losses.r1_penalty(logits_real, f_real) if self.gamma > 0 else torch.zeros_like(l_d)
        parts = {"loss_D": l_d, "r1": r1,
                 "logits_real": sum(l.detach().float().mean(1) for l in logits_real),
                 "logits_fake": sum(l.detach().float().mean(1) for l in logits_fake)}
        return l_d + self.gamma * r1, parts
