"""Stage diagnose: where the few-step student gains or loses quality (diagnostics.py), on the pipeline's
student or any saved one, scored like the evaluate stage's rows.

    python -m addlib.pipeline.diagnose [--student models/student] [--samples N] [--seed S] [--out DIR]

writes diagnostics.json (the metrics of every row), refinement.png (both measurements against the step /
timestep) and denoise.png (real, noised, student, teacher at the lowest student timestep).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from .. import config as C
from ..diagnostics import denoise_from_data, plot_refinement, refinement_trace, tone
from ..diffusion import student_schedule
from ..latent import load_teacher
from ..models import load_unet
from ..paths import MODELS, REPORTS, code_version, write_json
from ..plots import image_grid
from ..sampling import initial_noise, unet_input_shape
from ..stages import stage_params
from ..training import set_threads
from .common import load_prepared, sections
from .scoring import scoring


def run(p: C.Params, root: Path = Path("."), progress: bool = True, student_dir: Path | None = None,
        out: Path | None = None, samples: int | None = None, seed: int | None = None) -> dict:
    """Both measurements for a trained student (default: the pipeline's) against the pipeline's teacher, by
    default with as many samples and the same seed as the evaluate stage (evaluate.num_samples, evaluate.seed)."""
    student_dir = root / MODELS / "student" if student_dir is None else student_dir
    out = root / REPORTS / "diagnostics" if out is None else out
    samples = p.evaluate.num_samples if samples is None else samples
    seed = p.evaluate.seed if seed is None else seed
    set_threads(p.evaluate.num_threads)
    ds, cache = load_prepared(root)
    bundle = load_teacher(p.teacher, root / MODELS / "teacher")
    space, teacher = bundle.space, bundle.unet.eval()
    schedule = student_schedule(p.teacher.schedule, p.add.student_zero_terminal_snr)  # the student's
    student = load_unet(student_dir, space.factor).eval()
    sc = scoring(ds, cache, p.evaluators, p.evaluate, root)
    ts = list(p.add.student_timesteps)
    rows: dict[str, dict] = {}

    def score(key: str, images: torch.Tensor, prompts) -> None:
        rows[key] = {**sc.scorer(images, prompts), **tone(images)}
        r = rows[key]
        print(f"{key:32s} FID {r['fid']:7.3f}  P {r['precision']:.3f}  R {r['recall']:.3f}  "
              f"CLIP {r['clip_score']:.2f}  acc {r['prompt_accuracy']:.3f}  ink {r['ink']:.3f}", flush=True)

    # 1. The k-step sampler cut after each step (the evaluate stage's prompts and noise seed).
    prompts = sc.prompts_for(sc.ref, samples, seed, cache)
    noise = initial_noise(samples, unet_input_shape(teacher), seed)
    trace = refinement_trace(student, schedule, prompts.states, prompts.mask, noise, ts, seed=seed, space=space)
    for j, images in enumerate(trace):
        score(f"trace/{j + 1}/t{ts[j]}", images, prompts)
    # 2. One prediction from noised held-out images (the split the FID reference does not hold) at each student
    # timestep, student and teacher, each image with its own caption; "data" is those images unchanged (the floor).
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(sc.sel), generator=g)[:samples]
    real = sc.sel.pixels()[pick]
    own = sc.prompts_of([sc.sel.captions[i] for i in pick], sc.sel.labels[pick], cache)
    score("data", real, own)
    strips = {}
    for s in ts:
        for name, net in (("student", student), ("teacher", teacher)):
            own_schedule = schedule if name == "student" else bundle.schedule  # each on the schedule it was trained on
            noisy, pred = denoise_from_data(net, own_schedule, real, own.states, own.mask, s, seed=seed + s, space=space)
            score(f"denoise/{name}/t{s}", pred, own)
            strips[(name, s)] = (noisy[:12], pred[:12])

    out.mkdir(parents=True, exist_ok=True)
    result = {"student": str(student_dir), "samples": samples, "denoise_samples": len(real), "seed": seed,
              "student_timesteps": ts, "fid_features": sc.feat_name, "rows": rows}
    write_json(out / "diagnostics.json", result)
    C.write_resolved(sections(p, "teacher", "add", "evaluators", "evaluate"), out / "config.json",
                     student=str(student_dir), samples=samples, seed=seed, code_version=code_version(root))
    plot_refinement(rows, ts, out / "refinement.png",
                    f"where the student gains or loses quality ({samples} samples, {sc.feat_name} features)")
    s_low = min(ts)
    image_grid([real[:12], strips[("student", s_low)][0], strips[("student", s_low)][1],
                strips[("teacher", s_low)][1]], out / "denoise.png",
               row_labels=["held-out image", f"noised to t={s_low}", "student, 1 call", "teacher, 1 call"],
               title=f"one prediction from held-out images noised to t={s_low}")
    return result


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m addlib.pipeline.diagnose", description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", default="models/student", help="a saved student (diffusers UNet folder)")
    ap.add_argument("--samples", type=int, default=None, help="images per row (default: evaluate.num_samples)")
    ap.add_argument("--seed", type=int, default=None, help="default: evaluate.seed")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="reports/diagnostics")
    a = ap.parse_args(argv)
    if a.samples is not None and a.samples < 2:
        ap.error("--samples must be at least 2 (FID needs a covariance)")
    if not (Path(a.student) / "config.json").is_file():
        ap.error(f"--student {a.student}: no diffusers UNet there (config.json missing); run `dvc repro add` first")
    try:
        p = stage_params("diagnose", a.params)
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run(p, student_dir=Path(a.student), out=Path(a.out), samples=a.samples, seed=a.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
