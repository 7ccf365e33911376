"""How a student's scores grow with its training budget: ``python -m addlib.budget_curve --run default --steps 600
--batch-size 32 --every 100`` (issue 37's benchmark for Table 1's budget and the main run's length; not a test).

Trains one Table 1 run's variant (Table 1's ADD settings, ``ablations.add``, with ``ablations.runs.<run>.overrides``
and any ``--set`` values, as the ablation stage builds it) through the add stage's path (student.train_student),
stopping every ``--every`` steps and scoring the student's EMA at each stop as the ablation stage scores a row:
its samples at 1 step (and ``--eval-steps``) against the reference split, in both feature spaces. A stop is train_add's ``max_steps``; the
next one resumes from the run's checkpoint (a resume is bit-identical: tests/test_add.py), and ADD's learning
rate is constant after its warm-up, so the point at k steps is what a k-step run gives. Reads the trained teacher,
F and evaluators in ``--root`` (``dvc repro teacher features evaluators`` there first); its checkpoints stay in
``<root>/checkpoints/budget/`` so a rerun resumes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from . import config as C
from .columns import TABLE1
from .paths import CHECKPOINTS, MODELS, write_benchmark


def with_values(raw: dict, run: str, values: list[str]) -> dict:
    """``raw`` with ``key.path=value`` pairs (values read as YAML) merged into the run's overrides."""
    over: dict = {}
    for kv in values:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            raise C.ConfigError(f"--set {kv!r}: expected key.path=value")
        node = over
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = yaml.safe_load(value)
    runs = dict(raw["ablations"]["runs"])
    if run not in runs:
        raise C.ConfigError(f"--run {run!r}: not in ablations.runs ({', '.join(runs)})")
    runs[run] = {**runs[run], "overrides": C.deep_merge(runs[run].get("overrides") or {}, over)}
    return {**raw, "ablations": {**raw["ablations"], "runs": runs}}


def curve(root: Path, run: str, seed: int, steps: int, batch_size: int, every: int, eval_steps: list[int],
          samples: int, values: list[str] = (), progress: bool = True) -> dict:
    from .config import checks
    from .pipeline.scoring import scoring, student_scores
    from .pipeline.student import student_inputs, train_student
    from .sampling import initial_noise, unet_input_shape

    raw = with_values(C.load_raw(root / "params.yaml"), run, list(values))
    raw["ablations"] = {**raw["ablations"], "steps": steps, "batch_size": batch_size}
    checks.parse(raw, "params.yaml with --set")  # a bad value is one line, before any compute
    p = C.parse_run(raw, run, seed)
    ds, cache, teacher = student_inputs(p, root)
    sc = scoring(ds, cache, p.evaluators, p.evaluate, root)
    prompts = sc.prompts_for(sc.ref, samples, p.evaluate.seed, cache)
    noise = initial_noise(samples, unet_input_shape(teacher.unet), p.evaluate.seed)
    work = root / CHECKPOINTS / "budget" / f"{run}-b{batch_size}-s{seed}-{C.fingerprint(C.to_dict(p.add))[:8]}"
    points = []
    for stop in list(range(every, steps, every)) + [steps]:
        trained = train_student(p, ds, cache, teacher, root / MODELS / "features", work / "student", work / "checkpoints",
                                progress, max_steps=stop)
        scores = student_scores(sc, trained["student"], p, teacher.space, prompts, noise, eval_steps)
        last = trained["history"][-1] if trained["history"] else {}
        points.append({"step": stop, "images": stop * batch_size, "train_seconds": trained["train_seconds"],
                       **scores, **{f"final_{k}": v for k, v in last.items() if k != "step"}})
        print(f"{run} step {stop}: " + "  ".join(f"{k} {scores[k]:.3f}" for k in TABLE1 if k in scores), flush=True)
    return {"run": run, "set": list(values), "overrides": raw["ablations"]["runs"][run].get("overrides") or {},
            "seed": seed, "steps": steps, "batch_size": batch_size, "eval_samples": samples, "eval_steps": eval_steps,
            "fid_features": sc.feat_name, "points": points}


def markdown(result: dict) -> str:
    cols = [c for k in result["eval_steps"] for c in (("fid", "recall", "fid_detail", "recall_detail") if k == 1 else
                                                       (f"fid@{k}", f"fid_detail@{k}"))]
    lines = [f"Table 1 run `{result['run']}` (seed {result['seed']}, batch {result['batch_size']}"
             + (f", {' '.join(result['set'])}" if result["set"] else "") + f"): the EMA student scored on "
             f"{result['eval_samples']} samples every so many steps (FID features: {result['fid_features']}; "
             "detail: the autoencoder's space)", "",
             "| step | images | train s | " + " | ".join(cols) + " |", "|" + "---:|" * (3 + len(cols))]
    for r in result["points"]:
        lines.append(f"| {r['step']} | {r['images']} | {r['train_seconds']:.0f} | "
                     + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m addlib.budget_curve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=".", help="the project holding the trained teacher, F and evaluators")
    ap.add_argument("--run", default="default", help="a run of ablations.runs (its overrides)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--every", type=int, required=True)
    ap.add_argument("--eval-steps", type=int, nargs="+", default=[1])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--set", dest="values", action="append", default=[], metavar="KEY=VALUE",
                    help="a params value for this run, e.g. add.discriminator.ode_solver=dpmsolver++ (repeatable)")
    ap.add_argument("--out", default=None, help="write the result as JSON here (and a .md table beside it)")
    a = ap.parse_args(argv)
    if a.every < 1 or a.steps < 1 or a.every > a.steps:
        ap.error("need 1 <= --every <= --steps")
    try:
        result = curve(Path(a.root), a.run, a.seed, a.steps, a.batch_size, a.every, a.eval_steps, a.samples,
                       a.values, progress=sys.stderr.isatty())
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_benchmark(a.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
