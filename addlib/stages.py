"""Pipeline stages: what each notebook calls, and the runner that DVC invokes.

``python -m addlib.stages <stage>`` is each DVC stage's command. Before any compute it validates the whole
params.yaml and the stage's inputs (a bad key, value or missing folder is a one-line error and exit code 2);
then it executes ``notebooks/<stage>.ipynb`` with papermill on the project's registered Jupyter kernel,
passing the params sections as papermill parameters. If the notebook fails, the stage's outputs are removed
(so nothing half-written looks valid) and the executed notebook is kept as ``reports/executed/<stage>.failed.ipynb``.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import config as C
from . import data as D
from . import plots
from .text import TextCache, TextEncoder, encode_captions

KERNEL = "addlib"
DATA_DIR = Path("data/processed")
REPORTS = Path("reports")
MODELS = Path("models")
CHECKPOINTS = Path("checkpoints")
EXECUTED = REPORTS / "executed"

# Which params.yaml sections each stage's notebook receives (dvc.yaml declares the same as `params`).
STAGE_SECTIONS = {
    "prepare": ["seed", "data", "text_encoder"],
    "teacher": ["seed", "data", "text_encoder", "teacher"],
    "features": ["seed", "data", "features"],
    "add": ["seed", "data", "text_encoder", "teacher", "features", "add"],
    "evaluators": ["seed", "data", "text_encoder", "evaluators"],
    "evaluate": ["seed", "data", "text_encoder", "teacher", "add", "evaluators", "evaluate"],
    "ablation": ["seed", "data", "text_encoder", "teacher", "features", "add", "evaluators", "evaluate", "ablations"],
}
STAGE_SECTIONS["report"] = STAGE_SECTIONS["ablation"]  # the report shows every stage's results
FOREACH = {"ablation": "run"}  # stages that dvc.yaml generates once per key (ablation@<run>): the CLI flag


def code_version(root: Path = Path(".")) -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------------
# Stage bodies (called from the notebooks).


def run_prepare(seed: int, data_cfg: C.DataConfig, text_cfg: C.TextEncoderConfig, root: Path = Path(".")) -> dict:
    """Load the images, split, caption, encode every distinct caption once; write the data card."""
    ds = D.load_source(data_cfg, root)
    ds.save(root / DATA_DIR)
    encoder = TextEncoder.from_config(text_cfg)
    cache = encode_captions(encoder, ds.captions)
    cache.save(root / DATA_DIR)
    card = D.data_card(ds, data_cfg, len(cache.captions) - 1)
    card["text_encoder"] = {"path": text_cfg.path, "dim": encoder.dim, "max_length": text_cfg.max_length}
    out = root / REPORTS / "data"
    write_json(out / "card.json", card)
    images, captions = D.example_grid(ds, seed=seed)
    plots.image_grid(images, out / "examples.png", cell_labels=captions, cell_inches=1.0,
                     title=f"{data_cfg.source}: training images and their captions")
    C.write_resolved({"seed": seed, "data": data_cfg, "text_encoder": text_cfg}, out / "config.json",
                     code_version=code_version(root))
    return card


def load_prepared(root: Path = Path(".")) -> tuple[D.Dataset, TextCache]:
    return D.Dataset.load(root / DATA_DIR), TextCache.load(root / DATA_DIR)


def run_teacher(seed: int, data_cfg: C.DataConfig, text_cfg: C.TextEncoderConfig, cfg: C.TeacherConfig,
                root: Path = Path("."), progress: bool = True) -> dict:
    """Train the teacher (or, with ``teacher.pretrained``, take a local diffusers checkpoint as it is), save
    it under models/teacher, and draw the sample grid (one row per prompt)."""
    from .latent import load_teacher
    from .models import count_parameters
    from .sampling import initial_noise, sample_teacher, unet_input_shape
    from .training import train_teacher

    ds, cache = load_prepared(root)
    out = root / REPORTS / "teacher"
    model_dir = root / MODELS / "teacher"
    if cfg.pretrained:
        model_dir.mkdir(parents=True, exist_ok=True)
        teacher = load_teacher(cfg, model_dir)
        summary = {"pretrained": cfg.pretrained, "parameters": count_parameters(teacher.unet)}
        plots.note_figure(out / "loss.png", f"The teacher was not trained here: {cfg.pretrained}")
        # The stage's declared training log, empty: no steps were taken.
        write_json(out / "live" / "metrics.json", {})
        (out / "live" / "plots" / "metrics" / "train").mkdir(parents=True, exist_ok=True)
        (out / "live" / "plots" / "metrics" / "train" / "loss.tsv").write_text("step\tloss\n")
    else:
        summary = train_teacher(cfg, seed, ds.subset(D.TRAIN), cache, model_dir, root / CHECKPOINTS / "teacher",
                                live_dir=out / "live", progress=progress)
        summary.pop("unet")
        history = summary.pop("history")
        if not summary.pop("main_process"):
            return {}  # under `accelerate launch`: the main process writes the reports
        plots.loss_curve([r["step"] for r in history], {"denoising loss": [r["loss"] for r in history]},
                         out / "loss.png", "teacher training loss")
        teacher = load_teacher(cfg, model_dir)
    C.write_resolved({"seed": seed, "data": data_cfg, "text_encoder": text_cfg, "teacher": cfg},
                     model_dir / "addlib_config.json", code_version=code_version(root))
    # Sample grid: fixed seeds, one row per prompt.
    s = cfg.sample
    encoder = TextEncoder.from_config(text_cfg)
    states, mask, _ = encoder(s.prompts)
    empty_states, empty_mask, _ = encoder([""])
    rep = lambda a: a.repeat_interleave(s.per_prompt, 0)  # noqa: E731
    noise = initial_noise(len(s.prompts) * s.per_prompt, unet_input_shape(teacher.unet), s.seed)
    t0 = time.perf_counter()
    x = sample_teacher(teacher.unet.eval(), teacher.schedule, rep(states), rep(mask), (empty_states, empty_mask),
                       noise, s.sampler, s.steps, s.guidance_scale, space=teacher.space)
    sample_seconds = time.perf_counter() - t0
    rows = [list(x[i * s.per_prompt:(i + 1) * s.per_prompt]) for i in range(len(s.prompts))]
    plots.image_grid(rows, out / "samples.png", row_labels=s.prompts,
                     title=f"teacher, {s.sampler} {s.steps} steps, guidance {s.guidance_scale:g}")
    metrics = {**summary, "grid_sample_seconds": sample_seconds}
    write_json(out / "metrics.json", metrics)
    C.write_resolved({"seed": seed, "data": data_cfg, "text_encoder": text_cfg, "teacher": cfg},
                     out / "config.json", code_version=code_version(root))
    return metrics


def run_features(seed: int, data_cfg: C.DataConfig, cfg: C.FeatureNetConfig, root: Path = Path("."),
                 progress: bool = True) -> dict:
    """Pretrain (or load) the discriminator's feature network F and measure it with a linear probe."""
    from .models import count_parameters
    from .pretrain import embed, linear_probe, load_backbone, pretrain_features

    ds = D.Dataset.load(root / DATA_DIR)
    train, hold = ds.subset(D.TRAIN), ds.subset(D.HOLDOUT)
    out, model_dir = root / REPORTS / "features", root / MODELS / "features"
    model_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict = {"source": cfg.source, "objective": cfg.pretrain.objective if cfg.source == "in_domain" else None}
    if cfg.source == "in_domain" and cfg.pretrain.objective != "none":
        run = pretrain_features(cfg, seed, train.pixels(), model_dir, root / CHECKPOINTS / "features",
                                                        live_dir=None, progress=progress)
        history = run.pop("history")
        plots.loss_curve([r["step"] for r in history], {"NT-Xent": [r["loss"] for r in history]},
                         out / "loss.png", "feature network F: SimCLR pretraining loss", logy=False)
        metrics.update(steps=run["steps"], train_seconds=run["train_seconds"])
    else:
        plots.note_figure(out / "loss.png", f"F was not trained here (source: {cfg.source}, "
                                            f"objective: {cfg.pretrain.objective}).")
    backbone = load_backbone(cfg, ds.images.shape[1], model_dir, seed).eval()
    metrics["parameters"] = count_parameters(backbone)
    if (train.labels >= 0).all() and len(set(train.labels.tolist())) > 1:
        z_tr = embed(backbone, train.pixels(), cfg.img_size)
        z_ho = embed(backbone, hold.pixels(), cfg.img_size)
        metrics["linear_probe_accuracy"] = linear_probe(z_tr, train.labels, z_ho, hold.labels,
                                                        cfg.pretrain.probe_steps, seed=seed)
        if cfg.source == "in_domain":
            from .pretrain import build_vit

            torch.manual_seed(seed)
            rnd = build_vit(cfg, ds.images.shape[1]).eval()
            metrics["random_init_linear_probe_accuracy"] = linear_probe(
                embed(rnd, train.pixels(), cfg.img_size), train.labels, embed(rnd, hold.pixels(), cfg.img_size),
                hold.labels, cfg.pretrain.probe_steps, seed=seed)
        plots.embedding_scatter(z_ho, hold.labels, out / "embedding.png",
                                f"F's CLS embeddings of held-out images (PCA), probe accuracy "
                                f"{metrics['linear_probe_accuracy']:.1%}")
    else:
        plots.note_figure(out / "embedding.png", "No class labels in this dataset: no linear probe.")
    write_json(out / "metrics.json", metrics)
    resolved = {"seed": seed, "data": data_cfg, "features": cfg}
    C.write_resolved(resolved, out / "config.json", code_version=code_version(root))
    C.write_resolved(resolved, model_dir / "addlib_config.json", code_version=code_version(root))
    return metrics


def extend_cache(cache: TextCache, prompts: list[str], text_cfg: C.TextEncoderConfig) -> TextCache:
    """Add prompts that are not captions of the dataset (grid prompts, NFSD's negative prompt)."""
    new = [p for p in dict.fromkeys(prompts) if p not in cache.captions]
    if not new:
        return cache
    states, mask, pooled = TextEncoder.from_config(text_cfg)(new)
    return TextCache(cache.captions + new, torch.cat([cache.states, states]), torch.cat([cache.mask, mask]),
                     torch.cat([cache.pooled, pooled]))


def build_discriminator(feat_cfg: C.FeatureNetConfig, disc_cfg: C.DiscriminatorConfig, channels: int,
                        c_text_dim: int, root: Path = Path("."), seed: int = 0, features_dir: Path | None = None):
    """D: the frozen F (the features stage's weights, or those in ``features_dir``) and trainable heads."""
    from .discriminator import Discriminator, FeatureNetwork
    from .pretrain import load_backbone

    backbone = load_backbone(feat_cfg, channels, features_dir or root / MODELS / "features", seed)
    fn = FeatureNetwork(backbone, feat_cfg.taps, feat_cfg.tap_patch_embed)
    return Discriminator(fn, c_text_dim, disc_cfg.c_text, disc_cfg.c_img, disc_cfg.cmap_dim, disc_cfg.group_size)


def run_add(seed: int, data_cfg: C.DataConfig, text_cfg: C.TextEncoderConfig, teacher_cfg: C.TeacherConfig,
            feat_cfg: C.FeatureNetConfig, cfg: C.ADDConfig, root: Path = Path("."), progress: bool = True) -> dict:
    """ADD training: student from the teacher, discriminator on F, distillation from the teacher."""
    from .diffusion import student_schedule
    from .latent import load_teacher
    from .training import save_student_grid, train_add

    ds, cache = load_prepared(root)
    cache = extend_cache(cache, cfg.sample_prompts + [cfg.nfsd_negative_prompt], text_cfg)
    teacher = load_teacher(teacher_cfg, root / MODELS / "teacher")
    disc = build_discriminator(feat_cfg, cfg.discriminator, ds.images.shape[1], cache.pooled.shape[1], root, seed)
    out, model_dir = root / REPORTS / "add", root / MODELS / "student"
    run = train_add(cfg, teacher, seed, ds.subset(D.TRAIN), cache, disc,
                    int(cache.rows([cfg.nfsd_negative_prompt])[0]), model_dir, root / CHECKPOINTS / "add",
                    live_dir=out / "live", grid_dir=out / "progress", progress=progress,
                    fingerprint_extra=[C.to_dict(feat_cfg)])
    student, history = run.pop("student"), run.pop("history")
    if not run.pop("main_process"):
        return {}  # under `accelerate launch`: the main process writes the reports
    resolved = {"seed": seed, "data": data_cfg, "text_encoder": text_cfg, "teacher": teacher_cfg,
                "features": feat_cfg, "add": cfg}
    C.write_resolved(resolved, model_dir / "addlib_config.json", code_version=code_version(root))
    C.write_resolved(resolved, out / "config.json", code_version=code_version(root))
    rows = cache.rows(cfg.sample_prompts).tolist()
    save_student_grid(student, student_schedule(teacher_cfg.schedule, cfg.student_zero_terminal_snr), cache, rows, cfg,
                      [1, 2, 4],
                      out / "samples.png", "ADD student: 1, 2 and 4 steps, same noise per column", space=teacher.space)
    steps = [r["step"] for r in history]
    curves = {k: [r.get(k, float("nan")) for r in history] for k in ("loss_G", "loss_distill", "loss_D")}
    plots.loss_curve(steps, curves, out / "losses.png", "ADD losses", logy=False)
    plots.loss_curve(steps, {k: [r.get(k, float("nan")) for r in history] for k in ("logits_real", "logits_fake")},
                     out / "logits.png", "discriminator logits (sum over heads of the token mean)", logy=False)
    last = history[-1] if history else {}
    metrics = {**run, **{f"final_{k}": v for k, v in last.items() if k != "step"}}
    write_json(out / "metrics.json", metrics)
    return metrics


def class_text_embeddings(train: D.Dataset, cache: TextCache) -> torch.Tensor:
    """One text embedding per class: the mean of the normalised pooled embeddings of the captions that
    class's training images carry (the zero-shot classifier of the image tower)."""
    pooled = torch.nn.functional.normalize(cache.pooled[cache.rows(train.captions)].float(), dim=-1)
    return torch.stack([pooled[train.labels == k].mean(0) for k in range(int(train.labels.max()) + 1)])


def has_labels(ds: D.Dataset) -> bool:
    return bool((ds.labels >= 0).all()) and len(set(ds.labels.tolist())) > 1


def run_evaluators(seed: int, data_cfg: C.DataConfig, text_cfg: C.TextEncoderConfig, cfg: C.EvaluatorsConfig,
                   root: Path = Path("."), progress: bool = True) -> dict:
    """Train the metrics' networks: the classifier (FID features, prompt accuracy) and the CLIP image tower."""
    from .evaluators import batched, train_evaluator, zero_shot_accuracy
    from .metrics import clip_score

    ds, cache = load_prepared(root)
    train, hold = ds.subset(D.TRAIN), ds.subset(D.HOLDOUT)
    out, model_dir = root / REPORTS / "evaluators", root / MODELS / "evaluators"
    metrics: dict = {}
    curves = {}
    if has_labels(train):
        run = train_evaluator("classifier", cfg.classifier, seed, train.pixels(), train.labels, None, model_dir,
                              root / CHECKPOINTS / "evaluators" / "classifier", progress=progress,
                              num_threads=cfg.num_threads)
        clf = run["model"]
        metrics["classifier"] = {"steps": run["steps"], "train_seconds": run["train_seconds"],
                                 "holdout_accuracy": float((batched(clf, hold.pixels()).argmax(1) == hold.labels)
                                                           .float().mean())}
        curves["classifier cross-entropy"] = run["history"]
    caption_ids = cache.rows(train.captions)
    run = train_evaluator("clip", cfg.clip, seed, train.pixels(), caption_ids, cache.pooled, model_dir,
                          root / CHECKPOINTS / "evaluators" / "clip", progress=progress, num_threads=cfg.num_threads)
    tower = run["model"]
    z = batched(tower, hold.pixels())
    own = cache.pooled[cache.rows(hold.captions)]
    shuffled = own[torch.randperm(len(own), generator=torch.Generator().manual_seed(seed))]
    metrics["clip"] = {"steps": run["steps"], "train_seconds": run["train_seconds"],
                       "holdout_clip_score_own_captions": clip_score(z, own),
                       "holdout_clip_score_shuffled_captions": clip_score(z, shuffled)}
    if has_labels(train):
        metrics["clip"]["holdout_zero_shot_accuracy"] = zero_shot_accuracy(tower, hold.pixels(), hold.labels,
                                                                          class_text_embeddings(train, cache))
    curves["image tower CLIP loss"] = run["history"]
    fig_steps = max(curves.values(), key=len)
    plots.loss_curve([r["step"] for r in fig_steps],
                     {k: [r["loss"] for r in v] + [float("nan")] * (len(fig_steps) - len(v)) for k, v in curves.items()},
                     out / "loss.png", "evaluator networks: training losses")
    write_json(out / "metrics.json", metrics)
    resolved = {"seed": seed, "data": data_cfg, "text_encoder": text_cfg, "evaluators": cfg}
    C.write_resolved(resolved, out / "config.json", code_version=code_version(root))
    C.write_resolved(resolved, model_dir / "addlib_config.json", code_version=code_version(root))
    return metrics


@dataclasses.dataclass
class Scoring:
    """What scores generated images against the reference split (the evaluate stage's rows and the ablations)."""
    ref: D.Dataset                # FID reference split; test prompts are drawn from its captions
    sel: D.Dataset                # the other split: guidance selection
    feat_fn: Any                  # images -> FID / precision-recall features
    feat_name: str
    ref_feats: torch.Tensor
    sel_feats: torch.Tensor
    scorer: Any                   # evaluation.Scorer
    clip_text: Any                # real CLIP's text tower, or None (the cache's pooled MiniLM embeddings)

    def prompts_for(self, split: D.Dataset, n: int, seed: int, cache: TextCache):
        """n prompts drawn from a split's captions (evaluation.draw_prompts), with the CLIP score's text side."""
        from . import evaluation as E

        return self.with_clip_text(E.draw_prompts(split.captions, split.labels, cache, n, seed))

    def prompts_of(self, captions: list[str], labels: torch.Tensor, cache: TextCache):
        """Prompts for exactly these captions (evaluation.prompts_of), with the CLIP score's text side."""
        from . import evaluation as E

        return self.with_clip_text(E.prompts_of(captions, labels, cache))

    def with_clip_text(self, p):
        """Replace the pooled MiniLM embeddings by real CLIP's text features when the scorer is real CLIP."""
        if self.clip_text is not None:
            p.text_emb = torch.cat([self.clip_text(p.captions[i:i + 256]) for i in range(0, len(p), 256)])
        return p


def scoring(ds: D.Dataset, cache: TextCache, ev_cfg: C.EvaluatorsConfig, cfg: C.EvaluateConfig,
            root: Path = Path(".")) -> Scoring:
    """The metrics' networks (the evaluators stage's, or Inception / CLIP from local files) and the reference
    features: FID and precision/recall features, CLIP score's image tower, prompt accuracy's classifier."""
    from . import evaluation as E
    from .evaluators import clip_model_towers, inception_features, load_evaluator
    from .metrics import extract

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
    ref_feats, sel_feats = extract(feat_fn, ref.pixels()), extract(feat_fn, sel.pixels())
    scorer = E.Scorer(feat_fn, image_emb, classify, ref_feats, cfg.pr_k, pr_seed=cfg.seed)
    return Scoring(ref, sel, feat_fn, feat_name, ref_feats, sel_feats, scorer, clip_text)


def run_evaluate(seed: int, data_cfg: C.DataConfig, text_cfg: C.TextEncoderConfig, teacher_cfg: C.TeacherConfig,
                 add_cfg: C.ADDConfig, ev_cfg: C.EvaluatorsConfig, cfg: C.EvaluateConfig, root: Path = Path("."),
                 progress: bool = True) -> dict:
    """Table 2 and Figures 4 and 7: the teacher's solvers against the ADD student (see evaluation.py)."""
    import csv

    from diffusers import UNet2DConditionModel

    from . import evaluation as E
    from .diffusion import student_schedule
    from .metrics import extract, fid_from_features, split_halves_fid
    from .latent import load_teacher
    from .sampling import initial_noise, unet_input_shape
    from .training import set_threads

    from accelerate import Accelerator

    set_threads(cfg.num_threads)
    acc = Accelerator()  # one process in the pipeline; under `accelerate launch` the sampling is split
    ds, cache = load_prepared(root)
    cache = extend_cache(cache, add_cfg.sample_prompts, text_cfg)
    out = root / REPORTS / "evaluate"
    bundle = load_teacher(teacher_cfg, root / MODELS / "teacher")
    schedule, space, teacher = bundle.schedule, bundle.space, bundle.unet.eval()
    noise_shape = unet_input_shape(teacher)  # latent-shaped for latent teachers
    sc = scoring(ds, cache, ev_cfg, cfg, root)
    ref, sel, feat_fn, ref_feats, sel_feats = sc.ref, sc.sel, sc.feat_fn, sc.ref_feats, sc.sel_feats
    prompts_for = lambda split, n, seed: sc.prompts_for(split, n, seed, cache)  # noqa: E731
    floor = split_halves_fid(ref_feats, seed=cfg.seed)

    test_prompts = prompts_for(ref, cfg.num_samples, cfg.seed)
    test_noise = initial_noise(cfg.num_samples, noise_shape, cfg.seed)
    sel_prompts = prompts_for(sel, cfg.guidance_samples, cfg.guidance_seed)
    sel_noise = initial_noise(cfg.guidance_samples, noise_shape, cfg.guidance_seed)
    student = UNet2DConditionModel.from_pretrained(root / MODELS / "student").eval()
    empty = tuple(a for a in cache[torch.tensor([0])][:2])

    def teacher_gen(sampler, steps, w):
        return E.Generator("teacher", sampler, steps, w, teacher, schedule, empty=empty, space=space)

    def student_gen(steps):
        return E.Generator("student", "add", steps, 1.0, student,
                           student_schedule(teacher_cfg.schedule, add_cfg.student_zero_terminal_snr),
                           trained_timesteps=add_cfg.student_timesteps, space=space)

    rows, guidance, images_of, seed_fids = [], {}, {}, {}

    def add_row(gen, images, throughput):
        r = {"model": gen.model, "sampler": gen.sampler, "steps": gen.steps, "nfe": gen.nfe,
             "guidance": gen.guidance,
             "seconds_per_image": E.seconds_per_image_batch1(gen, test_prompts, test_noise, cfg.speed_repeats),
             "images_per_second": throughput if throughput is not None else float("nan"),
             **sc.scorer(images, test_prompts)}
        rows.append(r)
        print(f"{r['model']:8s} {r['sampler']:12s} {r['steps']:3d} steps  w={r['guidance']:<4g} NFE {r['nfe']:3d}  "
              f"FID {r['fid']:8.3f}  P {r['precision']:.3f}  R {r['recall']:.3f}  CLIP {r['clip_score']:.2f}  "
              f"acc {r['prompt_accuracy']:.3f}  {r['seconds_per_image'] * 1e3:.1f} ms/img  "
              f"{r['images_per_second']:.1f} img/s", flush=True)

    # Teacher rows: guidance chosen on the held-out split per sampler and step count (up to guidance_max_steps).
    for sampler in cfg.teacher_samplers:
        chosen: dict[int, float] = {}
        for steps in sorted(cfg.teacher_steps):
            if steps <= cfg.guidance_max_steps or not chosen:
                w, fids = E.choose_guidance(lambda w: teacher_gen(sampler, steps, w), cfg.guidance_candidates,
                                            sel_prompts, sel_noise, lambda x: fid_from_features(sel_feats, extract(feat_fn, x)),
                                            cfg.batch_size, accelerator=acc)
                chosen[steps] = w
                guidance[f"{sampler}/{steps}"] = {"chosen": w, "heldout_fid": {f"{k:g}": v for k, v in fids.items()}}
            else:
                w = chosen[max(chosen)]
                guidance[f"{sampler}/{steps}"] = {"chosen": w, "reused_from_steps": max(chosen)}
            gen = teacher_gen(sampler, steps, w)
            images, throughput = E.generate(gen, test_prompts, test_noise, cfg.batch_size, progress=progress,
                                            accelerator=acc)
            images_of[(sampler, steps)] = images
            add_row(gen, images, throughput)
    # Student rows, plus the FID spread over noise seeds.
    for steps in sorted(cfg.student_steps):
        gen = student_gen(steps)
        images, throughput = E.generate(gen, test_prompts, test_noise, cfg.batch_size, seed=cfg.seed, accelerator=acc)
        images_of[("add", steps)] = images
        add_row(gen, images, throughput)
        fids = [rows[-1]["fid"]]
        for k in range(1, cfg.seed_repeats + 1):
            x, _ = E.generate(gen, test_prompts, initial_noise(cfg.num_samples, noise_shape, cfg.seed + k), cfg.batch_size,
                              seed=cfg.seed + k, accelerator=acc)
            fids.append(fid_from_features(ref_feats, extract(feat_fn, x)))
        t = torch.tensor(fids, dtype=torch.float64)
        seed_fids[f"student/add/{steps}"] = {"fids": fids, "mean": float(t.mean()),
                                             "std": float(t.std()) if len(fids) > 1 else 0.0}

    # Outputs: the table (csv + markdown), metrics, plots, Figure 4 (written by one process).
    if not acc.is_main_process:
        return {}
    tables = root / REPORTS / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    with open(tables / "comparison.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=E.COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (tables / "comparison.md").write_text(E.markdown_table(rows))
    targets = E.check_targets(rows)
    result = {"fid_features": sc.feat_name, "clip_model": "transformers CLIP" if cfg.clip else "in-domain image tower",
              "reference": cfg.reference, "reference_images": len(ref), "num_samples": cfg.num_samples,
              "fid_floor_split_halves": floor, "student_fid_over_seeds": seed_fids, "teacher_guidance": guidance,
              "rows": {f"{r['model']}/{r['sampler']}/{r['steps']}": r for r in rows}, "targets": targets,
              "targets_met": sum(t["met"] for t in targets.values()), "targets_total": len(targets)}
    write_json(root / REPORTS / "metrics" / "evaluate.json", result)
    plots.fid_vs_nfe(rows, floor, out / "fid_vs_nfe.png",
                     f"FID vs NFE ({cfg.num_samples} samples, {sc.feat_name} features)")
    plots.quality_vs_time(rows, out / "quality_vs_time.png", "quality against sampling time (batch 1, this machine)")
    # Figure 4: the same prompts and noise for teacher and student.
    k = cfg.grid_per_prompt
    grid_prompts = [p for p in add_cfg.sample_prompts for _ in range(k)]
    gp = E.prompts_of(grid_prompts, torch.full((len(grid_prompts),), -1), cache)
    noise = initial_noise(len(gp), noise_shape, cfg.seed)
    blocks, labels = [], []
    for steps in cfg.grid_steps:
        cands = [r for r in rows if r["model"] == "teacher" and r["steps"] == steps]
        sampler, w = (min(cands, key=lambda r: r["fid"])[k2] for k2 in ("sampler", "guidance")) if cands \
            else (cfg.teacher_samplers[0], 1.0)
        blocks.append(teacher_gen(sampler, steps, w)(gp, noise))
        labels.append(f"teacher {sampler}\n{steps} steps, w={w:g}")
    for steps in sorted(cfg.student_steps):
        blocks.append(student_gen(steps)(gp, noise, seed=cfg.seed))
        labels.append(f"ADD student\n{steps} step{'s' if steps > 1 else ''}")
    grid = [[] for _ in add_cfg.sample_prompts]
    col_labels = []
    for x, lab in zip(blocks, labels):
        for r in range(len(grid)):
            grid[r].extend(x[r * k:(r + 1) * k])
        col_labels += [lab] + [""] * (k - 1)
    plots.image_grid(grid, out / "figure4.png", row_labels=add_cfg.sample_prompts, col_labels=col_labels,
                     title="Figure 4 at this scale: the same prompts and noise in every block")
    C.write_resolved({"seed": seed, "data": data_cfg, "text_encoder": text_cfg, "teacher": teacher_cfg, "add": add_cfg,
                      "evaluators": ev_cfg, "evaluate": cfg}, out / "config.json", code_version=code_version(root))
    return result


# --------------------------------------------------------------------------------------------------
# The runner DVC calls.


def stage_outputs(stage: str, root: Path, key: str | None = None) -> list[Path]:
    """The stage's declared outs, metrics and plots, read from dvc.yaml (the one place they are listed);
    for a ``foreach`` stage, those of the instance ``key`` (``${key}`` filled in)."""
    import yaml

    spec = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage]
    spec = spec.get("do", spec)
    paths = []
    for k in ("outs", "metrics", "plots"):
        for item in spec.get(k, []):
            path = item if isinstance(item, str) else next(iter(item))
            paths.append(root / (path.replace("${key}", key) if key is not None else path))
    return paths


def executed_path(stage: str, root: Path, key: str | None = None) -> Path:
    return root / EXECUTED / (f"ablations/{key}.ipynb" if stage == "ablation" else f"{stage}.ipynb")


def remove_outputs(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def ensure_kernel() -> None:
    """Register this environment's Python as the 'addlib' Jupyter kernel if it is missing or stale."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL, display_name="Python (addlib)", prefix=sys.prefix)


def check_stage(stage: str, params_path: Path, root: Path, key: str | None = None) -> dict:
    """Validate params.yaml and the stage's inputs; return the raw sections the notebook gets."""
    raw = C.load_raw(params_path)
    cfg = C.parse(raw, params_path.name)
    if stage in FOREACH and key not in cfg.ablations.runs:
        raise C.ConfigError(f"ablations.runs: no run named {key!r} (runs: {', '.join(cfg.ablations.runs)})")
    if stage == "report":
        missing = [run for run in cfg.ablations.runs
                   if not (root / REPORTS / "ablations" / "runs" / run / "metrics.json").is_file()]
        if missing or not (root / REPORTS / "metrics" / "evaluate.json").is_file():
            raise C.ConfigError(f"report: results missing ({', '.join(missing) or 'evaluate'}); "
                                f"run the stages before 'report' first (dvc repro)")
        return {k: raw[k] for k in STAGE_SECTIONS[stage]}
    if stage == "prepare":
        cfg.data.check_inputs(root)
        cfg.text_encoder.check_inputs(root)
    else:
        if stage in ("teacher", "add", "evaluate", "ablation"):
            cfg.teacher.check_inputs(root)
        if stage in ("features", "ablation"):
            cfg.features.check_inputs(root)
        if stage in ("evaluate", "ablation"):
            cfg.evaluate.check_inputs(root)
            needed = ("teacher", "student", "evaluators") if stage == "evaluate" else ("teacher", "features", "evaluators")
            for name in needed:
                if not (root / MODELS / name).is_dir():
                    raise C.ConfigError(f"{root / MODELS / name}: not found; run the stages before {stage!r} "
                                        f"first (dvc repro)")
        missing = [p for p in (root / DATA_DIR / "dataset.safetensors", root / DATA_DIR / "text_cache.safetensors")
                   if not p.exists()]
        if missing:
            raise C.ConfigError(f"{missing[0]}: not found; run the 'prepare' stage first (dvc repro)")
    return {k: raw[k] for k in STAGE_SECTIONS[stage]}


def run_stage(stage: str, params_path: Path = Path("params.yaml"), root: Path = Path("."),
              key: str | None = None) -> int:
    import papermill as pm

    if stage not in STAGE_SECTIONS:
        print(f"error: unknown stage {stage!r} (one of {', '.join(STAGE_SECTIONS)})", file=sys.stderr)
        return 2
    try:
        parameters = check_stage(stage, root / params_path, root, key)
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if stage in FOREACH:
        parameters[FOREACH[stage]] = key
    outputs = stage_outputs(stage, root, key)
    remove_outputs(outputs)
    ensure_kernel()
    executed = executed_path(stage, root, key)
    executed.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(str(root / "notebooks" / f"{stage}.ipynb"), str(executed), parameters=parameters,
                            kernel_name=KERNEL, cwd=str(root), log_output=True, progress_bar=False)
    except pm.PapermillExecutionError as e:
        failed = executed.with_suffix(".failed.ipynb")
        if executed.exists():
            executed.replace(failed)
        remove_outputs(outputs)
        print(f"error: stage {stage!r} failed in cell {e.exec_count}: {e.ename}: {e.evalue} "
              f"(executed notebook: {failed})", file=sys.stderr)
        return 1
    if stage == "report":  # the page is the executed notebook itself, so it is rendered after it ran
        from .report import render_site

        render_site(executed, stage_notebooks(root, C.load_raw(root / params_path)), root / REPORTS / "html")
    return 0


def stage_notebooks(root: Path, raw: dict) -> dict[str, Path]:
    """Page name -> executed notebook of every stage before the report, in pipeline order."""
    pages = {s: executed_path(s, root) for s in STAGE_SECTIONS if s not in ("ablation", "report")}
    pages.update({f"ablation-{run}": executed_path("ablation", root, run) for run in raw["ablations"]["runs"]})
    return pages


BODIES = {"prepare": run_prepare, "teacher": run_teacher, "features": run_features, "add": run_add,
          "evaluators": run_evaluators, "evaluate": run_evaluate}


def run_direct(stage: str, params_path: Path = Path("params.yaml"), root: Path = Path("."),
               key: str | None = None) -> int:
    """The stage body in this process, without the notebook: what ``accelerate launch`` runs on every
    process (``add`` trains data-parallel, ``evaluate`` splits its sampling; the main process writes the
    outputs). The executed notebook is not produced."""
    if stage not in BODIES:
        print(f"error: --direct runs {', '.join(BODIES)}; {stage!r} runs through its notebook", file=sys.stderr)
        return 2
    try:
        check_stage(stage, root / params_path, root, key)
        cfg = C.load(root / params_path)
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    BODIES[stage](*[getattr(cfg, s) for s in STAGE_SECTIONS[stage]], root=root)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m addlib.stages", description="run one pipeline stage")
    ap.add_argument("stage", choices=sorted(STAGE_SECTIONS))
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--run", help="the ablation run (stage ablation: one of params.yaml's ablations.runs)")
    ap.add_argument("--direct", action="store_true",
                    help="run the stage body in this process, without papermill (for `accelerate launch`)")
    args = ap.parse_args(argv)
    if (args.stage in FOREACH) != (args.run is not None):
        ap.error(f"--run is needed by (and only by) the stages {', '.join(FOREACH)}")
    if args.direct:
        return run_direct(args.stage, Path(args.params), key=args.run)
    return run_stage(args.stage, Path(args.params), key=args.run)


if __name__ == "__main__":
    raise SystemExit(main())
