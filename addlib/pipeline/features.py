"""Stage features: pretrain (or load) the discriminator's feature network F and measure it with a linear
probe, beside the same network at random initialisation."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import config as C
from .. import data as D
from .. import plots
from ..models import count_parameters
from ..paths import CHECKPOINTS, DATA_DIR, MODELS, REPORTS, code_version, write_json
from ..pretrain import build_vit, embed, linear_probe, load_backbone, pretrain_features
from .common import has_labels, prune_checkpoints, sections


def run(p: C.Params, root: Path = Path("."), progress: bool = True) -> dict:
    cfg = p.features
    ds = D.Dataset.load(root / DATA_DIR)
    train, hold = ds.subset(D.TRAIN), ds.subset(D.HOLDOUT)
    out, model_dir = root / REPORTS / "features", root / MODELS / "features"
    model_dir.mkdir(parents=True, exist_ok=True)
    trained_in = []
    metrics: dict = {"source": cfg.source, "objective": cfg.pretrain.objective if cfg.source == "in_domain" else None}
    if cfg.source == "in_domain" and cfg.pretrain.objective != "none":
        trained = pretrain_features(cfg, p.seed, train.pixels(), model_dir, root / CHECKPOINTS / "features",
                                    live_dir=None, progress=progress)
        history = trained.pop("history")
        trained_in.append(trained["checkpoints"])
        plots.loss_curve([r["step"] for r in history], {"NT-Xent": [r["loss"] for r in history]},
                         out / "loss.png", "feature network F: SimCLR pretraining loss", logy=False)
        metrics.update(steps=trained["steps"], train_seconds=trained["train_seconds"])
    else:
        plots.note_figure(out / "loss.png", f"F was not trained here (source: {cfg.source}, "
                                            f"objective: {cfg.pretrain.objective}).")
    backbone = load_backbone(cfg, ds.images.shape[1], model_dir, p.seed).eval()
    metrics["parameters"] = count_parameters(backbone)
    if has_labels(train):
        z_tr = embed(backbone, train.pixels(), cfg.img_size)
        z_ho = embed(backbone, hold.pixels(), cfg.img_size)
        metrics["linear_probe_accuracy"] = linear_probe(z_tr, train.labels, z_ho, hold.labels,
                                                        cfg.pretrain.probe_steps, seed=p.seed)
        if cfg.source == "in_domain":
            torch.manual_seed(p.seed)
            rnd = build_vit(cfg, ds.images.shape[1]).eval()
            metrics["random_init_linear_probe_accuracy"] = linear_probe(
                embed(rnd, train.pixels(), cfg.img_size), train.labels, embed(rnd, hold.pixels(), cfg.img_size),
                hold.labels, cfg.pretrain.probe_steps, seed=p.seed)
        plots.embedding_scatter(z_ho, hold.labels, out / "embedding.png",
                                f"F's CLS embeddings of held-out images (PCA), probe accuracy "
                                f"{metrics['linear_probe_accuracy']:.1%}")
    else:
        plots.note_figure(out / "embedding.png", "No class labels in this dataset: no linear probe.")
    write_json(out / "metrics.json", metrics)
    resolved = sections(p, "seed", "data", "features")
    C.write_resolved(resolved, out / "config.json", code_version=code_version(root))
    C.write_resolved(resolved, model_dir / "addlib_config.json", code_version=code_version(root))
    prune_checkpoints(*trained_in)
    return metrics
