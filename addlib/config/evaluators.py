"""The ``evaluators`` section: the in-domain evaluator networks (classifier, CLIP-like tower, detail
autoencoder) trained by the ``evaluators`` stage."""
from __future__ import annotations

import dataclasses

from .loader import check


@dataclasses.dataclass
class EvaluatorNetConfig:
    channels: list[int]      # CNN width per resolution level (two 3x3 convs each)
    steps: int
    batch_size: int
    lr: float                # AdamW peak, linear warm-up then cosine to 0
    weight_decay: float
    warmup_steps: int
    checkpoint_every: int
    log_every: int

    def validate(self, where: str) -> None:
        check(len(self.channels) >= 1 and all(c >= 1 for c in self.channels), f"{where}.channels",
              "needs at least one positive width")
        check(self.steps >= 1 and self.batch_size >= 2, f"{where}.steps", "need steps >= 1 and batch_size >= 2")
        check(self.lr > 0 and self.weight_decay >= 0, f"{where}.lr", "lr must be > 0, weight_decay >= 0")
        check(self.checkpoint_every >= 1 and self.log_every >= 1, f"{where}.log_every", "must be >= 1")
        check(self.warmup_steps >= 0, f"{where}.warmup_steps", f"must be >= 0, got {self.warmup_steps}")


@dataclasses.dataclass
class DetailNetConfig(EvaluatorNetConfig):
    """The detail space's denoising autoencoder (its convolutional encoder halves the resolution per width)."""
    code_channels: int       # channels of the encoder's last map; the feature is that map flattened
    noise: float             # std of the Gaussian noise added to the input (images in [-1, 1])

    def validate(self, where: str) -> None:
        super().validate(where)
        check(self.code_channels >= 1, f"{where}.code_channels", f"must be >= 1, got {self.code_channels}")
        check(self.noise >= 0, f"{where}.noise", f"must be >= 0, got {self.noise}")


@dataclasses.dataclass
class EvaluatorsConfig:
    classifier: EvaluatorNetConfig   # FID / precision-recall features and prompt accuracy (needs labels)
    clip: EvaluatorNetConfig         # image tower trained against the frozen text encoder (CLIP score)
    detail: DetailNetConfig          # the second, detail-sensitive space for FID and precision/recall
    num_threads: int

    def validate(self, where: str) -> None:
        check(self.num_threads >= 0, f"{where}.num_threads", f"must be >= 0, got {self.num_threads}")
