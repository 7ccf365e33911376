"""How close the teacher's cheap solves come to a fine one: ``python -m addlib.solve_check --trained`` (issue 37's
benchmark for the solves behind c_img of the fakes and the ODE term; not a test).

From the inputs the ADD step solves from (pure noise at the first student timestep; at the others, held-out
digits noised to s, the paper's student input), each candidate solver (DDIM or DPM-Solver++(2M) with K steps
from pure noise, ceil(K (s + 1) / T) from s, as the step does) is compared with a fine DDIM solve of ``--fine``
steps of the same inputs and prompts: the RMS difference of the x0 estimates (in the teacher's space: pixels
in [-1, 1] for the embedded default), per
student timestep, and the teacher calls it takes. The cheaper solver is worth taking when its difference is no
larger than the default's.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from . import config as C
from .config import checks
from .paths import write_benchmark
from .targets import teacher_x0

DEFAULT_SOLVERS = ("ddim@8", "ddim@4", "dpmsolver++@4", "dpmsolver++@6", "dpmsolver++@8")


def solve_steps(k: int, s: torch.Tensor, T: int) -> torch.Tensor:
    """The step's rule: K steps from pure noise, ceil(K (s + 1) / T) from s (steps of the same size)."""
    return (k * (s + 1) + T - 1) // T


@torch.no_grad()
def compare(teacher, x0: torch.Tensor, states: torch.Tensor, mask: torch.Tensor, empty: tuple, timesteps: list[int],
            solvers: list[str], fine: int, guidance: float, seed: int = 0) -> dict:
    """Per student timestep and solver: the RMS difference of its x0 from the fine DDIM solve's, and its teacher
    calls per sample. ``x0``: images in [-1, 1] in the teacher's space (pixels here)."""
    sched = teacher.schedule
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(x0.shape, generator=g)
    n = len(x0)
    uncond = tuple(a.expand(n, *a.shape[1:]) for a in empty)
    rows = {}
    for s in timesteps:
        t = torch.full((n,), s)
        x_s = eps if s == sched.T - 1 else sched.add_noise(x0, eps, t)
        reference = teacher_x0(teacher.unet, sched, x_s, t, (states, mask), uncond, guidance,
                               solve_steps(fine, t, sched.T), "ddim")
        for name in solvers:
            solver, k = name.split("@")
            steps = solve_steps(int(k), t, sched.T)
            out = teacher_x0(teacher.unet, sched, x_s, t, (states, mask), uncond, guidance, steps, solver)
            rows[f"{name}/t{s}"] = {"solver": solver, "K": int(k), "s": s, "calls": int(steps[0]),
                                    "rms_to_fine": float((out - reference).pow(2).mean().sqrt())}
    return rows


def markdown(result: dict) -> str:
    ts = sorted({r["s"] for r in result["rows"].values()}, reverse=True)
    names = list(dict.fromkeys(k.split("/")[0] for k in result["rows"]))
    lines = [f"RMS difference of the x0 estimate from a {result['fine']}-step DDIM solve (pixels in [-1, 1]), "
             f"{result['samples']} held-out digits; teacher calls per sample in brackets", "",
             "| solver | " + " | ".join(f"from t = {s}" for s in ts) + " |", "|---|" + "---|" * len(ts)]
    for name in names:
        cells = [result["rows"][f"{name}/t{s}"] for s in ts]
        lines.append(f"| {name.replace('@', ', K = ')} | " + " | ".join(f"{c['rms_to_fine']:.4f} ({c['calls']})"
                                                                      for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m addlib.solve_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", default=None, help="a partial params file merged over --params")
    ap.add_argument("--root", default=".", help="the project whose data/processed and models/teacher are read")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--fine", type=int, default=100, help="steps of the reference DDIM solve from pure noise")
    ap.add_argument("--solvers", nargs="+", default=list(DEFAULT_SOLVERS), help="solver@K, e.g. dpmsolver++@4")
    ap.add_argument("--out", default=None, help="write the result as JSON here (and the table beside it, .md)")
    args = ap.parse_args(argv)
    try:
        p = checks.load(Path(args.root) / args.params, args.profile)
        for name in args.solvers:
            solver, _, k = name.partition("@")
            if solver not in ("ddim", "dpmsolver++") or not k.isdigit() or int(k) < 1:
                raise C.ConfigError(f"--solvers: {name!r} is not solver@K with solver ddim or dpmsolver++")
        if args.samples < 1 or args.fine < 1:
            raise C.ConfigError("--samples and --fine must be at least 1")
    except C.ConfigError as e:
        print(f"error: {e}")
        return 2
    from .data import HOLDOUT, Dataset, to_float
    from .latent import load_teacher
    from .paths import DATA_DIR
    from .text import TextCache

    root = Path(args.root)
    ds, cache = Dataset.load(root / DATA_DIR), TextCache.load(root / DATA_DIR)
    held = ds.subset(HOLDOUT)
    idx = torch.arange(min(args.samples, len(held.images)))
    x0 = to_float(held.images[idx])
    states, mask, _ = cache[cache.rows([held.captions[i] for i in idx.tolist()])]
    teacher = load_teacher(p.teacher, root / "models" / "teacher")
    teacher.unet.eval()
    torch.set_num_threads(p.add.train.num_threads or torch.get_num_threads())
    rows = compare(teacher, teacher.space.encode(x0), states, mask,
                   tuple(a for a in cache[torch.tensor([0])][:2]), list(p.add.student_timesteps), args.solvers,
                   args.fine, p.add.discriminator.ode_guidance)
    result = {"samples": len(idx), "fine": args.fine, "guidance": p.add.discriminator.ode_guidance, "rows": rows}
    table = markdown(result)
    write_benchmark(args.out, result, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
