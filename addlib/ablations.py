"""The paper's Table 1 ablations at this scale: which runs to train, and how their results become tables.

The ``ablations`` section of params.yaml (shape and checks in config/ablations.py):

- ``runs``: name -> {seeds, overrides}. dvc.yaml makes one stage per name (``ablation@<name>``, a ``foreach``),
  which trains one run per seed; ``overrides`` is a partial params file deep-merged over params.yaml (names
  only: ``{add: {distance: l1}}``, its ``add`` over ``ablations.add``; config.ablation_params). Every run uses
  one code path, the ``add`` stage's train_add, with the ablation budget (``steps``, ``batch_size``) in place of
  ``add.train``'s, and is scored
  at 1 student step like the ``evaluate`` stage's rows (pipeline/ablation.py).
- ``add``: the ADD settings every run's overrides change, Table 1's own copy of the main run's ``add`` (without
  its budget), so that an experiment on the main run does not rerun Table 1; :func:`departures` says where the
  two differ (the report prints it).
- ``tables``: sub-table -> row label -> run name. A run that several sub-tables share (the paper's default
  row: mse, exponential weighting, both conditionings, teacher init, one teacher step) is trained once.

``summarise`` turns the runs' metrics into one table per sub-table (mean and std over seeds), placed beside the
paper's numbers for the same rows (``PAPER``), with a sentence saying whether the FID ordering matches.
"""
from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from .columns import COSTS, TABLE1, TABLE1_DIGITS, header

if TYPE_CHECKING:  # annotations only
    from .config.ablations import AblationsConfig


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


def _flat(d: dict, pre: str = "") -> dict[str, Any]:
    return {k2: v2 for k, v in d.items()
            for k2, v2 in (_flat(v, f"{pre}{k}.").items() if isinstance(v, dict) and v else [(f"{pre}{k}", v)])}


def departures(table1_add: dict, add: dict) -> dict[str, tuple[Any, Any]]:
    """Where Table 1's ADD settings (``ablations.add``) differ from the main run's (``add``), the main run's budget
    (add.train.steps, batch_size, sample_every) aside: dotted key -> (Table 1's value, the main run's; None where
    one has no such key), in the main run's key order."""
    from .config import BUDGET

    ours, main = _flat(table1_add), _flat(add)
    budget = {f"train.{k}" for k in BUDGET}
    keys = [k for k in main if k not in budget] + [k for k in ours if k not in main]
    return {k: (ours.get(k), main.get(k)) for k in keys if ours.get(k) != main.get(k)}


def _ordering_matches(ours: dict[str, float], paper: dict[str, float]) -> bool | None:
    """Whether every pair of rows the paper orders strictly is ordered the same way here (None: < 2 rows)."""
    rows = [r for r in paper if r in ours]
    if len(rows) < 2:
        return None
    return all((ours[a] < ours[b]) == (paper[a] < paper[b])
               for i, a in enumerate(rows) for b in rows[i + 1:] if paper[a] != paper[b])


def summarise(cfg: AblationsConfig, results: dict[str, dict[int, dict[str, float]]],
              metrics: tuple[str, ...] = TABLE1 + COSTS) -> dict:
    """results: run -> seed -> metrics. Returns sub-table -> {rows: [...], sentence: str}; each row holds the
    label, the run, the number of seeds, mean and std of every metric, and the paper's FID where it has one."""
    out = {}
    for table, rows in cfg.tables.items():
        table_rows = []
        for label, run in rows.items():
            per_seed = list(results[run].values())
            row: dict[str, Any] = {"row": label, "run": run, "seeds": len(per_seed)}
            at_steps = sorted({key for r in per_seed for key in r if key.split("@")[0] in metrics and "@" in key})
            for m in list(metrics) + at_steps:  # metric@k: the same metric at k student steps (eval_steps)
                vals = [r[m] for r in per_seed if m in r]
                if vals:
                    row[m] = statistics.fmean(vals)
                    row[f"{m}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
            row["paper_fid"] = PAPER.get(table, {}).get(label)
            table_rows.append(row)
        ours = {r["row"]: r["fid"] for r in table_rows if "fid" in r}
        match = _ordering_matches(ours, PAPER.get(table, {}))
        pairs = _pairs({r["row"]: r for r in table_rows if "fid" in r}, PAPER.get(table, {}))
        if match is None:
            sentence = "The paper reports fewer than two of these rows, so there is no ordering to compare."
        else:
            best_here = min(ours, key=ours.get)
            compared = [r for r in PAPER[table] if r in ours]
            best_paper = min(compared, key=PAPER[table].get)
            sentence = ("The FID ordering of the rows the paper reports matches the paper's" if match else
                        "The FID ordering differs from the paper's") + \
                f" (best here: {best_here}; best in the paper: {best_paper}). " + _spread_sentence(pairs)
        out[table] = {"rows": table_rows, "ordering_matches_paper": match, "pairs": pairs, "sentence": sentence}
    return out


def _pairs(rows: dict[str, dict], paper: dict[str, float]) -> list[dict]:
    """Each pair of rows the paper orders strictly (better first, as the paper has it): whether the order holds
    here, and whether the gap of the FID means is larger than the seeds' spread, the sum of the two rows' standard
    deviations (None where a row has one seed: no spread to judge by)."""
    names = [r for r in paper if r in rows]
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if paper[a] == paper[b]:
                continue
            better, worse = (a, b) if paper[a] < paper[b] else (b, a)
            ra, rb = rows[better], rows[worse]
            spread = ra["fid_std"] + rb["fid_std"] if min(ra["seeds"], rb["seeds"]) > 1 else None
            gap = rb["fid"] - ra["fid"]
            out.append({"paper_better": better, "paper_worse": worse, "holds": gap > 0, "gap": gap,
                        "spread": spread, "beyond_spread": None if spread is None else abs(gap) > spread})
    return out


def _spread_sentence(pairs: list[dict]) -> str:
    """How the pairs stand against the seeds' spread, in one sentence."""
    judged = [q for q in pairs if q["beyond_spread"] is not None]
    if not judged:
        return "Some rows have one seed, so no pair is judged against the seeds' spread."
    close = [q for q in judged if not q["beyond_spread"]]
    tail = "" if len(judged) == len(pairs) else f" ({len(pairs) - len(judged)} with a one-seed row not judged)"
    if not close:
        return (f"Every pair's gap is larger than the seeds' spread (the sum of the two standard deviations){tail}: "
                f"the smallest, {min(abs(q['gap']) for q in judged):.2f} against "
                f"{min(judged, key=lambda q: abs(q['gap']))['spread']:.2f}.")
    names = "; ".join(f"{q['paper_better']} against {q['paper_worse']}, gap {q['gap']:+.2f} within "
                      f"{q['spread']:.2f}" for q in close)
    verb = "is" if len(close) == 1 else "are"
    return (f"{len(close)} of {len(judged)} pairs {verb} within the seeds' spread (the sum of the two standard "
            f"deviations), so their order is not settled here{tail}: {names}.")


TITLES = {"distance": "Distance metric d of the distillation loss", "loss": "Loss terms (Table 1d)",
          "features": "Discriminator feature network F (Table 1a)", "conditioning": "Discriminator conditioning (Table 1b)",
          "init": "Student initialisation (Table 1c)", "teacher_steps": "Teacher steps for the target (Table 1f)",
          "teacher_t": "Re-noising timestep of the distillation target",
          "c_img_noisy": "D's image condition for a fake from a noisy input (x_s, s < T-1)",
          "c_img_pure_noise": "D's image condition for a fake from pure noise (s = T-1)",
          "teacher_guidance": "The teacher's guidance w in the distillation target and the c_img / ODE solves",
          "student": "What trains: all of the student's weights or LoRA adapters (LoRA-ADD)",
          "multistep": "What trains the later calls of the multi-step student (x0 of an input with noise; the ODE term)",
          "recipe": "The default against the paper's recipe (every setting of profiles/paper.yaml at once)"}


def _cell(row: dict, m: str, digits: int) -> str:
    if m not in row:
        return "-"
    std = f" ± {row[f'{m}_std']:.{digits}f}" if row["seeds"] > 1 else ""
    return f"{row[m]:.{digits}f}{std}"


def _costs_differ(rows: list[dict]) -> bool:
    """Whether a sub-table compares what training holds (LoRA against full fine-tuning): its rows train
    different numbers of parameters. Only then does it show the cost columns."""
    return len({r.get("trainable_parameters") for r in rows}) > 1


def _steps_scored(rows: list[dict]) -> list[int]:
    """The student step counts besides 1 that every row was scored at (ablations.eval_steps, or a run's own):
    a column only where its rows compare."""
    scored = [{int(k.split("@")[1]) for k in r if k.startswith("fid@") and not k.endswith("_std")} for r in rows]
    return sorted(set.intersection(*scored)) if scored else []


def markdown(table1: dict) -> str:
    """Table 1 as markdown: one sub-table per ablation, mean ± std over seeds, the paper's FID beside (and,
    where the rows train different parameters, their count, the trained state's and the peak memory and the time
    per step;
    where they were scored at more step counts, FID in both spaces at each)."""
    parts = []
    for table, t in table1.items():
        costs = _costs_differ(t["rows"])
        steps = _steps_scored(t["rows"])
        columns = list(TABLE1) + (list(COSTS) if costs else [])
        extra_head = "".join(f" {header('fid')} {k} steps | {header('fid_detail')} {k} steps |" for k in steps)
        lines = [f"### {TITLES.get(table, table)}", "",
                 "| row | seeds | " + " | ".join(map(header, TABLE1)) + " | paper FID |"
                 + "".join(f" {header(c)} |" for c in columns[len(TABLE1):]) + extra_head,
                 "|---|---|" + "---|" * (len(columns) + 1 + 2 * len(steps))]
        for r in t["rows"]:
            paper = f"{r['paper_fid']:g}" if r.get("paper_fid") is not None else "-"
            cells = [f"{r.get(c, 0):,.0f}" if c == "trainable_parameters" else _cell(r, c, TABLE1_DIGITS[c])
                     for c in columns]
            extra = "".join(f" {_cell(r, f'fid@{k}', 2)} | {_cell(r, f'fid_detail@{k}', 2)} |" for k in steps)
            lines.append(f"| {r['row']} | {r['seeds']} | " + " | ".join(cells[:len(TABLE1)]) + f" | {paper} |"
                         + "".join(f" {c} |" for c in cells[len(TABLE1):]) + extra)
        parts.append("\n".join(lines + ["", t["sentence"], ""]))
    return "\n".join(parts)
