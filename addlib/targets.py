"""The teacher's x0 estimates (ADD section 3.3): its one-call prediction or deterministic solve (the distillation
target; the c_img solve and the ODE term's target, DDIM or DPM-Solver++(2M)), and NFSD's target. The teacher is
frozen and queried on the schedule it was trained with; every function here is per sample."""
from __future__ import annotations

import torch

from .diffusion import NoiseSchedule


def teacher_x0(teacher, schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, cond, uncond,
               guidance: float, steps, solver: str = "ddim") -> torch.Tensor:
    """The teacher's x0 estimate from x_t: one prediction (steps = 1), or a deterministic solve from t to 0 in
    ``steps`` steps (Table 1f), with classifier-free guidance ``guidance``: ``solver`` 'ddim' (first order) or
    'dpmsolver++' (DPM-Solver++(2M), :func:`dpm_solver_2m`; its first step is DDIM's). ``schedule`` is the
    teacher's own. ``steps`` is one count for every row, or a count per row ((B,) tensor): step j of every
    solve with more than j steps is then made in one teacher call, so solves of different lengths share
    calls (the same per-row arithmetic as solving each group of equal length on its own)."""
    from .sampling import guided_v

    n = torch.as_tensor(steps, device=t.device).expand(len(t))
    x, x0 = x_t, torch.zeros_like(x_t)
    x0_prev, h_prev = torch.zeros_like(x_t), torch.full((len(t),), float("inf"), device=t.device)
    for j in range(int(n.max())):
        on = j < n
        rows = slice(None) if bool(on.all()) else on.nonzero().squeeze(1)
        n_j, t_r = n[rows], t[rows]
        t_j = (t_r.float() * (n_j - j) / n_j).round().long()
        x_r = x[rows]
        v = guided_v(teacher, x_r, t_j, tuple(a[rows] for a in cond), tuple(a[rows] for a in uncond), guidance)
        x0[rows] = x0_j = schedule.x0_from_output(x_r, v, t_j)
        if j + 1 < int(n.max()):
            t_next = (t_r.float() * (n_j - j - 1).clamp_min(0) / n_j).round().long()
            x = x.clone()
            if solver == "ddim":
                x[rows] = schedule.add_noise(x0_j, schedule.eps_from_output(x_r, v, t_j), t_next).to(x.dtype)
            else:
                x[rows], h = dpm_solver_2m(schedule, x_r, x0_j, x0_prev[rows], h_prev[rows], t_j, t_next)
                x0_prev, h_prev = x0_prev.clone(), h_prev.clone()
                x0_prev[rows], h_prev[rows] = x0_j, h
    return x0


def dpm_solver_2m(schedule: NoiseSchedule, x: torch.Tensor, x0: torch.Tensor, x0_prev: torch.Tensor,
                  h_prev: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of DPM-Solver++(2M) (Lu et al. 2022, data prediction, midpoint form) from x at t to t_next, per
    row: with lambda = log(alpha / sigma), h = lambda(t_next) - lambda(t) and r = h_prev / h,
    x' = (sigma' / sigma) x - alpha' (exp(-h) - 1) (x0 + (x0 - x0_prev) / (2 r)). A row without a finite previous
    step (h_prev = inf: its first step, or one from pure noise) takes the first-order step, DDIM's. Returns x' and h."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))  # half precision: the step in float32
    lam = lambda tt: (schedule.alpha(tt, xf).log() - schedule.sigma(tt, xf).log()).flatten()  # noqa: E731
    h = lam(t_next) - lam(t)
    c = torch.where(torch.isfinite(h) & torch.isfinite(h_prev), h / (2 * h_prev), torch.zeros_like(h))
    d = x0.to(xf.dtype) + c.view(-1, *[1] * (x.ndim - 1)) * (x0 - x0_prev).to(xf.dtype)
    x_next = (schedule.sigma(t_next, xf) / schedule.sigma(t, xf)) * xf \
        - schedule.alpha(t_next, xf) * torch.expm1(-h).view(-1, *[1] * (x.ndim - 1)) * d
    return x_next.to(x.dtype), h


def nfsd_target(teacher, schedule: NoiseSchedule, x_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                cond, uncond, negative, s: float) -> torch.Tensor:
    """Noise-free score distillation (Katzir et al. 2023) as a distillation target.

    NFSD replaces SDS's (eps_hat - eps) by delta_D + s * delta_C, with delta_C = eps(x_t, c) - eps(x_t, empty)
    and delta_D = eps(x_t, empty) for t < 200, eps(x_t, empty) - eps(x_t, negative prompt) otherwise.
    The target x_psi = x_hat - (sigma / alpha) (delta_D + s delta_C) makes the SDS-weighted squared distance
    have exactly that gradient (see losses.py). The negative prompt must describe a bad image: the empty
    prompt would make delta_D = 0 (the config refuses it).
    """
    eps = lambda c: schedule.eps_from_output(x_t, teacher(x_t, t, encoder_hidden_states=c[0],  # noqa: E731
                                                       encoder_attention_mask=c[1]).sample, t)
    e_c, e_u, e_n = eps(cond), eps(uncond), eps(negative)
    small_t = (t < 200).view(-1, *([1] * (x_t.ndim - 1)))
    delta_d = torch.where(small_t, e_u, e_u - e_n)
    g = delta_d + s * (e_c - e_u)
    return x_hat - schedule.sigma(t, x_t) / schedule.alpha(t, x_t).clamp_min(1e-4) * g
