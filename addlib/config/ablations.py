"""The ``ablations`` section: the paper's Table 1 at this scale (runs, their overrides and seeds, tables)."""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

from .add import ADDConfig
from .loader import BUDGET, check, from_dict, with_table1_budget


def _check_eval_steps(steps: list[int], where: str) -> None:
    check(1 in steps and len(set(steps)) == len(steps), where,
          f"must hold 1 (Table 1 is at one step) and no repeats, got {steps}")


@dataclasses.dataclass
class AblationRun:
    seeds: list[int]            # one training run per seed (reported as mean and std)
    overrides: dict[str, Any]   # a partial params file deep-merged over params.yaml (its add over ablations.add)
    eval_steps: Optional[list[int]] = None   # this run's step counts scored, in place of ablations.eval_steps

    def validate(self, where: str) -> None:
        check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), f"{where}.seeds",
              "needs at least one seed, all distinct")
        if self.eval_steps is not None:
            _check_eval_steps(self.eval_steps, f"{where}.eval_steps")
        check(not {"seed", "ablations"} & set(self.overrides), f"{where}.overrides",
              "may not set 'seed' (use seeds) or 'ablations'")


@dataclasses.dataclass
class AblationsConfig:
    """The paper's Table 1 at this scale (stages ``ablation@<run>``; see addlib/ablations.py)."""
    steps: int                  # ADD steps per run, in place of add.train.steps (the budget)
    batch_size: int             # in place of add.train.batch_size
    eval_samples: int           # samples scored per run, seed and step count (evaluate's reference and seed)
    eval_steps: list[int]       # student step counts scored: [1] is Table 1; [1, 2, 4] shows which variant
                                # improves with steps (columns FID@2, FID@4, ...); a run may set its own
    add: dict[str, Any]         # Table 1's ADD settings, which every run's overrides change: an add section without
                                # the main run's budget (train.steps, batch_size, sample_every). Its own copy, so an
                                # experiment on the main run's add does not rerun Table 1 (the report says where the
                                # two differ); a profile's add applies to both (config.apply_profile)
    runs: dict[str, AblationRun]
    tables: dict[str, dict[str, str]]   # sub-table -> row label -> run name (a run may serve several rows)

    def validate(self, where: str) -> None:
        check(self.steps >= 1 and self.batch_size >= 1, f"{where}.steps", "steps and batch_size must be >= 1")
        check(self.eval_samples >= 2, f"{where}.eval_samples", "must be >= 2")
        _check_eval_steps(self.eval_steps, f"{where}.eval_steps")
        train = self.add.get("train") if isinstance(self.add.get("train"), dict) else {}
        budget = [k for k in BUDGET if k in train]
        check(not budget, f"{where}.add.train.{budget[0] if budget else ''}", "Table 1's budget is ablations.steps and "
              "ablations.batch_size (no sample grids while training): leave it out of ablations.add")
        self.add_config(where)
        for name in self.runs:
            check(bool(re.fullmatch(r"[A-Za-z0-9_.-]+", name)), f"{where}.runs.{name}",
                  "run names become stage and folder names: letters, digits, '_', '.', '-' only")
        for table, rows in self.tables.items():
            for label, run in rows.items():
                check(run in self.runs, f"{where}.tables.{table}.{label}", f"no run named {run!r} in runs")
        unused = set(self.runs) - {r for rows in self.tables.values() for r in rows.values()}
        check(not unused, f"{where}.runs", f"runs in no table: {', '.join(sorted(unused))}")

    def add_config(self, where: str = "ablations") -> ADDConfig:
        """Table 1's ADD settings, typed, with Table 1's budget (and no sample grids while training)."""
        return from_dict(ADDConfig, with_table1_budget(self.add, self.steps, self.batch_size), f"{where}.add")

    def eval_steps_of(self, run: str) -> list[int]:
        """The student step counts run ``run`` is scored at: its own eval_steps, else the section's."""
        return self.runs[run].eval_steps or self.eval_steps
