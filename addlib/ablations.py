"""The paper's Table 1 ablations at this scale: which runs to train, and how their results become tables.

The ``ablations`` section of params.yaml (shape and checks in config.AblationsConfig):

- ``runs``: name -> {seeds, overrides}. dvc.yaml makes one stage per name (``ablation@<name>``, a ``foreach``),
  which trains one run per seed; ``overrides`` is a partial params file deep-merged over params.yaml (names
  only: ``{add: {distance: l1}}``; config.ablation_params). Every run uses one code path, the ``add`` stage's
  train_add, with the ablation budget (``steps``, ``batch_size``) in place of ``add.train``'s, and is scored
  at 1 student step like the ``evaluate`` stage's rows (stages.run_ablation).
- ``tables``: sub-table -> row label -> run name. A run that several sub-tables share (the paper's default
  row: mse, exponential weighting, both conditionings, teacher init, one teacher step) is trained once.

``summarise`` turns the runs' metrics into one table per sub-table (mean and std over seeds), placed beside the
paper's numbers for the same rows (``PAPER``), with a sentence saying whether the FID ordering matches.
"""
from __future__ import annotations

import statistics
from typing import Any

from pathlib import Path

from .config import AblationsConfig

# The paper's Table 1 (FID at 1 student step, COCO, ADD-M; ADD_NOTES.md). Row labels of this project's
# sub-tables -> the paper's value; rows the paper does not have are absent.
PAPER: dict[str, dict[str, float]] = {
    "features": {"pretrained": 20.6, "larger": 24.0},             # DINOv2 ViT-S 20.6, ViT-L 24.0
    "conditioning": {"none": 21.2, "text": 21.2, "image": 21.1, "both": 20.6},
    "init": {"teacher": 20.6, "random": 293.6},
    "loss": {"adversarial only": 20.8, "distillation only": 315.6, "both, exponential": 20.6,
             "both, sds": 22.3, "both, nfsd": 21.8},
    "distance": {"mse": 20.6},
}


def _ordering_matches(ours: dict[str, float], paper: dict[str, float]) -> bool | None:
    """Whether every pair of rows the paper orders strictly is ordered the same way here (None: < 2 rows)."""
    rows = [r for r in paper if r in ours]
    if len(rows) < 2:
        return None
    return all((ours[a] < ours[b]) == (paper[a] < paper[b])
               for i, a in enumerate(rows) for b in rows[i + 1:] if paper[a] != paper[b])


def summarise(cfg: AblationsConfig, results: dict[str, dict[int, dict[str, float]]],
              metrics: tuple[str, ...] = ("fid", "precision", "recall", "clip_score", "prompt_accuracy")) -> dict:
    """results: run -> seed -> metrics. Returns sub-table -> {rows: [...], sentence: str}; each row holds the
    label, the run, the number of seeds, mean and std of every metric, and the paper's FID where it has one."""
    out = {}
    for table, rows in cfg.tables.items():
        table_rows = []
        for label, run in rows.items():
            per_seed = list(results[run].values())
            row: dict[str, Any] = {"row": label, "run": run, "seeds": len(per_seed)}
            for m in metrics:
                vals = [r[m] for r in per_seed if m in r]
                if vals:
                    row[m] = statistics.fmean(vals)
                    row[f"{m}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
            row["paper_fid"] = PAPER.get(table, {}).get(label)
            table_rows.append(row)
        ours = {r["row"]: r["fid"] for r in table_rows if "fid" in r}
        match = _ordering_matches(ours, PAPER.get(table, {}))
        if match is None:
            sentence = "The paper reports fewer than two of these rows, so there is no ordering to compare."
        else:
            best_here = min(ours, key=ours.get)
            compared = [r for r in PAPER[table] if r in ours]
            best_paper = min(compared, key=PAPER[table].get)
            sentence = ("The FID ordering of the rows the paper reports matches the paper's" if match else
                        "The FID ordering differs from the paper's") + \
                f" (best here: {best_here}; best in the paper: {best_paper})."
        out[table] = {"rows": table_rows, "ordering_matches_paper": match, "sentence": sentence}
    return out


TITLES = {"distance": "Distance metric d of the distillation loss", "loss": "Loss terms (Table 1d)",
          "features": "Discriminator feature network F (Table 1a)", "conditioning": "Discriminator conditioning (Table 1b)",
          "init": "Student initialisation (Table 1c)", "teacher_steps": "Teacher steps for the target (Table 1f)",
          "teacher_t": "Re-noising timestep of the distillation target"}


def _cell(row: dict, m: str, digits: int) -> str:
    if m not in row:
        return "-"
    std = f" ± {row[f'{m}_std']:.{digits}f}" if row["seeds"] > 1 else ""
    return f"{row[m]:.{digits}f}{std}"


def markdown(table1: dict) -> str:
    """Table 1 as markdown: one sub-table per ablation, mean ± std over seeds, the paper's FID beside."""
    parts = []
    for table, t in table1.items():
        lines = [f"### {TITLES.get(table, table)}", "",
                 "| row | seeds | FID | precision | recall | CLIP score | prompt accuracy | paper FID |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in t["rows"]:
            paper = f"{r['paper_fid']:g}" if r.get("paper_fid") is not None else "-"
            lines.append(f"| {r['row']} | {r['seeds']} | {_cell(r, 'fid', 2)} | {_cell(r, 'precision', 3)} | "
                         f"{_cell(r, 'recall', 3)} | {_cell(r, 'clip_score', 2)} | {_cell(r, 'prompt_accuracy', 3)} "
                         f"| {paper} |")
        parts.append("\n".join(lines + ["", t["sentence"], ""]))
    return "\n".join(parts)

def run_ablation(run: str, raw: dict, root: Path = Path("."), progress: bool = True) -> dict:
    """One row of Table 1: train the run's variant once per seed with the ablation budget (train_add, the
    add stage's code path, on params.yaml with the run's overrides; config.ablation_params) and score its
    1-step samples as the evaluate stage scores its rows. A run that changes F's architecture pretrains that
    F first (the features stage's code, its own pretraining params); a random-init F needs no training."""
    from . import config as C
    from . import data as D
    from . import evaluation as E
    from .latent import load_teacher
    from .pretrain import pretrain_features
    from .sampling import initial_noise, unet_input_shape
    from .stages import (CHECKPOINTS, MODELS, REPORTS, STAGE_SECTIONS, build_discriminator, code_version,
                         extend_cache, load_prepared, scoring, write_json)
    from .diffusion import student_schedule
    from .training import save_student_grid, train_add

    base = C.parse(raw)
    ab = base.ablations
    spec = ab.runs[run]
    ds, cache = load_prepared(root)
    train = ds.subset(D.TRAIN)
    work = root / CHECKPOINTS / "ablations" / run
    out = root / REPORTS / "ablations" / "runs" / run
    # What does not change with the seed: the run's params (but for the seed), its caption cache, the teacher,
    # its pretrained F (one per run, pretrained with the params' seed like the features stage) and the scoring.
    p0 = C.parse_run(raw, run, spec.seeds[0])
    features_dir, pretrained_f = None, None
    if p0.features != base.features and p0.features.source == "in_domain" and p0.features.pretrain.objective != "none":
        features_dir = work / "features"
        pretrained_f = pretrain_features(p0.features, base.seed, train.pixels(), features_dir,
                                         work / "features_checkpoints", progress=progress)
        pretrained_f = {k: pretrained_f[k] for k in ("steps", "train_seconds")}
    cache_p = extend_cache(cache, p0.add.sample_prompts + [p0.add.nfsd_negative_prompt], p0.text_encoder)
    negative_row = int(cache_p.rows([p0.add.nfsd_negative_prompt])[0])
    teacher = load_teacher(p0.teacher, root / MODELS / "teacher")
    sc = scoring(ds, cache_p, p0.evaluators, p0.evaluate, root)
    prompts = sc.prompts_for(sc.ref, ab.eval_samples, p0.evaluate.seed, cache_p)
    noise = initial_noise(ab.eval_samples, unet_input_shape(teacher.unet), p0.evaluate.seed)
    per_seed, resolved = {}, {}
    for seed in spec.seeds:
        p = C.parse_run(raw, run, seed)
        resolved[f"seed {seed}"] = {k: getattr(p, k) for k in STAGE_SECTIONS["add"]}
        disc = build_discriminator(p.features, p.add.discriminator, ds.images.shape[1], cache_p.pooled.shape[1],
                                   root, seed, features_dir)
        trained = train_add(p.add, teacher, seed, train, cache_p, disc, negative_row,
                            work / f"seed{seed}" / "student", work / f"seed{seed}" / "checkpoints",
                            progress=progress, fingerprint_extra=[C.to_dict(p.features)])
        student = trained["student"]
        sched_s = student_schedule(p.teacher.schedule, p.add.student_zero_terminal_snr)
        gen = E.Generator("student", "add", 1, 1.0, student, sched_s,
                          trained_timesteps=p.add.student_timesteps, space=teacher.space)
        images, _ = E.generate(gen, prompts, noise, p.evaluate.batch_size, seed=p.evaluate.seed, progress=False)
        last = trained["history"][-1] if trained["history"] else {}
        per_seed[seed] = {**sc.scorer(images, prompts), "train_seconds": trained["train_seconds"],
                          "steps": trained["steps"], **{f"final_{k}": v for k, v in last.items() if k != "step"}}
        print(f"{run} seed {seed}: " + "  ".join(f"{k} {per_seed[seed][k]:.3f}" for k in
                                                  ("fid", "precision", "recall", "clip_score", "prompt_accuracy")),
              flush=True)
        if seed == spec.seeds[0]:
            save_student_grid(student, sched_s, cache_p, cache_p.rows(p.add.sample_prompts).tolist(), p.add,
                              [1], out / "samples.png", f"ablation '{run}' (seed {seed}): 1 step after {ab.steps} steps")
    metrics = {"run": run, "overrides": spec.overrides, "steps": ab.steps, "batch_size": ab.batch_size,
               "eval_samples": ab.eval_samples, "fid_features": sc.feat_name,
               "seeds": {str(k): v for k, v in per_seed.items()}}
    if pretrained_f is not None:
        metrics["feature_network_pretraining"] = pretrained_f
    write_json(out / "metrics.json", metrics)
    C.write_resolved(resolved, out / "config.json", code_version=code_version(root))
    return metrics
