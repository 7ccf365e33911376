"""Stage evaluators: train the metrics' own networks, the classifier (FID features, prompt accuracy), the
CLIP image tower (CLIP score) and the detail space's denoising autoencoder (the second FID and precision/recall
space), apart from the discriminator's F so the student cannot game the metric."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import config as C
from .. import data as D
from .. import plots
from ..evaluators import batched, train_evaluator, zero_shot_accuracy
from ..metrics import clip_score
from ..paths import CHECKPOINTS, MODELS, REPORTS, code_version, write_json
from ..text import TextCache
from .common import has_labels, load_prepared, prune_checkpoints, sections


def class_text_embeddings(train: D.Dataset, cache: TextCache) -> torch.Tensor:
    """One text embedding per class: the mean of the normalised pooled embeddings of the captions that
    class's training images carry (the zero-shot classifier of the image tower)."""
    pooled = torch.nn.functional.normalize(cache.pooled[cache.rows(train.captions)].float(), dim=-1)
    return torch.stack([pooled[train.labels == k].mean(0) for k in range(int(train.labels.max()) + 1)])


def run(p: C.Params, root: Path = Path("."), progress: bool = True) -> dict:
    cfg = p.evaluators
    ds, cache = load_prepared(root)
    train, hold = ds.subset(D.TRAIN), ds.subset(D.HOLDOUT)
    out, model_dir = root / REPORTS / "evaluators", root / MODELS / "evaluators"
    metrics: dict = {}
    curves, trained_in = {}, []
    if has_labels(train):
        trained = train_evaluator("classifier", cfg.classifier, p.seed, train.pixels(), train.labels, None,
                                  model_dir, root / CHECKPOINTS / "evaluators" / "classifier", progress=progress,
                                  num_threads=cfg.num_threads)
        clf = trained["model"]
        trained_in.append(trained["checkpoints"])
        metrics["classifier"] = {"steps": trained["steps"], "train_seconds": trained["train_seconds"],
                                 "holdout_accuracy": float((batched(clf, hold.pixels()).argmax(1) == hold.labels)
                                                           .float().mean())}
        curves["classifier cross-entropy"] = trained["history"]
    caption_ids = cache.rows(train.captions)
    trained = train_evaluator("clip", cfg.clip, p.seed, train.pixels(), caption_ids, cache.pooled, model_dir,
                              root / CHECKPOINTS / "evaluators" / "clip", progress=progress,
                              num_threads=cfg.num_threads)
    tower = trained["model"]
    trained_in.append(trained["checkpoints"])
    z = batched(tower, hold.pixels())
    own = cache.pooled[cache.rows(hold.captions)]
    shuffled = own[torch.randperm(len(own), generator=torch.Generator().manual_seed(p.seed))]
    metrics["clip"] = {"steps": trained["steps"], "train_seconds": trained["train_seconds"],
                       "holdout_clip_score_own_captions": clip_score(z, own),
                       "holdout_clip_score_shuffled_captions": clip_score(z, shuffled)}
    if has_labels(train):
        metrics["clip"]["holdout_zero_shot_accuracy"] = zero_shot_accuracy(tower, hold.pixels(), hold.labels,
                                                                          class_text_embeddings(train, cache))
    curves["image tower CLIP loss"] = trained["history"]
    trained = train_evaluator("detail", cfg.detail, p.seed, train.pixels(), None, None, model_dir,
                              root / CHECKPOINTS / "evaluators" / "detail", progress=progress,
                              num_threads=cfg.num_threads)
    ae = trained["model"]
    trained_in.append(trained["checkpoints"])
    x = hold.pixels()
    noisy = x + cfg.detail.noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(p.seed))
    metrics["detail"] = {"steps": trained["steps"], "train_seconds": trained["train_seconds"],
                         "feature_dim": int(batched(ae.embed, x[:2]).shape[1]),
                         "holdout_denoising_mse": float(torch.nn.functional.mse_loss(batched(ae, noisy), x)),
                         "holdout_noisy_input_mse": float(torch.nn.functional.mse_loss(noisy, x))}
    curves["detail autoencoder denoising MSE"] = trained["history"]
    fig_steps = max(curves.values(), key=len)
    plots.loss_curve([r["step"] for r in fig_steps],
                     {k: [r["loss"] for r in v] + [float("nan")] * (len(fig_steps) - len(v)) for k, v in curves.items()},
                     out / "loss.png", "evaluator networks: training losses")
    write_json(out / "metrics.json", metrics)
    resolved = sections(p, "seed", "data", "text_encoder", "evaluators")
    C.write_resolved(resolved, out / "config.json", code_version=code_version(root))
    C.write_resolved(resolved, model_dir / "addlib_config.json", code_version=code_version(root))
    prune_checkpoints(*trained_in)
    return metrics
