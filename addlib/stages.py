"""The runner DVC calls: ``python -m addlib.stages <stage> [--run NAME]`` is every stage's command.

Before any compute it parses the params sections the stage declares in dvc.yaml and checks the stage's inputs
(a bad key, value or missing folder is a one-line error and exit code 2); the ``check`` stage, first in dvc.yaml,
checks the whole file and every input it names (pipeline/check.py). Then it runs the stage:
``notebooks/<stage>.ipynb`` through papermill on the project's registered Jupyter kernel, the notebook getting
only the params file's path (and the run, for ``ablation``) and turning it into typed params with one call,
:func:`stage_params`; a stage without a notebook (``diagnose``) runs its body in this process. If the stage fails,
its outputs are removed (so nothing half-written looks valid) and the executed notebook is kept as
``reports/executed/<stage>.failed.ipynb``.

What a stage declares lives in dvc.yaml only: its params sections (a stage body gets typed params holding just
those sections, the others None, so it cannot read params DVC does not track for it) and its outputs (removed
before and after a failed run). The bodies are ``addlib/pipeline/<stage>.py``, imported only when run.
"""
from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path

from . import config as C
from .paths import DATA_DIR, MODELS, REPORTS, executed_notebook

KERNEL = "addlib"
RUNNER = "python -m addlib.stages"


def dvc_stages(root: Path = Path(".")) -> dict[str, dict]:
    """The stages of dvc.yaml that this runner runs (name -> spec; a foreach stage's spec is its ``do``)."""
    import yaml

    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return {name: spec.get("do", spec) | {"foreach": "foreach" in spec} for name, spec in stages.items()
            if spec.get("do", spec)["cmd"].startswith(RUNNER)}


def stage_sections(stage: str, root: Path = Path(".")) -> list[str]:
    """The params.yaml sections a stage declares in dvc.yaml (``add.student_timesteps`` -> ``add``)."""
    spec = dvc_stages(root)[stage]
    return list(dict.fromkeys(str(p).split(".")[0] for p in spec.get("params", [])))


def stage_params(stage: str, params_file: str | Path = "params.yaml", root: Path = Path(".")) -> C.Params:
    """What a stage body gets: the sections of params.yaml the stage declares, parsed and checked (the others
    None, and their schemas not even imported). The one call a stage notebook makes with the path papermill
    gives it. Opened in JupyterLab, a notebook runs in notebooks/: then the working directory moves to the
    project root (the folder holding dvc.yaml), where the stage bodies and the notebook's own cells read and
    write."""
    if not (root / "dvc.yaml").is_file():
        found = next((d for d in Path.cwd().resolve().parents if (d / "dvc.yaml").is_file()), None)
        if found is None:
            raise C.ConfigError(f"no dvc.yaml in {Path.cwd()} or above it: run from the project")
        os.chdir(found)
        print(f"working in the project root, {found}")
    return C.parse(C.load_raw(root / params_file), Path(params_file).name, sections=stage_sections(stage, root))


def stage_outputs(stage: str, root: Path, key: str | None = None) -> list[Path]:
    """The stage's declared outs, metrics and plots, read from dvc.yaml (the one place they are listed);
    for a ``foreach`` stage, those of the instance ``key`` (``${key}`` filled in)."""
    spec = dvc_stages(root)[stage]
    paths = []
    for k in ("outs", "metrics", "plots"):
        for item in spec.get(k, []):
            path = item if isinstance(item, str) else next(iter(item))
            paths.append(root / (path.replace("${key}", key) if key is not None else path))
    return paths


def remove_outputs(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def ensure_kernel() -> None:
    """Register this environment's Python as the 'addlib' Jupyter kernel if it is missing or stale."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL, display_name="Python (addlib)", prefix=sys.prefix)


def check_stage(stage: str, params_path: Path, root: Path, key: str | None = None) -> C.Params:
    """Check the stage's params sections and inputs (the ``check`` stage: the whole file and everything it
    names); return the typed params the stage body gets."""
    raw = C.load_raw(params_path)
    if stage == "check":
        body("check").check_all(raw, params_path.name, root)
    p = C.parse(raw, params_path.name, sections=stage_sections(stage, root))
    if stage == "ablation":
        if key not in p.ablations.runs:
            raise C.ConfigError(f"ablations.runs: no run named {key!r} (runs: {', '.join(p.ablations.runs)})")
        for seed in p.ablations.runs[key].seeds:  # the run's own params, as its body will parse them
            C.parse_run(raw, key, seed, params_path.name, sections=stage_sections(stage, root))
    if stage == "report":
        missing = [run for run in p.ablations.runs
                   if not (root / REPORTS / "ablations" / "runs" / run / "metrics.json").is_file()]
        if missing or not (root / REPORTS / "metrics" / "evaluate.json").is_file():
            raise C.ConfigError(f"report: results missing ({', '.join(missing) or 'evaluate'}); "
                                f"run the stages before 'report' first (dvc repro)")
    elif stage == "prepare":
        p.data.check_inputs(root)
        p.text_encoder.check_inputs(root)
    elif stage != "check":
        if stage in ("teacher", "add", "solvers", "evaluate", "ablation", "diagnose"):
            p.teacher.check_inputs(root)
        if stage in ("features", "ablation"):
            p.features.check_inputs(root)
        if stage in ("solvers", "evaluate", "ablation", "diagnose"):
            p.evaluate.check_inputs(root)
        needed = {"add": ("teacher", "features"), "solvers": ("teacher", "evaluators"),
                  "evaluate": ("teacher", "student", "evaluators"),
                  "diagnose": ("teacher", "student", "evaluators"),
                  "ablation": ("teacher", "features", "evaluators")}.get(stage, ())
        for name in needed:
            if not (root / MODELS / name).is_dir():
                raise C.ConfigError(f"{root / MODELS / name}: not found; run the stages before {stage!r} "
                                    f"first (dvc repro)")
        missing = [f for f in (root / DATA_DIR / "dataset.safetensors", root / DATA_DIR / "text_cache.safetensors")
                   if not f.exists()]
        if missing:
            raise C.ConfigError(f"{missing[0]}: not found; run the 'prepare' stage first (dvc repro)")
    return p


def body(stage: str):
    """The stage's module, addlib/pipeline/<stage>.py."""
    return importlib.import_module(f"addlib.pipeline.{stage}")


def call_body(stage: str, p: C.Params, root: Path, key: str | None):
    run = body(stage).run
    return run(p, key, root=root) if key is not None else run(p, root=root)


def run_stage(stage: str, params_path: Path = Path("params.yaml"), root: Path = Path("."),
              key: str | None = None, direct: bool = False) -> int:
    """Validate, then run the stage's notebook (or, ``direct`` or without a notebook, its body here)."""
    try:
        p = check_stage(stage, root / params_path, root, key)
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    outputs = stage_outputs(stage, root, key)
    notebook = root / "notebooks" / f"{stage}.ipynb"
    if direct:
        # What `accelerate launch` runs on every process (add trains data-parallel, evaluate splits its
        # sampling; the main process writes the outputs): the body here, no notebook, no output removal.
        if hasattr(body(stage), "finish"):
            print(f"error: {stage!r} runs through its notebook (its page is the executed notebook)", file=sys.stderr)
            return 2
        call_body(stage, p, root, key)
        return 0
    remove_outputs(outputs)
    if not notebook.is_file():  # a stage without a notebook (diagnose): its body in this process
        try:
            call_body(stage, p, root, key)
        except BaseException:
            remove_outputs(outputs)
            raise
        return 0
    import papermill as pm

    ensure_kernel()
    executed = root / executed_notebook(stage, key)
    executed.parent.mkdir(parents=True, exist_ok=True)
    executed.with_suffix(".failed.ipynb").unlink(missing_ok=True)  # a previous failure's, now stale
    parameters = {"params_file": str(params_path)} | ({"run": key} if key is not None else {})
    try:
        pm.execute_notebook(str(notebook), str(executed), parameters=parameters, kernel_name=KERNEL,
                            cwd=str(root), log_output=True, progress_bar=False)
    except Exception as e:  # a cell raised, or the kernel died (nbclient's DeadKernelError: killed, out of memory)
        failed = executed.with_suffix(".failed.ipynb")
        if executed.exists():
            executed.replace(failed)
        remove_outputs(outputs)
        if isinstance(e, pm.PapermillExecutionError):
            why = f"failed in cell {e.exec_count}: {e.ename}: {e.evalue}"
        else:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            why = (f"stopped: its kernel died (killed, or out of memory?) ({type(e).__name__}: {first})"
                   if "DeadKernel" in type(e).__name__ else f"stopped: {type(e).__name__}: {first}")
        print(f"error: stage {stage!r} {why} (executed notebook: {failed})", file=sys.stderr)
        return 1
    finish = getattr(body(stage), "finish", None)
    if finish is not None:  # e.g. the report: its page is the executed notebook, rendered after it ran
        finish(executed, p, root)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    stages = dvc_stages()
    ap = argparse.ArgumentParser(prog=RUNNER, description="run one pipeline stage")
    ap.add_argument("stage", choices=sorted(stages))
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--run", help="the ablation run (stage ablation: one of params.yaml's ablations.runs)")
    ap.add_argument("--direct", action="store_true",
                    help="run the stage body in this process, without papermill (for `accelerate launch`)")
    args = ap.parse_args(argv)
    if stages[args.stage]["foreach"] != (args.run is not None):
        ap.error(f"--run is needed by (and only by) the stages {', '.join(s for s in stages if stages[s]['foreach'])}")
    return run_stage(args.stage, Path(args.params), key=args.run, direct=args.direct)


if __name__ == "__main__":
    raise SystemExit(main())
