"""Stage ablation@<run>: one row of Table 1. The run's variant is trained once per seed with the ablation
budget (student.train_student, the add stage's code path, on the params with the run's overrides;
config.ablation_params) and its 1-step samples are scored as the evaluate stage scores its rows. A run that
changes F's architecture pretrains that F first (the features stage's code, its own pretraining params); a
random-init F needs no training. ablations.py turns the runs' metrics into Table 1 (the report stage)."""
from __future__ import annotations

from pathlib import Path

from .. import config as C
from .. import data as D
from ..columns import TABLE1
from ..diffusion import student_schedule
from ..grids import save_student_grid
from ..paths import CHECKPOINTS, MODELS, REPORTS, code_version, write_json
from ..pretrain import pretrain_features
from ..sampling import initial_noise, unet_input_shape
from .common import prune_checkpoints, sections
from .scoring import scoring, student_scores
from .student import RESOLVED, student_inputs, train_student


def run(p: C.Params, name: str, root: Path = Path("."), progress: bool = True, keep: bool = False) -> dict:
    raw = C.to_dict(p)
    ab = p.ablations
    spec = ab.runs[name]
    work = root / CHECKPOINTS / "ablations" / name
    out = root / REPORTS / "ablations" / "runs" / name
    # What does not change with the seed: the run's params (but for the seed), its caption cache, the teacher,
    # its pretrained F (one per run, pretrained with the params' seed like the features stage) and the scoring.
    p0 = C.parse_run(raw, name, spec.seeds[0])
    ds, cache, teacher = student_inputs(p0, root)
    train = ds.subset(D.TRAIN)
    features_dir, pretrained_f = root / MODELS / "features", None
    if p0.features != p.features and p0.features.source == "in_domain" and p0.features.pretrain.objective != "none":
        features_dir = work / "features"
        pretrained_f = pretrain_features(p0.features, p.seed, train.pixels(), features_dir,
                                         work / "features_checkpoints", progress=progress)
        pretrained_f = {k: pretrained_f[k] for k in ("steps", "train_seconds")}
    sc = scoring(ds, cache, p0.evaluators, p0.evaluate, root)
    prompts = sc.prompts_for(sc.ref, ab.eval_samples, p0.evaluate.seed, cache)
    noise = initial_noise(ab.eval_samples, unet_input_shape(teacher.unet), p0.evaluate.seed)
    per_seed, resolved = {}, {}
    for seed in spec.seeds:
        ps = C.parse_run(raw, name, seed)
        resolved[f"seed {seed}"] = sections(ps, *RESOLVED)
        trained = train_student(ps, ds, cache, teacher, features_dir, work / f"seed{seed}" / "student",
                                work / f"seed{seed}" / "checkpoints", progress)  # the add stage's path
        student = trained["student"]
        scores = student_scores(sc, student, ps, teacher.space, prompts, noise, ab.eval_steps_of(name))
        last = trained["history"][-1] if trained["history"] else {}
        per_seed[seed] = {**scores, "train_seconds": trained["train_seconds"],
                          "steps": trained["steps"], "seconds_per_step": trained["train_seconds"] / max(1, trained["steps"]),
                          "trainable_parameters": trained["trainable_parameters"],
                          "trained_state_mib": trained["trained_state_mib"],
                          "peak_memory_mib": trained["peak_memory_mib"],  # the stage process's, up to this seed
                          **{f"final_{k}": v for k, v in last.items() if k != "step"}}
        print(f"{name} seed {seed}: " + "  ".join(f"{k} {per_seed[seed][k]:.3f}" for k in TABLE1), flush=True)
        if seed == spec.seeds[0]:
            sched_s = student_schedule(ps.teacher.schedule, ps.add.student_zero_terminal_snr)
            save_student_grid(student, sched_s, cache, cache.rows(ps.add.sample_prompts).tolist(), ps.add, [1],
                              out / "samples.png", f"ablation '{name}' (seed {seed}): 1 step after {ab.steps} steps",
                              space=teacher.space)
    metrics = {"run": name, "overrides": spec.overrides, "steps": ab.steps, "batch_size": ab.batch_size,
               "eval_samples": ab.eval_samples, "eval_steps": ab.eval_steps_of(name), "fid_features": sc.feat_name,
               "seeds": {str(k): v for k, v in per_seed.items()}}
    if pretrained_f is not None:
        metrics["feature_network_pretraining"] = pretrained_f
    write_json(out / "metrics.json", metrics)
    C.write_resolved(resolved, out / "config.json", code_version=code_version(root))
    if not keep:  # the run's F, students and checkpoints: a killed stage resumed from them until here
        prune_checkpoints(work)
    return metrics
