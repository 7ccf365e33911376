"""The ``consistency`` section: the LCM baseline of the preference study."""
from __future__ import annotations

import dataclasses
from typing import Literal

from .loader import check


@dataclasses.dataclass
class ConsistencyConfig:
    """Consistency distillation (LCM) from the same teacher, the preference study's baseline (stage
    ``consistency``, addlib/consistency.py). Its budget is add.train's, used as it is."""
    solver_steps: int        # N: the teacher's DDIM grid t_i = (i + 1) T/N - 1; LCM's skipping interval k = T/N
    guidance: float          # classifier-free guidance w of the teacher's solver step (LCM samples w; fixed here)
    distance: Literal["mse", "l1", "pseudo_huber"]   # d between f_theta and the target (iCT, LCM: pseudo_huber)
    target_decay: float      # mu: EMA decay of the target network (LCM: 0.95)
    timestep_scaling: float  # LCM's boundary scalings c_skip, c_out at s * t (LCM: 10)
    sigma_data: float        # their sigma_data (0.5)

    def validate(self, where: str) -> None:
        check(self.solver_steps >= 1, f"{where}.solver_steps", f"must be >= 1, got {self.solver_steps}")
        check(self.guidance >= 0, f"{where}.guidance", f"must be >= 0, got {self.guidance}")
        check(0 <= self.target_decay < 1, f"{where}.target_decay", f"must be in [0, 1), got {self.target_decay}")
        check(self.timestep_scaling > 0 and self.sigma_data > 0, f"{where}.timestep_scaling",
              "timestep_scaling and sigma_data must be > 0")
