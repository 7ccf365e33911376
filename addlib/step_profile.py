"""Where one ADD training step's time goes: ``python -m addlib.step_profile`` (a benchmark, not a test).

It runs the real ``distillation.train_add`` step on the embedded default's shapes (params.yaml, or a profile
merged over it) under ``torch.profiler`` and reads the step's labelled parts (``record_function`` regions in
objective.py and distillation.py): the backward-simulation calls, the student's forward, the teacher's solves
(c_img of the fakes and the ODE term), c_img, L_G (F and the heads on the fakes), the distillation target and
distance, the ODE distance, the student's backward and update, and the discriminator's features, heads, R1,
backward and update. It also counts the UNet evaluations (calls and rows) of the teacher and the student, and
times a teacher training step at its own batch size, so the cost of an ADD image can be read against the cost
of a teacher image (issue 37's "<= 3x" target).

Timing does not depend on the weights' values, so by default every network is randomly initialised at the
configured sizes (nothing needs to have been trained); ``--trained`` loads models/teacher and models/features.
Threads: the ``add.train.num_threads`` of the params, as the stage runs. The allocator is the process's own: run
it as ``LD_PRELOAD=$(python -m addlib.malloc) python -m addlib.step_profile`` to time what the stages' kernel runs
with (addlib/malloc.py); the output says which.

    python -m addlib.step_profile --steps 4 --out reports/benchmarks/add_step_cpu.json
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from . import config as C
from .config import checks
from .benchmark import synthetic_data
from .diffusion import NoiseSchedule
from .latent import PixelSpace, Teacher
from .malloc import loaded
from .paths import write_benchmark

# The labelled parts, in the order of the step, with what each holds. "add/step" is the whole step.
PARTS = {
    "add/backward_simulation": "student calls making the student's own earlier estimate (no grad)",
    "add/student_forward": "the student's x0 prediction (with graph)",
    "add/teacher_solve": "the teacher's DDIM solves from the fakes' inputs (c_img and the ODE term)",
    "add/c_img": "F on the reals (c_img and D's reals) and on the solves (c_img of the fakes)",
    "add/F_x_hat": "F on the student's x_hat, with graph (L_G, the perceptual distances, D's fakes)",
    "add/L_G": "the heads on the fakes (F too, when D augments them)",
    "add/distill_target": "the teacher's x0 of the re-noised student output",
    "add/distill_distance": "d(x_hat, target): F on both for the perceptual part",
    "add/ode_target_decode": "the solves as the ODE term's targets",
    "add/ode_distance": "d(x_hat, solve) for inputs with noise",
    "add/student_backward": "backward of the student's loss (through F, the heads, the distance)",
    "add/student_update": "gradient clipping, Adam, EMA",
    "add/D_features": "F on the reals and the fakes for L_D (no grad)",
    "add/D_heads": "the heads on real and fake features, hinge",
    "add/D_R1": "R1 on the heads' inputs (a double backward)",
    "add/D_backward": "backward of L_D",
    "add/D_update": "Adam on the heads",
}


def random_parts(params: C.Params, text_width: int) -> tuple[Teacher, torch.nn.Module]:
    """The default's teacher UNet and F backbone at their configured sizes, randomly initialised."""
    from .models import build_unet
    from .pretrain import build_vit

    torch.manual_seed(0)
    unet = build_unet(params.teacher.unet, params.data.resolution, params.data.channels, text_width)
    return (Teacher(unet, NoiseSchedule(params.teacher.schedule), PixelSpace(), "random"),
            build_vit(params.features, params.data.channels))


def discriminator(params: C.Params, backbone, width: int):
    """The default's discriminator on ``backbone`` (F), as the add stage builds it."""
    from .discriminator import Discriminator, FeatureNetwork

    f, dc = params.features, params.add.discriminator
    return Discriminator(FeatureNetwork(backbone, f.taps, f.tap_patch_embed), width, dc.c_text, dc.c_img,
                         dc.cmap_dim, dc.group_size)


def train_for(params: C.Params, steps: int, teacher: Teacher, disc, ds, cache) -> dict:
    """One ``train_add`` call of ``steps`` steps on the params' ADD settings, logging every step, saving nothing."""
    from .distillation import train_add

    add = params.add
    cfg = dataclasses.replace(add, train=dataclasses.replace(
        add.train, steps=steps, log_every=1, sample_every=0, checkpoint_every=10 ** 9))
    with tempfile.TemporaryDirectory() as tmp:
        return train_add(cfg, teacher, 0, ds, cache, disc, 0, Path(tmp) / "s", Path(tmp) / "c", progress=False,
                         save=False)


def profile_add(params: C.Params, teacher: Teacher, backbone, tokens: int, width: int, steps: int,
                warmup: int = 2) -> dict:
    """Seconds per step (median over ``steps`` steps after ``warmup`` steps, no profiler) and per labelled part
    (its share of ``steps`` profiled steps, times that)."""
    from torch.profiler import ProfilerActivity, profile

    n = params.add.train.batch_size
    disc = discriminator(params, backbone, width)
    ds, cache = synthetic_data(n * (warmup + steps), params.data.channels, params.data.resolution, tokens, width)

    def run(k: int, counters: bool = False) -> dict:
        calls_seen = []  # (teacher | student, rows) per UNet call
        if counters:  # the student is a copy made inside train_add: count it through the class's calls
            orig = type(teacher.unet).forward

            def counted(self, *a, **kw):
                who = "teacher" if self is teacher.unet else "student"
                calls_seen.append((who, len(a[0] if a else kw["sample"])))
                return orig(self, *a, **kw)
            type(teacher.unet).forward = counted
        try:
            out = train_for(params, k, teacher, disc, ds, cache)
        finally:
            if counters:
                type(teacher.unet).forward = orig
        out["unet_calls"] = calls_seen
        return out

    run(warmup)  # allocator, oneDNN primitives, lazy imports
    calls = run(1, counters=True)["unet_calls"]
    # The step's time from a run without the profiler (the profiler's per-op bookkeeping inflates regions of many
    # small ops, the UNet calls most); the profiled run gives each part's share, scaled to that time.
    timed = [1.0 / r["steps_per_second"] for r in run(steps)["history"]]
    step = statistics.median(timed)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else []),
                 record_shapes=False) as prof:
        run(steps)
    wall = time.perf_counter() - t0
    totals = defaultdict(float)
    for e in prof.key_averages():
        if e.key.startswith("add/"):
            totals[e.key] += e.cpu_time_total / 1e6  # seconds (includes the region's children)
    profiled_step = totals.pop("add/step") / steps
    parts = {k: totals.get(k, 0.0) / profiled_step * step / steps for k in PARTS}
    ops = sorted((e for e in prof.key_averages() if not e.key.startswith("add/")),
                 key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    unet = defaultdict(lambda: {"calls": 0, "rows": 0})
    for who, rows in calls:
        unet[who]["calls"] += 1
        unet[who]["rows"] += rows
    return {"seconds_per_step": step, "seconds_per_step_each": timed, "profiled_seconds_per_step": profiled_step,
            "images_per_second": n / step, "batch_size": n,
            "parts_seconds_per_step": parts, "unlabelled_seconds_per_step": step - sum(parts.values()),
            "unet_evaluations_per_step": dict(unet), "profiled_steps": steps, "wall_seconds": wall,
            "top_ops_self_seconds_per_step": {e.key: e.self_cpu_time_total / 1e6 / steps for e in ops}}


def time_teacher_step(params: C.Params, tokens: int, width: int, steps: int, warmup: int = 2) -> dict:
    """Seconds per teacher training step at the teacher's own batch size (random init, synthetic data)."""
    from .teacher import train_teacher

    tc = params.teacher.train
    cfg = dataclasses.replace(params.teacher, train=dataclasses.replace(
        tc, steps=warmup + steps, log_every=1, checkpoint_every=10 ** 9))
    ds, cache = synthetic_data(tc.batch_size * (warmup + steps), params.data.channels, params.data.resolution,
                               tokens, width)
    with tempfile.TemporaryDirectory() as tmp:
        out = train_teacher(cfg, 0, ds, cache, Path(tmp) / "t", Path(tmp) / "c", progress=False)
    step = statistics.median(1.0 / r["steps_per_second"] for r in out["history"][warmup:])
    return {"seconds_per_step": step, "images_per_second": tc.batch_size / step, "batch_size": tc.batch_size}


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def markdown(result: dict) -> str:
    """The profile as a table: each part's seconds per step and share of the step."""
    a = result["add"]
    step = a["seconds_per_step"]
    lines = [f"{result['device']}, {result['threads']} threads, {result['weights']} weights, "
             f"{result.get('allocator', 'system')} allocator.", "",
             f"ADD step at batch {a['batch_size']}: {step:.3f} s ({a['images_per_second']:.1f} images/s); "
             f"teacher step at batch {result['teacher']['batch_size']}: {result['teacher']['seconds_per_step']:.3f} s "
             f"({result['teacher']['images_per_second']:.1f} images/s); one ADD image costs "
             f"{result['add_image_cost_in_teacher_images']:.2f} teacher images",
             "", "Each part's seconds: its share of a profiled step times the unprofiled step's seconds.",
             "", "| part | s/step | share | what |", "|---|---:|---:|---|"]
    for k, what in PARTS.items():
        v = a["parts_seconds_per_step"][k]
        lines.append(f"| {k[4:]} | {v:.3f} | {100 * v / step:.1f}% | {what} |")
    lines.append(f"| (unlabelled) | {a['unlabelled_seconds_per_step']:.3f} | "
                 f"{100 * a['unlabelled_seconds_per_step'] / step:.1f}% | draws, batching, logging |")
    lines += ["", "UNet evaluations per step: " + ", ".join(
        f"{who} {v['calls']} calls / {v['rows']} rows" for who, v in sorted(a["unet_evaluations_per_step"].items()))]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m addlib.step_profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", default=None, help="a partial params file merged over --params")
    ap.add_argument("--trained", action="store_true", help="load models/teacher and models/features")
    ap.add_argument("--text-width", type=int, default=384, help="text states' width (MiniLM: 384)")
    ap.add_argument("--steps", type=int, default=4, help="profiled steps (after 2 warm-up steps)")
    ap.add_argument("--out", default=None, help="write the result as JSON here (and the table beside it, .md)")
    args = ap.parse_args(argv)
    try:
        params = checks.load(args.params, args.profile)
    except C.ConfigError as e:
        print(f"error: {e}")
        return 2
    if args.steps < 1:
        print("error: --steps must be at least 1")
        return 2
    tokens = params.text_encoder.max_length
    if args.trained:
        from .benchmark import checkpoint_parts
        teacher, backbone, tokens, width = checkpoint_parts(params)
    else:
        width = args.text_width
        teacher, backbone = random_parts(params, width)
    torch.set_num_threads(params.add.train.num_threads or torch.get_num_threads())
    add = profile_add(params, teacher, backbone, tokens, width, args.steps)
    print(f"add: {add['seconds_per_step']:.3f} s/step", flush=True)
    torch.set_num_threads(params.teacher.train.num_threads or torch.get_num_threads())
    teacher_row = time_teacher_step(params, tokens, width, args.steps)
    result = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name(),
              "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "params": args.params, "profile": args.profile,
              "weights": "trained" if args.trained else "random", "allocator": loaded() or "system",
              "add": add, "teacher": teacher_row,
              "add_image_cost_in_teacher_images": teacher_row["images_per_second"] / add["images_per_second"]}
    table = markdown(result)
    write_benchmark(args.out, result, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
