"""The ``evaluate`` section: the main evaluation (samples, FID reference, the teacher's samplers and
guidance search, speed, the Figure-4 grid, optional real Inception/CLIP weights)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

from .loader import check


@dataclasses.dataclass
class EvaluateConfig:
    num_samples: int                 # generated images per row (FID, precision/recall, CLIP score)
    seed: int                        # noise and prompt draw of the test samples
    reference: Literal["train", "holdout"]   # FID reference split; guidance is chosen against the other
    teacher_samplers: list[Literal["ddim", "dpmsolver++", "euler"]]
    teacher_steps: list[int]
    student_steps: list[int]
    guidance_candidates: list[float]  # the teacher's guidance scale is chosen among these per sampler/steps
    guidance_samples: int            # samples per candidate, scored by FID against the held-out split
    guidance_max_steps: int          # rows with more steps reuse the choice made at this step count
    guidance_seed: int
    seed_repeats: int                # extra noise seeds for the student's FID spread (its rows are cheap)
    pr_k: int                        # k of the improved precision/recall k-NN radii
    batch_size: int                  # sampling batch; also the "large batch" of the speed benchmark
    speed_repeats: int               # timed repeats at batch 1 after one warm-up (median reported)
    grid_steps: list[int]            # teacher step counts shown in the Figure-4 grid (beside the student's)
    grid_per_prompt: int
    inception: Optional[str]         # folder with clean-fid's inception-2015-12-05.pt: standard FID features
    clip: Optional[str]              # local transformers CLIP folder: CLIP score with real CLIP
    num_threads: int

    def validate(self, where: str) -> None:
        check(self.num_samples >= 2 and self.guidance_samples >= 2, f"{where}.num_samples", "must be >= 2")
        for key in ("teacher_steps", "student_steps", "grid_steps"):
            v = getattr(self, key)
            check(len(v) >= 1 and all(1 <= s <= 1000 for s in v), f"{where}.{key}", "steps must be in [1, 1000]")
        check(len(self.teacher_samplers) >= 1, f"{where}.teacher_samplers", "needs at least one sampler")
        check(len(self.guidance_candidates) >= 1 and all(w >= 0 for w in self.guidance_candidates),
              f"{where}.guidance_candidates", "needs values >= 0")
        check(self.seed_repeats >= 0 and self.pr_k >= 1 and self.batch_size >= 1 and self.speed_repeats >= 1,
              f"{where}.pr_k", "pr_k, batch_size, speed_repeats >= 1; seed_repeats >= 0")
        check(self.pr_k < self.num_samples, f"{where}.pr_k", "must be smaller than num_samples")
        check(self.guidance_max_steps >= 1 and self.grid_per_prompt >= 1, f"{where}.guidance_max_steps",
              "guidance_max_steps and grid_per_prompt must be >= 1")
        check(self.num_threads >= 0, f"{where}.num_threads", f"must be >= 0, got {self.num_threads}")

    def check_inputs(self, root: Path, where: str = "evaluate") -> None:
        if self.inception:
            check((Path(self.inception) / "inception-2015-12-05.pt").is_file(), f"{where}.inception",
                  f"{self.inception}/inception-2015-12-05.pt not found")
        if self.clip:
            check((Path(self.clip) / "config.json").is_file(), f"{where}.clip",
                  f"no transformers CLIP folder at {self.clip}")
