"""What scores generated images against the reference split, shared by the evaluate, ablation and diagnose
stages: the metrics' networks (the evaluators stage's, or Inception / CLIP from local files), the reference
features and the test prompts."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from .. import config as C
from .. import data as D
from .. import evaluation as E
from ..evaluators import clip_model_towers, inception_features, load_evaluator
from ..metrics import extract
from ..paths import MODELS
from ..text import TextCache
from .common import has_labels


@dataclasses.dataclass
class Scoring:
    """The scorer of generated images and what it was built from."""
    ref: D.Dataset                # FID reference split; test prompts are drawn from its captions
    sel: D.Dataset                # the other split: guidance selection
    feat_fn: Any                  # images -> FID / precision-recall features
    feat_name: str
    ref_feats: torch.Tensor
    sel_feats: torch.Tensor
    scorer: Any                   # evaluation.Scorer
    clip_text: Any                # real CLIP's text tower, or None (the cache's pooled MiniLM embeddings)
    logits: Any = None            # images -> the in-domain classifier's class logits (None without labels)

    def prompts_for(self, split: D.Dataset, n: int, seed: int, cache: TextCache):
        """n prompts drawn from a split's captions (evaluation.draw_prompts), with the CLIP score's text side."""
        return self.with_clip_text(E.draw_prompts(split.captions, split.labels, cache, n, seed))

    def prompts_of(self, captions: list[str], labels: torch.Tensor, cache: TextCache):
        """Prompts for exactly these captions (evaluation.prompts_of), with the CLIP score's text side."""
        return self.with_clip_text(E.prompts_of(captions, labels, cache))

    def with_clip_text(self, p):
        """Replace the pooled MiniLM embeddings by real CLIP's text features when the scorer is real CLIP."""
        if self.clip_text is not None:
            p.text_emb = torch.cat([self.clip_text(p.captions[i:i + 256]) for i in range(0, len(p), 256)])
        return p


def scoring(ds: D.Dataset, cache: TextCache, ev_cfg: C.EvaluatorsConfig, cfg: C.EvaluateConfig,
            root: Path = Path(".")) -> Scoring:
    """FID and precision/recall features, CLIP score's image tower, prompt accuracy's classifier, and the
    features of both splits."""
    ref = ds.subset(D.TRAIN if cfg.reference == "train" else D.HOLDOUT)
    sel = ds.subset(D.HOLDOUT if cfg.reference == "train" else D.TRAIN)
    ev_dir, shape = root / MODELS / "evaluators", tuple(ds.images.shape[1:])
    n_classes = int(ds.labels.max()) + 1
    classifier = load_evaluator("classifier", ev_cfg.classifier, shape[0], n_classes, ev_dir) if has_labels(ref) else None
    if cfg.inception:
        feat_fn, feat_name = inception_features(cfg.inception), "inception"
    elif classifier is not None:
        feat_fn, feat_name = classifier.embed, "in-domain classifier"
    else:
        raise C.ConfigError("evaluate.inception: the dataset has no labels, so there is no in-domain classifier; "
                            "give clean-fid's Inception folder")
    if cfg.clip:
        image_emb, clip_text = clip_model_towers(cfg.clip)
    else:
        image_emb, clip_text = load_evaluator("clip", ev_cfg.clip, shape[0], cache.pooled.shape[1], ev_dir), None
    classify = (lambda x: classifier(x).argmax(1)) if classifier is not None else None
    detail = load_evaluator("detail", ev_cfg.detail, shape[0], None, ev_dir).embed
    ref_feats, sel_feats = extract(feat_fn, ref.pixels()), extract(feat_fn, sel.pixels())
    scorer = E.Scorer(feat_fn, image_emb, classify, ref_feats, cfg.pr_k, pr_seed=cfg.seed, detail=detail,
                      detail_ref_feats=extract(detail, ref.pixels()))
    return Scoring(ref, sel, feat_fn, feat_name, ref_feats, sel_feats, scorer, clip_text, classifier)
