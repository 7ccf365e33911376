"""The checks across params sections, and the whole file checked at once (the ``check`` stage, and
``python -m addlib.config check``): every section, the rules between them (a student timestep the teacher's
schedule has, step counts a student can sample with, ...), every ablation run's params, and the inputs each
names. A stage body parses only its own sections (:func:`addlib.config.loader.parse`); these rules ran first."""
from __future__ import annotations

from pathlib import Path

from ..timesteps import student_step_counts
from . import ablations, add, consistency, data, evaluate, evaluators, features, preference, teacher, text_encoder  # noqa: F401 (every section: this module's deps in dvc.yaml)
from .loader import Params, check, load_raw, parse_run, to_dict
from .loader import parse as parse_sections
from .teacher import TeacherConfig
from .text_encoder import TextEncoderConfig


def across(p: Params, where: str = "params") -> None:
    """Checks across sections (each section has checked itself); those between sections ``p`` does not hold
    are skipped."""

    def has(*names: str) -> bool:
        return all(getattr(p, n) is not None for n in names)

    if has("teacher", "text_encoder"):
        check(not (p.teacher.pretrained and p.text_encoder.attention_mask), f"{where}.text_encoder."
              "attention_mask", "must be false with a pretrained SD-class teacher: its UNet attends to every "
              "token, padding included (and its diffusers pipeline passes no mask)")
    if not has("teacher", "add"):
        return
    T = p.teacher.schedule.num_train_timesteps
    a = p.add
    check(max(a.student_timesteps) <= T - 1, f"{where}.add.student_timesteps",
          f"timesteps must be < num_train_timesteps={T}, got {a.student_timesteps}")
    check(a.teacher_t_range[1] <= T - 1, f"{where}.add.teacher_t_range",
          f"hi must be < num_train_timesteps={T}, got {a.teacher_t_range}")
    check(not (a.student_zero_terminal_snr and p.teacher.schedule.prediction_type == "epsilon"),
          f"{where}.add.student_zero_terminal_snr", "an epsilon-prediction student cannot give x0 from pure "
          "noise (alpha_T = 0 at zero terminal SNR): set it false, or use a v-prediction teacher")
    allowed = student_step_counts(a.student_timesteps, T)
    check(set(a.simulated_samplers) <= set(allowed) and len(a.student_timesteps) in a.simulated_samplers,
          f"{where}.add.simulated_samplers", f"must be step counts the student samples with "
          f"({', '.join(map(str, allowed))}), {len(a.student_timesteps)} among them (the only sampler that calls "
          f"it at every trained timestep), got {a.simulated_samplers}")
    if has("consistency"):
        check(T % p.consistency.solver_steps == 0, f"{where}.consistency.solver_steps",
              f"must divide num_train_timesteps={T}, got {p.consistency.solver_steps}")
    if has("preference", "consistency", "evaluate"):
        for c in p.preference.comparisons:
            for m in c:
                kind, k = m.split("@")
                k = int(k)
                check(kind != "add" or k in allowed, f"{where}.preference.comparisons", f"{m}: the ADD "
                      f"student samples with {allowed} steps")
                check(kind != "teacher" or k in p.evaluate.teacher_steps, f"{where}.preference.comparisons",
                      f"{m}: evaluate.teacher_steps {p.evaluate.teacher_steps} has no {k}-step row to take "
                      "the teacher's sampler and guidance from")
                check(kind != "consistency" or k <= p.consistency.solver_steps,
                      f"{where}.preference.comparisons", f"{m}: more steps than consistency.solver_steps")
    if has("evaluate"):
        bad = [k for k in p.evaluate.student_steps if k not in allowed]
        check(not bad, f"{where}.evaluate.student_steps", f"{bad} not possible: a student trained at "
              f"{a.student_timesteps} samples with {allowed} steps")
    if has("ablations"):
        for at, steps in [("eval_steps", p.ablations.eval_steps)] + [
                (f"runs.{n}.eval_steps", r.eval_steps) for n, r in p.ablations.runs.items() if r.eval_steps]:
            bad = [k for k in steps if k not in allowed]
            check(not bad, f"{where}.ablations.{at}", f"{bad} not possible: a student trained at "
                  f"{a.student_timesteps} samples with {allowed} steps")


def check_text_encoder_fits_teacher(text: TextEncoderConfig, teacher_cfg: TeacherConfig, where: str = "text_encoder"
                                    ) -> None:
    """An SDXL-class teacher's UNet takes both of its text towers' states and its pooled embedding: the text
    encoder must be an SDXL-class folder too (normally the teacher's own)."""
    if teacher_cfg.pretrained and (Path(teacher_cfg.pretrained) / "text_encoder_2").is_dir():
        check(text.path != "bundled" and (Path(text.path) / "text_encoder_2").is_dir(), f"{where}.path",
              f"the teacher {teacher_cfg.pretrained} is SDXL-class: use its own text encoders (set this to its folder)")


def parse(raw: dict, where: str = "params") -> Params:
    """The whole file: every section, the checks across them, and every ablation run's params (its overrides
    merged over the file) valid too."""
    p = parse_sections(raw, where)
    across(p, where)
    for name, run in p.ablations.runs.items():
        across(parse_run(raw, name, run.seeds[0], where), f"{where}:ablations.runs.{name}.overrides")
    return p


def load(path: str | Path = "params.yaml", profile: str | Path | None = None) -> Params:
    """Load, merge and check the whole file; raises ConfigError with a one-line message."""
    return parse(load_raw(path, profile), Path(path).name)


def check_inputs(p: Params, root: Path) -> None:
    """Everything the pipeline reads from outside it exists and fits (the image folder and each line of its
    metadata, the text encoder, a pretrained teacher and its schedule, F's weights, Inception and CLIP), each
    ablation run's own inputs (e.g. another F's weights) included."""
    p.data.check_inputs(root)
    p.text_encoder.check_inputs(root)
    p.teacher.check_inputs(root)
    check_text_encoder_fits_teacher(p.text_encoder, p.teacher)
    p.features.check_inputs(root)
    p.evaluate.check_inputs(root)
    for name, spec in p.ablations.runs.items():
        run = parse_run(to_dict(p), name, spec.seeds[0])
        run.teacher.check_inputs(root)
        run.features.check_inputs(root)
