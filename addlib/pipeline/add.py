"""Stage add: ADD training (distillation.py), the student from the teacher, the discriminator on F, the
distillation target from the teacher; then the student as a diffusers pipeline (export.py), its grid and the
training curves."""
from __future__ import annotations

from pathlib import Path

from .. import config as C
from .. import plots
from ..diffusion import student_schedule
from ..export import export
from ..grids import save_student_grid
from ..paths import CHECKPOINTS, MODELS, REPORTS, code_version, write_json
from .common import prune_checkpoints, sections
from .student import RESOLVED, student_inputs, train_student


def run(p: C.Params, root: Path = Path("."), progress: bool = True) -> dict:
    cfg = p.add
    ds, cache, teacher = student_inputs(p, root)
    out, model_dir = root / REPORTS / "add", root / MODELS / "student"
    trained = train_student(p, ds, cache, teacher, root / MODELS / "features", model_dir, root / CHECKPOINTS / "add",
                            progress, live_dir=out / "live", grid_dir=out / "progress")
    student, history, trained_in = trained.pop("student"), trained.pop("history"), trained.pop("checkpoints")
    if not trained.pop("main_process"):
        return {}  # under `accelerate launch`: the main process writes the reports
    resolved = sections(p, *RESOLVED)
    C.write_resolved(resolved, model_dir / "addlib_config.json", code_version=code_version(root))
    C.write_resolved(resolved, out / "config.json", code_version=code_version(root))
    export(model_dir, root / MODELS / "student-pipeline")  # loads with diffusers' from_pretrained
    save_student_grid(student, student_schedule(p.teacher.schedule, cfg.student_zero_terminal_snr), cache,
                      cache.rows(cfg.sample_prompts).tolist(), cfg, [1, 2, 4], out / "samples.png",
                      "ADD student: 1, 2 and 4 steps, same noise per column", space=teacher.space)
    steps = [r["step"] for r in history]
    curve = lambda keys: {k: [r.get(k, float("nan")) for r in history] for k in keys}  # noqa: E731
    plots.loss_curve(steps, curve(("loss_G", "loss_distill", "loss_D")), out / "losses.png", "ADD losses", logy=False)
    plots.loss_curve(steps, curve(("logits_real", "logits_fake")), out / "logits.png",
                     "discriminator logits (sum over heads of the token mean)", logy=False)
    last = history[-1] if history else {}
    metrics = {**trained, **{f"final_{k}": v for k, v in last.items() if k != "step"}}
    write_json(out / "metrics.json", metrics)
    prune_checkpoints(trained_in)
    return metrics
