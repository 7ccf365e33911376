"""The ``preference`` section: the paper's user study at this scale."""
from __future__ import annotations

import dataclasses
import re

from .loader import check


@dataclasses.dataclass
class PreferenceConfig:
    """The paper's user study at this scale (stage ``preference``, addlib/preference.py): blinded pairs for one
    prompt and noise, two questions, automatic and human votes, win rates and Elo."""
    prompts: int               # study prompts, drawn from the evaluation reference split's captions
    seeds: int                 # noises per prompt: each comparison gets prompts x seeds pairs
    seed: int                  # the prompts, the noises and the pair schedule
    comparisons: list[list[str]]   # [a, b]: models named add@K, consistency@K or teacher@K (K steps; the
                                   # teacher's sampler and guidance are evaluate's best row at K)
    prompt_tie: float          # automatic prompt rater: probabilities closer than this are a tie
    quality_tie: float         # automatic quality rater: reconstruction residuals closer than this (relative) tie
    check_reals: int           # each rater's check: held-out real images of the prompted digit per study image
    check_min: float           # a rater passes when it prefers the real image over a known failure at least this
                               # often (quality: the teacher's 1 step; prompt following: a real image of another
    check_band: float          # digit) and prefers one real image over another 0.5 +- check_band of the time
    elo_rounds: int            # orders the games are replayed in (the paper: 1,000)
    votes: str                 # people's vote file (JSON lines, appended by notebooks/vote.ipynb)

    def validate(self, where: str) -> None:
        check(self.prompts >= 1 and self.seeds >= 1, f"{where}.prompts", "prompts and seeds must be >= 1")
        check(self.prompt_tie >= 0 and self.quality_tie >= 0, f"{where}.prompt_tie", "tie bands must be >= 0")
        check(self.check_reals >= 2 and self.elo_rounds >= 1, f"{where}.check_reals", "check_reals >= 2, elo_rounds >= 1")
        check(0.5 < self.check_min <= 1 and 0 < self.check_band < 0.5, f"{where}.check_min",
              "check_min must be in (0.5, 1] and check_band in (0, 0.5)")
        check(len(self.comparisons) >= 1, f"{where}.comparisons", "needs at least one comparison")
        for i, c in enumerate(self.comparisons):
            check(len(c) == 2 and c[0] != c[1], f"{where}.comparisons[{i}]", f"needs two different models, got {c}")
            for m in c:
                ok = re.fullmatch(r"(add|consistency|teacher)@([1-9][0-9]*)", m)
                check(ok is not None, f"{where}.comparisons[{i}]",
                      f"{m!r}: name models add@K, consistency@K or teacher@K")
        pairs = [frozenset(c) for c in self.comparisons]
        check(len(set(pairs)) == len(pairs), f"{where}.comparisons", "a comparison is listed twice")
