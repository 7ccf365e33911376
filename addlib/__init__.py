"""Adversarial Diffusion Distillation library.

Importing it outside the project's environment (a stage run by a ``dvc`` whose ``python`` is another
interpreter, or ``python -m addlib...`` in a shell that has not entered ``.venv``) stops with one line saying
how to enter it, instead of a traceback from deep inside the first missing import."""
import importlib.util as _util
import sys as _sys

_missing = [m for m in ("torch", "diffusers", "yaml", "papermill") if _util.find_spec(m) is None]
if _missing:
    raise SystemExit(f"error: {_sys.executable} has no {', '.join(_missing)}: enter the project's environment first "
                     "(source .venv/bin/activate; `make setup` creates it)")
