"""Metrics for the evaluation stage (the paper's Table 2 and Figure 7 at this scale).

- FID (Heusel et al. 2017) in a feature space given as a module. The Frechet distance is never written here:
  it comes from torchmetrics (``FrechetInceptionDistance(feature=<module>)``) or from clean-fid
  (``fid_from_feats``); tests check that both agree. For the embedded default the feature network is an
  in-domain evaluator that must differ in network, objective and training run from the discriminator's F
  (Kynkaanniemi et al. 2023: a discriminator that shares the metric's features can lower FID without better
  images). With the standard Inception weights available locally, clean-fid's own ``compute_fid`` gives
  standard FID.
- Improved precision and recall (Kynkaanniemi et al. 2019): k-NN radii in the evaluator's feature space.
- CLIP score (Hessel et al. 2021): 100 * max(cos(image, text), 0), averaged (torchmetrics' CLIPScore is not
  used: it fails with transformers 5.x).
"""
from __future__ import annotations

import torch
import torch.nn as nn


class FeatureModule(nn.Module):
    """Wraps ``fn: images -> (N, D) features`` as the module torchmetrics' FID expects (it reads
    ``num_features`` instead of probing with a 299x299 dummy image)."""

    def __init__(self, fn, num_features: int):
        super().__init__()
        self.fn = fn
        self.num_features = num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images)


@torch.no_grad()
def extract(fn, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    return torch.cat([fn(images[i:i + batch_size]).double().cpu() for i in range(0, len(images), batch_size)])


def fid_torchmetrics(fn, num_features: int, real: torch.Tensor, fake: torch.Tensor,
                     batch_size: int = 500) -> float:
    """FID through torchmetrics with a custom feature module; images are passed to ``fn`` as given."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=FeatureModule(fn, num_features), normalize=True)
    for images, is_real in ((real, True), (fake, False)):
        for i in range(0, len(images), batch_size):
            fid.update(images[i:i + batch_size], real=is_real)
    return float(fid.compute())


def fid_from_features(real_feats: torch.Tensor, fake_feats: torch.Tensor) -> float:
    """FID from precomputed features, through clean-fid."""
    from cleanfid.fid import fid_from_feats

    return float(fid_from_feats(real_feats.double().numpy(), fake_feats.double().numpy()))


def _knn_radii(feats: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(feats, feats)
    return d.kthvalue(k + 1, dim=1).values  # k+1: the point itself is at distance 0


def precision_recall(real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision (fraction of fakes inside some real k-NN ball) and recall (fraction of reals
    inside some fake k-NN ball), Kynkaanniemi et al. 2019."""
    real, fake = real_feats.double(), fake_feats.double()
    r_real, r_fake = _knn_radii(real, k), _knn_radii(fake, k)
    d = torch.cdist(fake, real)  # (n_fake, n_real)
    precision = (d <= r_real[None, :]).any(1).double().mean()
    recall = (d.t() <= r_fake[None, :]).any(1).double().mean()
    return float(precision), float(recall)


def realism_score(real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Per-image realism (Kynkaanniemi et al. 2019, Sec. 5): R(g) = max_r NND_k(r) / ||g - r|| over the real
    features r whose k-NN radius is at most the median (the half with the largest radii is dropped, as in the
    paper, so outliers do not make everything look real). R >= 1: inside some real k-NN ball."""
    real, fake = real_feats.double(), fake_feats.double()
    radii = _knn_radii(real, k)
    keep = radii <= radii.median()
    d = torch.cdist(fake, real[keep])
    return (radii[keep][None, :] / d.clamp_min(1e-12)).max(1).values.float()


def clip_score(image_emb: torch.Tensor, text_emb: torch.Tensor) -> float:
    """Hessel et al. 2021: mean over pairs of 100 * max(cos(image_i, text_i), 0)."""
    cos = torch.nn.functional.cosine_similarity(image_emb.double(), text_emb.double(), dim=-1)
    return float((100 * cos.clamp_min(0)).mean())


def halves(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint random halves of range(n) (the FID floor's, and the calibration's, split of a real set)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n // 2], perm[n // 2:2 * (n // 2)]


def split_halves_fid(feats: torch.Tensor, seed: int = 0) -> float:
    """The FID noise floor: FID between two disjoint random halves of one real set."""
    a, b = halves(len(feats), seed)
    return fid_from_features(feats[a], feats[b])
