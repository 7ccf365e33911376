"""Losses as pure functions: they return per-sample tensors; the training loop reduces and calls backward.

So far: the teacher's denoising loss. The ADD losses (hinge adversarial, R1, distillation with its
weightings and distances, ADD sections 3.2-3.3) are added here by the ADD issue.
"""
from __future__ import annotations

import torch


def v_prediction_loss(v_hat: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error ||v_hat - v||^2 / dim: the v-prediction objective (Salimans & Ho 2022).

    Its minimiser is E[v | x_t, c], from which x0 = alpha x_t - sigma v (see diffusion.py).
    """
    return (v_hat.float() - v.float()).pow(2).flatten(1).mean(1)
