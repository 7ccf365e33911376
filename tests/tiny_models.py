"""Tiny random stand-ins for real pretrained components, written in the same file formats (tokenizer files,
transformers and diffusers folders), so the code paths that load a user's checkpoints are tested offline."""
from __future__ import annotations

import json
from pathlib import Path

import torch


def clip_tokenizer(path: Path):
    """A CLIP BPE tokenizer over single characters (no merges), saved to ``path``; returns it."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    tok.save_pretrained(str(path))
    return tok


SD_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                   prediction_type="v_prediction")


def _clip_text(tok, layers: int = 1, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                          num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1, **extra)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         norm_num_groups=4, layers_per_block=1, sample_size=16, scaling_factor=0.5)


UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            layers_per_block=1, attention_head_dim=8, norm_num_groups=4)


def sd_folder(path: Path, seed: int = 0) -> Path:
    """A Stable-Diffusion-layout text-to-image folder (SD 2.1-v-like: v-prediction, scaled-linear betas) with
    tiny random parts: a UNet2DConditionModel on 4x8x8 latents, an AutoencoderKL (16x16 RGB <-> 4x8x8), a
    CLIP text model and tokenizer, and a scheduler config."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tok = clip_tokenizer(path / "tokenizer")
    CLIPTextModel(_clip_text(tok)).save_pretrained(str(path / "text_encoder"))
    UNet2DConditionModel(**UNET, cross_attention_dim=16).save_pretrained(str(path / "unet"))
    _vae().save_pretrained(str(path / "vae"))
    DDIMScheduler(**SD_SCHEDULE).save_pretrained(str(path / "scheduler"))
    return path


SDXL_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                     prediction_type="epsilon")
SDXL_POOLED = 8  # the second tower's projection width (1280 in SDXL)


def sdxl_folder(path: Path, seed: int = 0) -> Path:
    """An SDXL-layout folder, saved by diffusers' StableDiffusionXLPipeline (model_index.json included): two
    tiny CLIP towers (the second with a projection) and tokenizers, a UNet with SDXL's added ``text_time``
    conditioning cross-attending to both towers' states (16 + 16), the tiny VAE, and SDXL's epsilon-prediction
    Euler scheduler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tok, tok_2 = clip_tokenizer(path / "tokenizer"), clip_tokenizer(path / "tokenizer_2")
    time_embed = 4
    unet = UNet2DConditionModel(**UNET, cross_attention_dim=32, addition_embed_type="text_time",
                                addition_time_embed_dim=time_embed,
                                projection_class_embeddings_input_dim=SDXL_POOLED + 6 * time_embed)
    StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(_clip_text(tok, layers=2)),
        text_encoder_2=CLIPTextModelWithProjection(_clip_text(tok_2, layers=2, projection_dim=SDXL_POOLED)),
        tokenizer=tok, tokenizer_2=tok_2, unet=unet, scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULE),
        add_watermarker=False).save_pretrained(str(path))
    return path


def tiny_digits(n: int = 16):
    """n 1x8x8 images, one fixed random pattern per caption (3 captions, so there is something to learn),
    and a random text cache (row 0 = empty prompt)."""
    from addlib.data import TRAIN, Dataset
    from addlib.text import TextCache

    g = torch.Generator().manual_seed(0)
    patterns = torch.randint(0, 256, (3, 1, 8, 8), generator=g, dtype=torch.uint8)
    ds = Dataset(patterns[torch.arange(n) % 3], torch.arange(n) % 3, [["a", "b", "c"][i % 3] for i in range(n)],
                 torch.full((n,), TRAIN, dtype=torch.uint8))
    cache = TextCache(["", "a", "b", "c"], torch.randn(4, 4, 16, generator=g),
                      torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]]).float(),
                      torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=-1))
    return ds, cache


class DeltaDenoiser(torch.nn.Module):
    """The exact v-prediction for data concentrated at one point x*: x0 = x* whatever x_t, so
    v = (alpha_t x_t - x*) / sigma_t."""

    def __init__(self, schedule, target):
        super().__init__()
        self.s, self.target = schedule, target
        self.p = torch.nn.Parameter(torch.zeros(()))  # device/dtype anchor
        self.calls = 0

    def forward(self, x, t, encoder_hidden_states=None, encoder_attention_mask=None):
        self.calls += 1
        t = t.long().clamp(0, self.s.T - 1)
        v = (self.s.alpha(t, x) * x - self.target) / self.s.sigma(t, x).clamp_min(1e-4)
        return type("Out", (), {"sample": v})
