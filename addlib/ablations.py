"""The paper's Table 1 ablations at this scale: which runs to train, and how their results become tables.

Not yet wired into the pipeline (params.yaml, the stages and dvc.yaml come with the ablation stages). The
shape of the future ``ablations`` section of params.yaml:

- ``runs``: name -> {seeds, overrides}. One training run per name and seed; ``overrides`` is a partial params
  file deep-merged over params.yaml (names only: ``{add: {distance: l1}}``). Every run uses one code path,
  the ``add`` stage's, with the ablation budget (``steps``, ``batch_size``) in place of ``add.train``'s.
- ``tables``: sub-table -> row label -> run name. A run that several sub-tables share (the paper's default
  row: mse, exponential weighting, both conditionings, teacher init, one teacher step) is trained once.

``summarise`` turns the runs' metrics into one table per sub-table (mean and std over seeds), placed beside the
paper's numbers for the same rows (``PAPER``), with a sentence saying whether the FID ordering matches.
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from .config import ConfigError, _check

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


@dataclasses.dataclass
class AblationRun:
    seeds: list[int]
    overrides: dict[str, Any]


@dataclasses.dataclass
class AblationsConfig:
    steps: int                          # ADD steps per run (the main run's are add.train.steps)
    batch_size: int
    eval_samples: int                   # 1-step samples scored per run and seed
    runs: dict[str, AblationRun]
    tables: dict[str, dict[str, str]]   # sub-table -> row label -> run name

    def validate(self, where: str) -> None:
        _check(self.steps >= 1 and self.batch_size >= 1 and self.eval_samples >= 2, f"{where}.steps",
               "steps, batch_size >= 1 and eval_samples >= 2")
        for name, run in self.runs.items():
            _check(len(run.seeds) >= 1 and len(set(run.seeds)) == len(run.seeds), f"{where}.runs.{name}.seeds",
                   "needs distinct seeds")
        for table, rows in self.tables.items():
            for label, run in rows.items():
                _check(run in self.runs, f"{where}.tables.{table}.{label}", f"no run named {run!r} in runs")
        unused = set(self.runs) - {r for rows in self.tables.values() for r in rows.values()}
        _check(not unused, f"{where}.runs", f"runs in no table: {', '.join(sorted(unused))}")


def parse(raw: dict, where: str = "ablations") -> AblationsConfig:
    """The ``ablations`` section -> AblationsConfig; a bad key or value is a one-line ConfigError."""
    from .config import from_dict

    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    shape = from_dict(_Shape, raw, where)
    if not isinstance(shape.runs, dict) or not shape.runs:
        raise ConfigError(f"{where}.runs: expected a mapping of run names")
    runs = {}
    for name, r in shape.runs.items():
        if not isinstance(r, dict) or set(r) - {"seeds", "overrides"} or "seeds" not in r:
            raise ConfigError(f"{where}.runs.{name}: expected {{seeds: [...], overrides: {{...}}}}")
        seeds = r["seeds"]
        if not isinstance(seeds, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds):
            raise ConfigError(f"{where}.runs.{name}.seeds: expected a list of integers")
        overrides = r.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where}.runs.{name}.overrides: expected a mapping (a partial params file)")
        runs[name] = AblationRun(list(seeds), overrides)
    if not isinstance(shape.tables, dict) or not all(isinstance(rows, dict) for rows in shape.tables.values()):
        raise ConfigError(f"{where}.tables: expected sub-table -> {{row label: run name}}")
    tables = {str(t): {str(label): str(run) for label, run in rows.items()} for t, rows in shape.tables.items()}
    out = AblationsConfig(shape.steps, shape.batch_size, shape.eval_samples, runs, tables)
    out.validate(where)
    return out


@dataclasses.dataclass
class _Shape:  # the keys of the section, checked by config.from_dict (runs/tables further by parse)
    steps: int
    batch_size: int
    eval_samples: int
    runs: Any
    tables: Any


def run_params(raw_params: dict, cfg: AblationsConfig, name: str, seed: int) -> dict:
    """The params of one ablation run: params.yaml with the run's overrides, its seed and the budget."""
    from .config import deep_merge

    out = deep_merge(raw_params, cfg.runs[name].overrides)
    out = deep_merge(out, {"seed": seed, "add": {"train": {"steps": cfg.steps, "batch_size": cfg.batch_size,
                                                           "sample_every": 0}}})
    return out


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
