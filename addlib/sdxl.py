"""SDXL-class teachers: two text towers and the UNet's added (pooled-text and size) conditioning.

An SDXL UNet takes, besides the token states it cross-attends to, ``added_cond_kwargs``: the second text
tower's pooled projection (``text_embeds``) and the micro-conditioning ``time_ids`` (original size, crop
top-left, target size, in pixels). The rest of the library passes one text condition around, the
(states, mask, pooled) rows of the text cache (text.py), and calls every UNet as
``unet(x, t, encoder_hidden_states=states, encoder_attention_mask=mask)``. So SDXL fits in without a
second code path:

- :class:`SDXLTextEncoder` encodes prompts as ``StableDiffusionXLPipeline.encode_prompt`` does (both towers'
  penultimate hidden states concatenated; the second tower's projected end-of-text embedding as
  ``text_embeds``; the empty prompt as zeros when the pipeline sets ``force_zeros_for_empty_prompt``, as its
  classifier-free guidance does) and *packs* ``text_embeds`` into one extra token after the states
  (:func:`pack`). c_text for the discriminator is that embedding, L2-normalised.
- :class:`SDXLUNet` is diffusers' ``UNet2DConditionModel`` that unpacks that token into ``text_embeds`` and
  computes ``time_ids`` from the input's size: original and target size = the latent size times the VAE's
  factor, crop (0, 0), which is what the SDXL pipeline uses when it generates at the size it is asked for.
  The student (a copy of the teacher) is one too, and saves as a plain diffusers UNet folder (its VAE factor
  is kept in the config as ``_vae_scale_factor``); ``models.load_unet`` loads either kind.

The export (export.py) writes the student as a ``StableDiffusionXLPipeline`` folder with a plain UNet, so
diffusers itself computes the added conditioning at sampling time (tests/test_sdxl.py checks that both agree).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

N_TIME_IDS = 6  # original (h, w), crop top-left (y, x), target (h, w)


def is_sdxl_folder(folder: str | Path) -> bool:
    """A diffusers SDXL-layout pipeline folder (a second text tower beside the first)."""
    return (Path(folder) / "text_encoder_2").is_dir()


def pack(states: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """(B, L, D) token states and (B, P) pooled text embeddings, P <= D -> (B, L + 1, D): one extra token
    holding text_embeds, zero-padded."""
    b, _, d = states.shape
    p = text_embeds.shape[-1]
    if p > d:
        raise ValueError(f"pooled text embedding ({p}) wider than the token states ({d}): cannot pack it")
    extra = torch.zeros(b, 1, d, dtype=states.dtype, device=states.device)
    extra[:, 0, :p] = text_embeds.to(states.dtype)
    return torch.cat([states, extra], dim=1)


def unpack(packed: torch.Tensor, text_embed_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`pack`: (states (B, L, D), text_embeds (B, P))."""
    return packed[:, :-1], packed[:, -1, :text_embed_dim]


class SDXLUNet(UNet2DConditionModel):
    """An SDXL-class UNet called like every other UNet here: the pooled text embedding arrives packed in the
    token states (:func:`pack`), the size conditioning is computed from the input (module docstring).
    ``added_cond_kwargs`` given explicitly are used as they are (diffusers' own call)."""

    @property
    def text_embed_dim(self) -> int:
        c = self.config
        return int(c.projection_class_embeddings_input_dim - N_TIME_IDS * c.addition_time_embed_dim)

    @property
    def vae_scale_factor(self) -> int:
        return int(self.config.get("_vae_scale_factor", 8))

    def time_ids(self, sample: torch.Tensor) -> torch.Tensor:
        h, w = (n * self.vae_scale_factor for n in sample.shape[-2:])
        ids = torch.tensor([h, w, 0, 0, h, w], dtype=sample.dtype, device=sample.device)
        return ids.expand(len(sample), N_TIME_IDS)

    def forward(self, sample, timestep, encoder_hidden_states, *args, encoder_attention_mask=None,
                added_cond_kwargs=None, **kwargs):
        if added_cond_kwargs is None:
            encoder_hidden_states, text_embeds = unpack(encoder_hidden_states, self.text_embed_dim)
            added_cond_kwargs = {"text_embeds": text_embeds, "time_ids": self.time_ids(sample)}
            encoder_attention_mask = None  # SDXL attends to every token (its pipeline passes no mask)
        return super().forward(sample, timestep, encoder_hidden_states, *args,
                               encoder_attention_mask=encoder_attention_mask, added_cond_kwargs=added_cond_kwargs,
                               **kwargs)


class SDXLTextEncoder(torch.nn.Module):
    """SDXL's two frozen CLIP text towers, giving (packed states (B, L + 1, D1 + D2), mask of ones, c_text): what
    text.TextEncoder gives for one tower (``TextEncoder.from_config`` returns this for an SDXL-class folder)."""

    def __init__(self, folder: str | Path, max_length: int = 77):
        super().__init__()
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        folder = Path(folder)
        load = dict(local_files_only=True)
        self.tokenizers = [CLIPTokenizer.from_pretrained(folder / "tokenizer", **load),
                           CLIPTokenizer.from_pretrained(folder / "tokenizer_2", **load)]
        self.model = CLIPTextModel.from_pretrained(folder / "text_encoder", **load).eval().requires_grad_(False)
        self.model_2 = (CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2", **load)
                        .eval().requires_grad_(False))
        index = folder / "model_index.json"
        self.force_zeros = bool(json.loads(index.read_text()).get("force_zeros_for_empty_prompt", True)
                                if index.is_file() else True)
        self.max_length, self.pooling, self.attention_mask = max_length, "eos", False
        self.dim = int(self.model.config.hidden_size + self.model_2.config.hidden_size)

    def train(self, mode: bool = True):  # frozen: always eval
        return super().train(False)

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        prompts = list(prompts)
        states = []
        for tokenizer, model in zip(self.tokenizers, (self.model, self.model_2)):
            ids = tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                            return_tensors="pt").input_ids
            out = model(ids.to(next(model.parameters()).device), output_hidden_states=True)
            states.append(out.hidden_states[-2])  # the penultimate layer, as SDXL was trained
        states, text_embeds = torch.cat(states, dim=-1), out.text_embeds
        if self.force_zeros:  # the unconditional embedding of SDXL's guidance
            empty = torch.tensor([p == "" for p in prompts], device=states.device)
            states = states.masked_fill(empty[:, None, None], 0.0)
            text_embeds = text_embeds.masked_fill(empty[:, None], 0.0)
        packed = pack(states, text_embeds)
        mask = torch.ones(packed.shape[:2], dtype=packed.dtype, device=packed.device)
        return packed, mask, torch.nn.functional.normalize(text_embeds.float(), dim=-1)
