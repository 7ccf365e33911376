"""The evaluation's own networks (stage ``evaluators``), made here because no Inception or CLIP weights
exist offline. Both are kept apart from the discriminator's feature network F on purpose (Kynkaanniemi
et al. 2023: a discriminator that shares the metric's features can lower FID without better images):

============  ======================  ==================================  ===========================
network       architecture            objective                           used for
============  ======================  ==================================  ===========================
F             ViT (timm), 4-px patch  SimCLR, no labels                   discriminator (stage features)
classifier    CNN (this module)       cross-entropy on the class labels    FID, precision/recall, prompt accuracy
image tower   CNN (this module)       CLIP loss vs frozen MiniLM captions  CLIP score
detail        conv autoencoder        denoising reconstruction, no labels  the second FID / P-R space
============  ======================  ==================================  ===========================

The classifier's features separate classes far more than they vary within one, so its FID barely sees blur,
lost strokes or a collapse within a class; the autoencoder must reconstruct every stroke from a noisy input, so
its code (flattened, wide) keeps that detail: every row is scored in both spaces (issue 21).

Each is its own training run with its own seed stream. Users with the standard networks point
``evaluate.inception`` at clean-fid's Inception file and ``evaluate.clip`` at a local transformers CLIP
folder; the metric functions are the same.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:  # annotations only
    from .config.evaluators import EvaluatorNetConfig


class ConvNet(nn.Module):
    """A small CNN: per width, two 3x3 conv + BatchNorm + ReLU, then 2x2 pooling (none after the last);
    global average pooling gives the ``dim``-d embedding; ``out`` is a linear map of it (class logits or
    the image tower's projection into the text space)."""

    def __init__(self, in_chans: int, channels: list[int], out_dim: int):
        super().__init__()
        layers, c_in = [], in_chans
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i + 1 < len(channels):
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.body = nn.Sequential(*layers)
        self.dim = c_in
        self.out = nn.Linear(c_in, out_dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(x))


class ImageTower(nn.Module):
    """CLIP-style image tower: a ConvNet projecting into the frozen text encoder's pooled space, and a
    learned temperature (CLIP's logit scale, initialised to 1/0.07)."""

    def __init__(self, in_chans: int, channels: list[int], text_dim: int):
        super().__init__()
        self.net = ConvNet(in_chans, channels, text_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)


class DenoisingAE(nn.Module):
    """A convolutional denoising autoencoder. Encoder: per width, a 3x3 conv + GroupNorm + SiLU and a stride-2
    3x3 conv (halving the resolution), then a 1x1 conv to ``code_channels``; ``embed`` is that code map
    flattened (code_channels x (H / 2^levels)^2 features). Decoder: the mirror image with nearest upsampling."""

    def __init__(self, in_chans: int, channels: list[int], code_channels: int):
        super().__init__()
        enc, c_in = [], in_chans
        for c in channels:
            enc += [nn.Conv2d(c_in, c, 3, padding=1), nn.GroupNorm(min(8, c), c), nn.SiLU(),
                    nn.Conv2d(c, c, 3, stride=2, padding=1), nn.SiLU()]
            c_in = c
        self.encoder = nn.Sequential(*enc, nn.Conv2d(c_in, code_channels, 1))
        dec = [nn.Conv2d(code_channels, c_in, 1), nn.SiLU()]
        for c in reversed([in_chans] + channels[:-1]):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, max(c, 8), 3, padding=1),
                    nn.GroupNorm(min(8, max(c, 8)), max(c, 8)), nn.SiLU()]
            c_in = max(c, 8)
        self.decoder = nn.Sequential(*dec, nn.Conv2d(c_in, in_chans, 3, padding=1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_ids: torch.Tensor,
              logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (Radford et al. 2021) over a batch. Images whose captions are the same string are
    all positives of each other (a tiny caption vocabulary repeats within a batch), so the target of each
    row is uniform over the batch entries sharing its caption."""
    logits = logit_scale.exp() * image_emb @ text_emb.t()
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                  + torch.sum(-target * logits.t().log_softmax(1), 1).mean())


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    from .pretrain import random_affine

    return random_affine(x, g, max_rot=10.0, scale=(0.9, 1.1), translate=0.08)


def train_evaluator(kind: str, cfg: EvaluatorNetConfig, seed: int, x_train: torch.Tensor, targets: torch.Tensor,
                    text_emb: torch.Tensor | None, out_dir: str | Path, checkpoint_dir: str | Path,
                    max_steps: int | None = None, progress: bool = True, num_threads: int = 0) -> dict:
    """Train the classifier (``kind='classifier'``, targets = labels), the image tower (``kind='clip'``,
    targets = caption ids into ``text_emb``, the frozen pooled caption embeddings) or the detail space's
    denoising autoencoder (``kind='detail'``, no targets: it reconstructs the clean image from
    image + ``cfg.noise`` Gaussian noise). Weights go to ``out_dir/<kind>.safetensors``."""
    from accelerate import Accelerator

    from .config import fingerprint
    from .training import Checkpointer, batch_indices, content_digest, run_loop, set_threads, step_generator

    set_threads(num_threads)
    accelerator = Accelerator()
    stream_seed = seed * 31 + {"classifier": 1, "clip": 2, "detail": 3}[kind]  # not F's seed stream
    torch.manual_seed(stream_seed)
    if kind == "classifier":
        model = ConvNet(x_train.shape[1], cfg.channels, int(targets.max()) + 1)
    elif kind == "detail":
        model = DenoisingAE(x_train.shape[1], cfg.channels, cfg.code_channels)
    else:
        model = ImageTower(x_train.shape[1], cfg.channels, text_emb.shape[1])
        text_n = F.normalize(text_emb.float(), dim=-1)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = Checkpointer(checkpoint_dir, fingerprint(kind, cfg, seed, content_digest(x_train, targets, text_emb)))
    model_p, opt_p = accelerator.prepare(model.train(), opt)

    def step_fn(step: int) -> dict:
        idx = batch_indices(step, len(x_train), cfg.batch_size, stream_seed)
        g = step_generator(stream_seed, step)
        if kind == "detail":  # denoising: the clean image from a noisy copy. No augmentation: its resampling
            x = x_train[idx].to(accelerator.device)  # blurs, and blur is what this space must not take as real
            loss = F.mse_loss(model_p(x + cfg.noise * torch.randn(x.shape, generator=g).to(x.device)), x)
            out = {"loss": loss.item()}
        else:
            x = _augment(x_train[idx], g).to(accelerator.device)
            y = targets[idx].to(accelerator.device)
            if kind == "classifier":
                logits = model_p(x)
                loss = F.cross_entropy(logits, y)
                out = {"loss": loss.item(), "accuracy": float((logits.argmax(1) == y).float().mean())}
            else:
                loss = clip_loss(model_p(x), text_n[y], y, model.logit_scale)
                out = {"loss": loss.item()}
        if not torch.isfinite(loss):
            return out
        accelerator.backward(loss)
        opt_p.step()
        opt_p.zero_grad(set_to_none=True)
        if kind == "clip":
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
        return out

    def lr_factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        p = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, p)))

    run = run_loop(kind, step_fn, steps=cfg.steps, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                   lr_factor=lr_factor, checkpointer=ckpt, modules={"model": model}, optimizers={"optimizer": opt},
                   emas={}, accelerator=accelerator, max_steps=max_steps, progress=progress)
    model.eval()
    if run["end"] == cfg.steps and accelerator.is_main_process:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(out_dir) / f"{kind}.safetensors"))
    return {"steps": run["end"], "train_seconds": run["train_seconds"], "history": run["history"], "model": model,
            "checkpoints": ckpt.run_dir}


def load_evaluator(kind: str, cfg: EvaluatorNetConfig, in_chans: int, out_dim: int | None, folder: str | Path) -> nn.Module:
    """The trained classifier (out_dim = classes), image tower (out_dim = text dim) or detail autoencoder
    (out_dim unused), in eval mode."""
    if kind == "detail":
        model = DenoisingAE(in_chans, cfg.channels, cfg.code_channels)
    elif kind == "classifier":
        model = ConvNet(in_chans, cfg.channels, out_dim)
    else:
        model = ImageTower(in_chans, cfg.channels, out_dim)
    model.load_state_dict(load_file(str(Path(folder) / f"{kind}.safetensors")))
    return model.eval().requires_grad_(False)


@torch.no_grad()
def batched(fn, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def zero_shot_accuracy(tower: ImageTower, x: torch.Tensor, labels: torch.Tensor, class_text: torch.Tensor) -> float:
    """Held-out accuracy of classifying images by their nearest class prompt (one text embedding per
    class) in the tower's space: what makes the CLIP score meaningful."""
    z = batched(tower, x)
    return float(((z @ F.normalize(class_text.float(), dim=-1).t()).argmax(1) == labels).float().mean())


# --------------------------------------------------------------------------------------------------
# Standard networks from local files (users who have them).


def inception_features(folder: str | Path):
    """clean-fid's Inception-v3 (the standard FID network) from ``folder/inception-2015-12-05.pt`` (the
    file clean-fid downloads; copy it there on a machine with internet). Returns ``images in [-1, 1] ->
    (N, 2048)``, resizing as clean-fid's 'clean' mode does and repeating grey to RGB."""
    from cleanfid.inception_torchscript import InceptionV3W

    path = Path(folder)
    if not (path / "inception-2015-12-05.pt").is_file():
        raise FileNotFoundError(f"{path}/inception-2015-12-05.pt not found (clean-fid's Inception weights)")
    net = InceptionV3W(str(path), download=False).eval()

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.float().repeat(1, 3 // x.shape[1], 1, 1)
        x = F.interpolate((x.clamp(-1, 1) + 1) * 127.5, size=(299, 299), mode="bicubic", align_corners=False)
        return net(x.clamp(0, 255))

    return fn


def clip_model_towers(folder: str | Path):
    """Image and text embedding functions of a local transformers CLIP folder (CLIPModel + processor):
    ``images in [-1, 1] -> (N, D)`` and ``list[str] -> (N, D)``, for :func:`addlib.metrics.clip_score`."""
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()  # never the network
    tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    size = model.config.vision_config.image_size
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)

    @torch.no_grad()
    def image_fn(x: torch.Tensor) -> torch.Tensor:
        x = x.float().repeat(1, 3 // x.shape[1], 1, 1)
        x = F.interpolate((x.clamp(-1, 1) + 1) / 2, size=(size, size), mode="bicubic", align_corners=False)
        out = model.get_image_features(pixel_values=(x - mean) / std)
        return out if torch.is_tensor(out) else out.pooler_output

    @torch.no_grad()
    def text_fn(prompts: list[str]) -> torch.Tensor:
        enc = tok(prompts, padding=True, truncation=True, return_tensors="pt")
        out = model.get_text_features(**enc)
        return out if torch.is_tensor(out) else out.pooler_output

    return image_fn, text_fn
