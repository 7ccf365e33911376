"""The student's timestep rule (ADD section 3: "trailing" spacing, the first step at t = T-1). Plain Python with
no imports from the package, so the config can check step counts before any compute."""
from __future__ import annotations


def trailing_timesteps(steps: int, T: int = 1000) -> list[int]:
    """'Trailing' spacing (Lin et al. 2024; diffusers' SD-Turbo setting): the first step is t = T-1, pure
    noise. 1 -> [999]; 2 -> [999, 499]; 4 -> [999, 749, 499, 249]."""
    return [int(round(T - i * T / steps)) - 1 for i in range(steps)]


def student_step_counts(trained: list[int], T: int = 1000) -> list[int]:
    """The step counts a student trained at ``trained`` can sample with: k steps use the trailing spacing of
    k steps, which must be a subset of the trained timesteps (the student never saw any other), or the
    trained timesteps themselves when k is their number. For [999, 749, 499, 249]: 1, 2 and 4."""
    ok = {len(trained)}
    ok.update(k for k in range(1, len(trained)) if set(trailing_timesteps(k, T)) <= set(trained))
    return sorted(ok)
