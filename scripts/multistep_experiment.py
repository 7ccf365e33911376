"""Issue 21's experiments: does a variant of the ADD step make more student steps help?

Trains one variant (params.yaml plus ``--set key=value`` overrides) with the ablation code path
(pipeline/ablation.py: train_add on the add stage's params, the run's budget) in a sandbox beside the project,
scores it at 1, 2 and 4 steps in both feature spaces (metric@k), and runs the diagnostics on it (the 4-step
sampler cut after each step; one call from noised held-out digits at each student timestep), so the t = 749
call's recall is measured directly. It reads the pipeline's prepared data and trained models (teacher, F,
evaluators: run `make repro` first) and writes nothing into the project:

    python scripts/multistep_experiment.py --name noisy_ode --steps 400 \
        --set add.discriminator.c_img_noisy=teacher_ode
    -> .experiments/noisy_ode/summary.json (and the run's metrics, grids and diagnostics beside it)
    python scripts/multistep_experiment.py --table base noisy_ode   # their summaries as a markdown table
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from addlib import config as C  # noqa: E402
from addlib.paths import CHECKPOINTS, DATA_DIR, MODELS, REPORTS, write_json  # noqa: E402


def overrides(pairs: list[str]) -> dict:
    """``a.b.c=value`` (value read as YAML) -> a nested partial params dict."""
    out: dict = {}
    for item in pairs:
        key, _, value = item.partition("=")
        node = out
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = yaml.safe_load(value)
    return out


def table(names: list[str]) -> str:
    """The experiments' summaries as one markdown table (docs/multistep.md is written from it)."""
    def row(n: str) -> str:
        s = json.loads((ROOT / ".experiments" / n / "summary.json").read_text())
        sc, den, tr = s["scores"], s["denoise"], s.get("trace", {})
        sets = ", ".join(f"{k}={v}" for k, v in flat(s["overrides"])) or "params.yaml"
        cells = [f"{sc[f'fid@{k}']:.2f}" for k in (1, 2, 4)] + [f"{sc[f'fid_detail@{k}']:.2f}" for k in (1, 2, 4)]
        cells += [f"{sc[f'recall_detail@{k}']:.2f}" for k in (1, 2, 4)]
        cells += [f"{den[f'denoise/student/t{t}']['recall_detail']:.2f}" for t in (749, 499)]
        ink = [den.get("data", {}).get("ink"), den.get("denoise/student/t499", {}).get("ink"),
               tr.get("trace/4/t249", {}).get("ink")]
        cells += ["" if v is None else f"{v:.3f}" for v in ink]
        return f"| {n} | {sets} | " + " | ".join(cells) + " |"

    head = ("| run | settings | FID@1 | FID@2 | FID@4 | FID@1 (detail) | FID@2 (detail) | FID@4 (detail) "
            "| recall@1 (detail) | recall@2 (detail) | recall@4 (detail) | one call at 749: recall (detail) "
            "| one call at 499: recall (detail) | ink: data | ink: one call at 499 | ink: after 4 steps |")
    return "\n".join([head, "|" + "---|" * head.count(" | ") + "---|"] + [row(n) for n in names])


def flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--table"]:
        print(table(sys.argv[2:]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-samples", type=int, default=2000)
    ap.add_argument("--diagnose-samples", type=int, default=500)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    a = ap.parse_args(argv)
    raw = C.load_raw(a.params)
    raw["ablations"].update(steps=a.steps, batch_size=a.batch_size, eval_samples=a.eval_samples, eval_steps=[1, 2, 4],
                            runs={a.name: {"seeds": [a.seed], "overrides": overrides(a.set)}},
                            tables={"experiment": {a.name: a.name}})
    try:
        p = C.parse(raw)
        run_p = C.parse_run(raw, a.name, a.seed)
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # The sandbox: the project's data and models (read only), its own checkpoints and reports.
    box = ROOT / ".experiments" / a.name
    for d in (DATA_DIR, MODELS):
        link = box / d
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(ROOT / d, target_is_directory=True)
    from addlib.pipeline import ablation, diagnose

    t0 = time.time()
    metrics = ablation.run(p, a.name, root=box, keep=True)  # keep the student for the diagnostics
    train_minutes = (time.time() - t0) / 60
    student = box / CHECKPOINTS / "ablations" / a.name / f"seed{a.seed}" / "student"
    diag = diagnose.run(run_p, root=box, student_dir=student, out=box / REPORTS / "diagnostics",
                        samples=a.diagnose_samples)
    scores = metrics["seeds"][str(a.seed)] if "seeds" in metrics else metrics
    keep = ("fid", "fid_detail", "recall", "recall_detail", "precision_detail", "prompt_accuracy")
    shade = ("ink", "contrast", "ink_spread")
    summary = {"name": a.name, "overrides": overrides(a.set), "steps": a.steps, "batch_size": a.batch_size,
               "seed": a.seed, "minutes": round((time.time() - t0) / 60, 1), "train_minutes": round(train_minutes, 1),
               "scores": {f"{m}@{k}": scores.get(m if k == 1 else f"{m}@{k}") for k in (1, 2, 4) for m in keep},
               "denoise": {k: {m: v[m] for m in keep + shade} for k, v in diag["rows"].items()
                           if k.startswith(("denoise", "data"))},
               "trace": {k: {m: v[m] for m in keep + shade} for k, v in diag["rows"].items() if k.startswith("trace")}}
    write_json(box / "summary.json", summary)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
