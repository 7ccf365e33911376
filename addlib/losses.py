"""ADD's losses as pure functions: they return per-sample tensors; the training loop (objective.py) reduces,
weights and calls backward. Nothing here calls ``.backward()`` (R1 uses ``torch.autograd.grad`` with
``create_graph``). The teacher's denoising loss is in teacher.py, F's contrastive loss in pretrain.py.

- ADD section 3.2, adversarial (hinge):
      L_G = -E[ sum_k D_k(F_k(x_hat)) ]
      L_D =  E[ sum_k max(0, 1 - D_k(F_k(x0))) + gamma R1 ] + E[ sum_k max(0, 1 + D_k(F_k(x_hat))) ]
  Each head returns one logit per token; as in StyleGAN-T the hinge is taken per token and averaged over
  tokens, then summed over heads k. R1 is taken with respect to each head's *input* F_k(x0) and normalised
  by its token count N_k: R1 = sum_k ||d(sum_n D_k,n) / d F_k(x0)||^2 / N_k, so duplicating every token
  leaves it unchanged and gamma means the same at 16 px and at 512 px (the token-*mean* logit's gradient
  would shrink as 1/N_k, the token-*sum*'s grow as N_k).
- ADD section 3.3, distillation:  L_distill = c(t) * d(x_hat, sg(x_hat_psi)), with
  c(t) in {exponential: alpha_t, sds: alpha_t / (2 sigma_t) * w(t), nfsd: as sds on the NFSD target}
  and d in {mse, l1, pseudo_huber, perceptual}. Distances are per-sample *means* over pixels (as
  ``F.mse_loss``), so lambda does not depend on the resolution. With d = mse and the SDS weighting, the
  gradient w.r.t. x_hat is w(t) (eps_hat - eps) / dim: Appendix A's SDS gradient up to the constant 1/dim
  (checked in the tests).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch


# --------------------------------------------------------------------------------------------------
# Adversarial (hinge) losses over a list of per-head logits, each (B, N_k).


def hinge_d_real(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum(torch.relu(1 - l.float()).mean(1) for l in logits)


def hinge_d_fake(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum(torch.relu(1 + l.float()).mean(1) for l in logits)


def hinge_g(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum(-l.float().mean(1) for l in logits)


def r1_penalty(logits: Sequence[torch.Tensor], head_inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-sample sum_k || d (sum_n D_k,n) / d F_k(x0) ||^2 / N_k over heads k with N_k tokens (logits (B, N_k)).

    A head that is linear in its input gets ||w||^2 whatever N_k (tested). ``head_inputs`` must require grad
    and be what produced ``logits``. The graph is kept (create_graph) so that the penalty itself can be
    differentiated w.r.t. the head weights.
    """
    total = sum(l.float().sum() for l in logits)
    grads = torch.autograd.grad(total, list(head_inputs), create_graph=True)
    return sum(g.float().pow(2).flatten(1).sum(1) / l.shape[1] for g, l in zip(grads, logits))


# --------------------------------------------------------------------------------------------------
# Distillation: weightings c(t) and distances d.


def weight_exponential(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """c(t) = alpha_t (ADD's default: best FID in Table 1d)."""
    return alpha


def weight_sds(alpha: torch.Tensor, sigma: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """c(t) = alpha_t / (2 sigma_t) * w(t), with w(t) = sigma_t^2 unless given (DreamFusion's choice)."""
    w = sigma ** 2 if w is None else w
    return alpha / (2 * sigma) * w


WEIGHTINGS: dict[str, Callable] = {"exponential": weight_exponential, "sds": weight_sds, "nfsd": weight_sds}


def distance_mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample squared L2 distance, ||x - y||^2 / dim."""
    return (x - y).pow(2).flatten(1).mean(1)


def distance_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample L1 distance, ||x - y||_1 / dim."""
    return (x - y).abs().flatten(1).mean(1)


PSEUDO_HUBER_C = 0.00054  # iCT (Song & Dhariwal 2023): c = 0.00054 sqrt(dim) on the unnormalised norm


def distance_pseudo_huber(x: torch.Tensor, y: torch.Tensor, c: float = PSEUDO_HUBER_C) -> torch.Tensor:
    """iCT's pseudo-Huber distance divided by sqrt(dim): sqrt(||x - y||^2 / dim + c^2) - c.

    ~ ||x - y||^2 / (2 c dim) for small errors (L2 regime), ~ ||x - y|| / sqrt(dim) for large ones.
    """
    sq = distance_mse(x, y)
    return sq / (torch.sqrt(sq + c * c) + c)  # = sqrt(sq + c^2) - c without float cancellation


def distance_perceptual(x: torch.Tensor, y: torch.Tensor,
                        features: Callable[[torch.Tensor], Sequence[torch.Tensor]],
                        fx: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """LPIPS-style: sum over layers of the mean squared difference of channel-normalised features of a
    frozen network (``features`` maps images to a list of (B, C, N) tensors). ``fx``: ``features(x)`` when the
    caller has it already (with its graph), so x is not passed through the network twice."""
    fx, fy = (features(x) if fx is None else fx), features(y)
    out = 0.0
    for a, b in zip(fx, fy):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-8)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-8)
        out = out + (a - b).pow(2).sum(1).mean(1)
    return out


def distillation_loss(x_hat: torch.Tensor, x_target: torch.Tensor, c_t: torch.Tensor,
                      distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Per-sample c(t) * d(x_hat, sg(x_target)); the target carries no gradient."""
    return c_t.flatten() * distance(x_hat, x_target.detach())
