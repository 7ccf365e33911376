"""What each metric can and cannot see: known degradations of real images, scored like generated ones.

Each set keeps the real images' count and their labels (so prompt accuracy and per-class metrics apply), and
each is a failure a generator can have: total collapse to the class means, one image per class, blur at two
strengths, additive noise, a down-up resampling round trip (lost detail), and half of each class's modes
dropped (less diversity, every image still real). Scored against the reference split beside real held-out
images (the floor), they put every result of the evaluation in units one can read: a row at the level of
"blur 1 px" has lost about that much detail.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .columns import QUALITY, header


def class_means(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Every image replaced by the mean image of its class (total collapse, and blurred)."""
    out = torch.empty_like(x)
    for k in labels.unique():
        sel = labels == k
        out[sel] = x[sel].mean(0, keepdim=True)
    return out


def one_per_class(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Every image replaced by the first image of its class (collapse to one sharp sample per class)."""
    out = torch.empty_like(x)
    for k in labels.unique():
        sel = (labels == k).nonzero().flatten()
        out[sel] = x[sel[0]]
    return out


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of standard deviation ``sigma`` pixels (reflect padding, radius 3 sigma)."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def add_noise(x: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """Additive Gaussian noise of standard deviation ``std`` (images in [-1, 1], clamped back)."""
    g = torch.Generator().manual_seed(seed)
    return (x + std * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(-1, 1)


def down_up(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Area down-sampling by ``factor`` and bilinear up-sampling back: the detail finer than the factor is lost."""
    small = F.interpolate(x, scale_factor=1 / factor, mode="area")
    return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)


def kmeans(z: torch.Tensor, k: int, seed: int = 0, iters: int = 20) -> torch.Tensor:
    """Cluster index of each row of ``z`` (Lloyd's algorithm from k rows drawn with ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    centres = z[torch.randperm(len(z), generator=g)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(z, centres).argmin(1)
        for j in range(k):
            if (assign == j).any():
                centres[j] = z[assign == j].mean(0)
    return torch.cdist(z, centres).argmin(1)


def drop_half_the_modes(x: torch.Tensor, labels: torch.Tensor, modes: int = 4, seed: int = 0) -> torch.Tensor:
    """Each class split into ``modes`` clusters (k-means on the pixels); the images of the larger half of the
    clusters are kept and repeated to the class's count: real images, with half the variety of each class."""
    out = torch.empty_like(x)
    g = torch.Generator().manual_seed(seed)
    for k in labels.unique():
        sel = (labels == k).nonzero().flatten()
        assign = kmeans(x[sel].flatten(1).double(), min(modes, len(sel)), seed)
        sizes = torch.bincount(assign, minlength=int(assign.max()) + 1)
        kept_modes = sizes.argsort(descending=True)[:max(1, len(sizes) // 2)]
        kept = sel[torch.isin(assign, kept_modes)]
        out[sel] = x[kept[torch.randint(len(kept), (len(sel),), generator=g)]]
    return out


def degraded_sets(x: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """The calibration rows, each a set of len(x) images with x's labels (x: real images in [-1, 1])."""
    return {
        "class means": class_means(x, labels),
        "one image per class": one_per_class(x, labels),
        "blur 0.5 px": gaussian_blur(x, 0.5),
        "blur 1 px": gaussian_blur(x, 1.0),
        "noise 0.1": add_noise(x, 0.1, seed),
        "down-up 2x": down_up(x, 2),
        "half the modes": drop_half_the_modes(x, labels, seed=seed),
    }


def calibrate(scorer, ref_images: torch.Tensor, labels: torch.Tensor, captions: list[str], prompts_of, n: int,
              seed: int = 0) -> dict[str, dict]:
    """The calibration table: the reference split cut into the FID floor's two halves (metrics.halves); one half
    becomes the reference, up to ``n`` images of the other are scored as they are (the floor) and degraded
    (degraded_sets), with ``scorer`` (an evaluation.Scorer; its reference features are replaced by the first
    half's) and prompts from those images' own captions (``prompts_of(captions, labels)``)."""
    import dataclasses

    from .metrics import extract, halves

    a, b = halves(len(ref_images), seed)
    half_scorer = dataclasses.replace(scorer, ref_feats=extract(scorer.features, ref_images[a]))
    if scorer.detail is not None:  # the second space's reference: the same half
        half_scorer.detail_ref_feats = extract(scorer.detail, ref_images[a])
    b = b[:n]
    real, y = ref_images[b], labels[b]
    prompts = prompts_of([captions[i] for i in b], y)
    rows = {"real images (the other half)": half_scorer(real, prompts)}
    for name, x in degraded_sets(real, y, seed).items():
        rows[name] = half_scorer(x, prompts)
    return rows


def markdown(rows: dict[str, dict], metrics=QUALITY) -> str:
    """The calibration table as markdown, one row per set."""
    lines = ["| set | " + " | ".join(map(header, metrics)) + " |",
             "|---|" + "---|" * len(metrics)]
    lines += [f"| {name} | " + " | ".join(f"{r[m]:.4g}" for m in metrics) + " |" for name, r in rows.items()]
    return "\n".join(lines) + "\n"
