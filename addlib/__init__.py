"""Adversarial Diffusion Distillation library."""
