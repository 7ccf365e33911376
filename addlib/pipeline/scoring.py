"""What scores generated images against the reference split, shared by the evaluate, ablation and diagnose
stages (and solvers): the metrics' networks (the evaluators stage's, or Inception / CLIP from local files), the
reference features, the test prompts and noise, a row of Table 2, and the solvers stage's rows."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import config as C
from .. import data as D
from .. import evaluation as E
from ..evaluators import clip_model_towers, inception_features, load_evaluator
from ..metrics import extract
from ..paths import MODELS, REPORTS
from ..text import TextCache
from .common import has_labels

if TYPE_CHECKING:  # annotations only
    from ..config.evaluate import EvaluateConfig
    from ..config.evaluators import EvaluatorsConfig

# The solvers stage's rows (the teacher's rows of Table 2, read by evaluate), and the evaluate keys they depend
# on: dvc.yaml declares exactly these for the stage, so a change to the student's step counts or Figure 4's grid
# does not rerun the teacher's solvers; evaluate checks the rows were made with its values.
SOLVER_ROWS = Path(REPORTS) / "metrics" / "solvers.json"
SOLVER_KEYS = ("num_samples", "seed", "reference", "teacher_samplers", "teacher_steps", "guidance_candidates",
               "guidance_samples", "guidance_max_steps", "guidance_seed", "pr_k", "batch_size", "speed_repeats",
               "inception", "clip")


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


def scoring(ds: D.Dataset, cache: TextCache, ev_cfg: EvaluatorsConfig, cfg: EvaluateConfig,
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


def test_inputs(sc: Scoring, cfg: EvaluateConfig, cache: TextCache, noise_shape: tuple) -> tuple:
    """Table 2's prompts (from the reference split's captions) and starting noise: the same for every row, in
    the solvers stage's rows and the evaluate stage's."""
    from ..sampling import initial_noise

    return (sc.prompts_for(sc.ref, cfg.num_samples, cfg.seed, cache),
            initial_noise(cfg.num_samples, noise_shape, cfg.seed))


def table_row(gen, images: torch.Tensor, throughput: float | None, sc: Scoring, prompts, noise,
              speed_repeats: int) -> dict:
    """One row of Table 2 (columns.TABLE2): the generator's sampler, its speed at batch 1, its throughput in
    the sample run, and the images' scores; printed as it is made."""
    r = {"model": gen.model, "sampler": gen.sampler, "steps": gen.steps, "nfe": gen.nfe, "guidance": gen.guidance,
         "seconds_per_image": E.seconds_per_image_batch1(gen, prompts, noise, speed_repeats),
         "images_per_second": throughput if throughput is not None else float("nan"), **sc.scorer(images, prompts)}
    print(f"{r['model']:8s} {r['sampler']:12s} {r['steps']:3d} steps  w={r['guidance']:<4g} NFE {r['nfe']:3d}  "
          f"FID {r['fid']:8.3f}  P {r['precision']:.3f}  R {r['recall']:.3f}  CLIP {r['clip_score']:.2f}  "
          f"acc {r['prompt_accuracy']:.3f}  {r['seconds_per_image'] * 1e3:.1f} ms/img  "
          f"{r['images_per_second']:.1f} img/s", flush=True)
    return r


def student_scores(sc: Scoring, student, p: C.Params, space, prompts, noise, steps: list[int]) -> dict:
    """A student's scores as a Table 1 row has them: its samples at each step count in ``steps`` (the same
    prompts and noise), scored by ``sc``; a metric at k > 1 steps is named metric@k."""
    from ..diffusion import student_schedule

    sched_s = student_schedule(p.teacher.schedule, p.add.student_zero_terminal_snr)
    scores = {}
    for k in steps:
        gen = E.Generator("student", "add", k, 1.0, student, sched_s, trained_timesteps=p.add.student_timesteps,
                          space=space)
        images, _ = E.generate(gen, prompts, noise, p.evaluate.batch_size, seed=p.evaluate.seed, progress=False)
        scores.update({m if k == 1 else f"{m}@{k}": v for m, v in sc.scorer(images, prompts).items()})
    return scores


def read_solver_rows(cfg: EvaluateConfig, root: Path = Path(".")) -> dict:
    """The solvers stage's rows, checked to have been made with ``cfg``'s values of SOLVER_KEYS (one-line error)."""
    path = root / SOLVER_ROWS
    if not path.is_file():
        raise C.ConfigError(f"{path}: not found; run the 'solvers' stage before 'evaluate' (dvc repro)")
    solved = json.loads(path.read_text())
    made = json.loads(json.dumps({k: getattr(cfg, k) for k in SOLVER_KEYS}))  # as JSON holds them (lists, null)
    stale = [k for k in SOLVER_KEYS if solved["evaluate"].get(k) != made[k]]
    if stale:
        raise C.ConfigError(f"{path}: made with other evaluate.{stale[0]} ({solved['evaluate'].get(stale[0])!r}, "
                            f"now {made[stale[0]]!r}); rerun the 'solvers' stage (dvc repro)")
    return solved
