"""Stage teacher: train the teacher (or, with ``teacher.pretrained``, take a local diffusers checkpoint as it
is), save it under models/teacher, and draw the sample grid (one row per prompt)."""
from __future__ import annotations

import time
from pathlib import Path

from .. import config as C
from .. import data as D
from .. import plots
from ..latent import load_teacher
from ..models import count_parameters
from ..paths import CHECKPOINTS, MODELS, REPORTS, code_version, write_json
from ..sampling import initial_noise, sample_teacher, unet_input_shape
from ..text import TextEncoder
from ..teacher import train_teacher
from .common import load_prepared, prune_checkpoints, sections


def run(p: C.Params, root: Path = Path("."), progress: bool = True) -> dict:
    cfg = p.teacher
    ds, cache = load_prepared(root)
    out = root / REPORTS / "teacher"
    model_dir = root / MODELS / "teacher"
    trained_in = None
    if cfg.pretrained:
        model_dir.mkdir(parents=True, exist_ok=True)
        teacher = load_teacher(cfg, model_dir)
        summary = {"pretrained": cfg.pretrained, "parameters": count_parameters(teacher.unet)}
        plots.note_figure(out / "loss.png", f"The teacher was not trained here: {cfg.pretrained}")
        # The stage's declared training log, empty: no steps were taken.
        write_json(out / "live" / "metrics.json", {})
        (out / "live" / "plots" / "metrics" / "train").mkdir(parents=True, exist_ok=True)
        (out / "live" / "plots" / "metrics" / "train" / "loss.tsv").write_text("step\tloss\n")
    else:
        summary = train_teacher(cfg, p.seed, ds.subset(D.TRAIN), cache, model_dir, root / CHECKPOINTS / "teacher",
                                live_dir=out / "live", progress=progress)
        summary.pop("unet")
        history, trained_in = summary.pop("history"), summary.pop("checkpoints")
        if not summary.pop("main_process"):
            return {}  # under `accelerate launch`: the main process writes the reports
        plots.loss_curve([r["step"] for r in history], {"denoising loss": [r["loss"] for r in history]},
                         out / "loss.png", "teacher training loss")
        teacher = load_teacher(cfg, model_dir)
    resolved = sections(p, "seed", "data", "text_encoder", "teacher")
    C.write_resolved(resolved, model_dir / "addlib_config.json", code_version=code_version(root))
    # Sample grid: fixed seeds, one row per prompt.
    s = cfg.sample
    encoder = TextEncoder.from_config(p.text_encoder)
    states, mask, _ = encoder(s.prompts)
    empty_states, empty_mask, _ = encoder([""])
    rep = lambda a: a.repeat_interleave(s.per_prompt, 0)  # noqa: E731
    noise = initial_noise(len(s.prompts) * s.per_prompt, unet_input_shape(teacher.unet), s.seed)
    t0 = time.perf_counter()
    x = sample_teacher(teacher.unet.eval(), teacher.schedule, rep(states), rep(mask), (empty_states, empty_mask),
                       noise, s.sampler, s.steps, s.guidance_scale, space=teacher.space)
    sample_seconds = time.perf_counter() - t0
    rows = [list(x[i * s.per_prompt:(i + 1) * s.per_prompt]) for i in range(len(s.prompts))]
    plots.image_grid(rows, out / "samples.png", row_labels=s.prompts,
                     title=f"teacher, {s.sampler} {s.steps} steps, guidance {s.guidance_scale:g}")
    metrics = {**summary, "grid_sample_seconds": sample_seconds}
    write_json(out / "metrics.json", metrics)
    C.write_resolved(resolved, out / "config.json", code_version=code_version(root))
    if trained_in is not None:
        prune_checkpoints(trained_in)
    return metrics
