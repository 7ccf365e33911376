"""tcmalloc against the system's allocator, timed as a stage trains: ``python -m addlib.malloc_check`` (a benchmark).

Each measurement is a fresh process (the allocator is chosen when a process starts; addlib/malloc.py) that makes
one ``train_add`` call of ``--steps`` steps at the default's sizes (random weights, as in step_profile) and then
one teacher training call, as the add and teacher stages do; the two allocators alternate, ``--pairs`` times, so
the machine's drift between sittings (docs/cost.md) falls on both. A step's seconds are the median over the steps
after ``--settle``; the process's CPU seconds per ADD step are reported too, as this machine's wall time also moves
with its neighbours.

    python -m addlib.malloc_check --steps 30 --pairs 3 --out reports/benchmarks/allocator_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from .malloc import find_tcmalloc, loaded
from .paths import write_benchmark


def measure(params_file: str, profile: str | None, steps: int, settle: int, text_width: int) -> dict:
    """One process's timings: ADD steps of one train_add call, then teacher steps of one train_teacher call."""
    import torch

    from .benchmark import synthetic_data
    from .config import checks
    from .step_profile import discriminator, random_parts, time_teacher_step, train_for

    params = checks.load(params_file, profile)
    torch.set_num_threads(params.add.train.num_threads or torch.get_num_threads())
    teacher, backbone = random_parts(params, text_width)
    disc = discriminator(params, backbone, text_width)
    tokens = params.text_encoder.max_length
    ds, cache = synthetic_data(params.add.train.batch_size * steps, params.data.channels, params.data.resolution,
                               tokens, text_width)
    cpu = time.process_time()
    out = train_for(params, steps, teacher, disc, ds, cache)
    cpu = time.process_time() - cpu
    each = [1.0 / r["steps_per_second"] for r in out["history"]]
    torch.set_num_threads(params.teacher.train.num_threads or torch.get_num_threads())
    teach = time_teacher_step(params, tokens, text_width, max(1, steps - settle), warmup=settle)
    return {"allocator": loaded() or "system", "add_seconds_per_step": statistics.median(each[settle:]),
            "add_cpu_seconds_per_step": cpu / steps, "teacher_seconds_per_step": teach["seconds_per_step"],
            "add_batch_size": params.add.train.batch_size, "teacher_batch_size": teach["batch_size"]}


def markdown(result: dict) -> str:
    rows = result["runs"]
    lines = [f"{result['device']}; {result['steps']} ADD steps per process (median after {result['settle']}), "
             f"the allocators alternating.", "",
             "| allocator | ADD s/step | ADD CPU s/step | teacher s/step |", "|---|---:|---:|---:|"]
    lines += [f"| {r['allocator']} | {r['add_seconds_per_step']:.3f} | {r['add_cpu_seconds_per_step']:.3f} | "
              f"{r['teacher_seconds_per_step']:.3f} |" for r in rows]
    for name, s in result["summary"].items():
        lines.append(f"| **median, {name}** | **{s['add_seconds_per_step']:.3f}** | "
                     f"**{s['add_cpu_seconds_per_step']:.3f}** | **{s['teacher_seconds_per_step']:.3f}** |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m addlib.malloc_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", default=None, help="a partial params file merged over --params")
    ap.add_argument("--steps", type=int, default=30, help="ADD steps (and teacher steps) per process")
    ap.add_argument("--settle", type=int, default=10, help="steps left out of the median (allocator warm-up)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--text-width", type=int, default=384)
    ap.add_argument("--out", default=None, help="write the result as JSON here (and the table beside it, .md)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps <= args.settle or args.settle < 0 or args.pairs < 1:
        print("error: need --steps > --settle >= 0 and --pairs >= 1")
        return 2
    if args.child:
        print(json.dumps(measure(args.params, args.profile, args.steps, args.settle, args.text_width)))
        return 0
    lib = find_tcmalloc()
    if lib is None:
        print("error: no tcmalloc on this machine to compare with (python -m addlib.malloc says where it looks)")
        return 2
    base = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    cmd = [sys.executable, "-m", "addlib.malloc_check", "--child", "--params", args.params, "--steps",
           str(args.steps), "--settle", str(args.settle), "--text-width", str(args.text_width)]
    cmd += ["--profile", args.profile] if args.profile else []
    runs = []
    for pair in range(args.pairs):
        for env in (base, base | {"LD_PRELOAD": str(lib)}):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-2000:])
                return 1
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"pair {pair + 1}/{args.pairs}: {runs[-1]['allocator']} {runs[-1]['add_seconds_per_step']:.3f} s "
                  f"per ADD step", flush=True)
    keys = ("add_seconds_per_step", "add_cpu_seconds_per_step", "teacher_seconds_per_step")
    summary = {name: {k: statistics.median(r[k] for r in runs if (r["allocator"] == "system") == (name == "system"))
                      for k in keys} for name in ("system", "tcmalloc")}
    from .step_profile import cpu_name
    result = {"device": cpu_name(), "cpu_count": os.cpu_count(), "steps": args.steps, "settle": args.settle,
              "params": args.params, "profile": args.profile, "runs": runs, "summary": summary}
    write_benchmark(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
