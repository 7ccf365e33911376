"""Sample a trained student from the command line, for people who never open Python: one PNG grid, a row per
prompt and a block of columns per step count, the same noise in every block (a column shows one sample with
more steps).

    python -m addlib.sample --model models/student --prompt "the number 3" --prompt "seven" \\
        --steps 1 2 4 --per-prompt 4 --seed 0 --out samples.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m addlib.sample", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/student", help="a saved student (the add stage's models/student)")
    ap.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for more rows)")
    ap.add_argument("--steps", type=int, nargs="+", default=[1], help="student step counts, one block each")
    ap.add_argument("--per-prompt", type=int, default=4, help="samples per prompt (columns per block)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the noise (the same in every block)")
    ap.add_argument("--out", default="samples.png", help="the PNG grid to write")
    a = ap.parse_args(argv)
    model = Path(a.model)
    for f in ("config.json", "addlib_config.json"):
        if not (model / f).is_file():
            ap.error(f"--model {model}: no trained student there ({f} missing); run `dvc repro add` first")
    if a.per_prompt < 1 or a.seed < 0:
        ap.error("--per-prompt must be >= 1 and --seed >= 0")

    from .plots import block_grid
    from .export import ADDSampler
    from .sampling import student_step_counts

    sampler = ADDSampler.from_pretrained(model)
    allowed = student_step_counts(sampler.student_timesteps, sampler.T)
    bad = [k for k in a.steps if k not in allowed]
    if bad:
        ap.error(f"--steps {bad}: this student (timesteps {sampler.student_timesteps}) samples with {allowed} steps")
    prompts = [p for p in a.prompt for _ in range(a.per_prompt)]
    blocks = [(f"{k} step{'s' if k > 1 else ''}", sampler(prompts, steps=k, seed=a.seed)) for k in a.steps]
    out = block_grid(blocks, a.prompt, a.per_prompt, Path(a.out), f"{model}: seed {a.seed}")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
