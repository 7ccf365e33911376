"""Stage consistency: the consistency-distillation baseline (consistency.py), from the same teacher on the same
images with ADD's budget (add.train); its grid at 1, 2 and 4 steps and its training curve."""
from __future__ import annotations

from pathlib import Path

from .. import config as C
from .. import data as D
from .. import plots
from ..consistency import SkipGrid, consistency_x0, train_consistency
from ..grids import save_student_grid
from ..latent import load_teacher
from ..paths import CHECKPOINTS, MODELS, REPORTS, code_version, write_json
from .common import load_prepared, prune_checkpoints, sections


def run(p: C.Params, root: Path = Path("."), progress: bool = True) -> dict:
    cfg, add_cfg = p.consistency, p.add
    ds, cache = load_prepared(root)
    cache = cache.extended(add_cfg.sample_prompts, p.text_encoder)
    teacher = load_teacher(p.teacher, root / MODELS / "teacher")
    out, model_dir = root / REPORTS / "consistency", root / MODELS / "consistency"
    trained = train_consistency(cfg, add_cfg.train, teacher, p.seed, ds.subset(D.TRAIN), cache, model_dir,
                                root / CHECKPOINTS / "consistency", live_dir=out / "live", progress=progress)
    student, history, trained_in = trained.pop("student"), trained.pop("history"), trained.pop("checkpoints")
    if not trained.pop("main_process"):
        return {}  # under `accelerate launch`: the main process writes the reports
    resolved = sections(p, "seed", "data", "text_encoder", "teacher", "add", "consistency")
    C.write_resolved(resolved, model_dir / "addlib_config.json", code_version=code_version(root))
    C.write_resolved(resolved, out / "config.json", code_version=code_version(root))
    grid = SkipGrid(teacher.schedule.T, cfg.solver_steps)
    save_student_grid(student, teacher.schedule, cache, cache.rows(add_cfg.sample_prompts).tolist(), add_cfg,
                      [1, 2, 4], out / "samples.png", "consistency student (LCM): 1, 2 and 4 steps, same noise per "
                      "column", space=teacher.space, timesteps=grid.sampling, x0_fn=consistency_x0(cfg, teacher.schedule))
    plots.loss_curve([r["step"] for r in history], {"loss": [r["loss"] for r in history]}, out / "loss.png",
                     "consistency distillation loss")
    last = history[-1] if history else {}
    metrics = {**trained, "budget": {"steps": add_cfg.train.steps, "batch_size": add_cfg.train.batch_size,
                                     "same_as": "add.train"},
               **{f"final_{k}": v for k, v in last.items() if k != "step"}}
    write_json(out / "metrics.json", metrics)
    prune_checkpoints(trained_in)
    return metrics
