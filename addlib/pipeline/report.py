"""Stage report: Table 1 from the ablation runs' metrics; notebooks/report.ipynb lays out the page from every
stage's outputs (report.py's tables), and :func:`finish` renders it, with each stage's executed notebook,
to reports/html without code."""
from __future__ import annotations

import json
from pathlib import Path

from .. import ablations as A
from .. import config as C
from .. import figures
from ..paths import REPORTS, executed_notebook, write_json
from ..report import render_site

# The stages whose executed notebooks get a page, in pipeline order (then one page per ablation run).
PAGES = ["prepare", "teacher", "features", "add", "consistency", "evaluators", "solvers", "evaluate", "preference"]


def run(p: C.Params, root: Path = Path("."), progress: bool = True) -> dict:
    """Table 1 (reports/ablations/table1.json, reports/tables/table1.md and its figure)."""
    cfg = p.ablations
    results = {}
    for name in cfg.runs:
        m = json.loads((root / REPORTS / "ablations" / "runs" / name / "metrics.json").read_text())
        results[name] = {int(k): v for k, v in m["seeds"].items()}
    table1 = A.summarise(cfg, results)
    write_json(root / REPORTS / "ablations" / "table1.json", table1)
    tables = root / REPORTS / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    (tables / "table1.md").write_text(A.markdown(table1))
    figures.ablation_bars(table1, root / REPORTS / "ablations" / "table1.png",
                        f"Table 1 at this scale: 1-step FID per ablation row ({cfg.steps} steps, "
                        f"batch {cfg.batch_size}; bars: mean, whiskers: std over seeds)")
    return table1


def pages(p: C.Params, root: Path = Path(".")) -> dict[str, Path]:
    """Page name -> executed notebook of every stage before the report, in pipeline order."""
    out = {s: root / executed_notebook(s) for s in PAGES}
    out.update({f"ablation-{name}": root / executed_notebook("ablation", name) for name in p.ablations.runs})
    return out


def finish(executed: Path, p: C.Params, root: Path = Path(".")) -> None:
    """After the notebook ran (the page is the executed notebook itself): render the site."""
    render_site(executed, pages(p, root), root / REPORTS / "html")
