"""The memory allocator the pipeline's notebooks run with: tcmalloc where the machine has it (issue 37).

On the 2-core AMD EPYC this project was measured on, an ADD training step took 18% less time and CPU time with
tcmalloc (gperftools' ``libtcmalloc_minimal``) than with glibc's malloc, a teacher step 14% less
(``python -m addlib.malloc_check``; docs/cost.md, where the cause is said to be unprofiled). It computes the same
numbers: the allocator decides where a tensor lives, not what is in it (tests/test_malloc.py trains the same tiny
ADD run under both and compares every logged loss and sampled pixel exactly).

A library can only be swapped in before a process starts, so the choice is made where the notebooks' processes
are defined: ``make`` registers the Jupyter kernel ``addlib`` with ``LD_PRELOAD`` naming the library this module
finds (``python -m addlib.malloc --kernel-env`` prints the ``ipykernel install`` arguments), and papermill starts
every stage's kernel with it, however DVC was called. Where no tcmalloc is found, the kernel runs with the
system's allocator and the results are the same, only slower. ``ADDLIB_TCMALLOC`` names the library's file
instead of the search, or ``none`` for the system's allocator.

    python -m addlib.malloc              # the library found, or why none is used
    python -m addlib.malloc --kernel-env # '--env LD_PRELOAD <path>', or nothing
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ENV = "ADDLIB_TCMALLOC"
NAME = "libtcmalloc_minimal.so"
# Debian/Ubuntu (libtcmalloc-minimal4), Fedora/RHEL (gperftools-libs), a conda env's (gperftools), /usr/local.
SEARCH = [Path(sys.prefix) / "lib", Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib/aarch64-linux-gnu"),
          Path("/usr/lib64"), Path("/usr/lib"), Path("/usr/local/lib")]


def find_tcmalloc(env: dict[str, str] | None = None, search: list[Path] | None = None) -> Path | None:
    """The tcmalloc library to preload: ``ADDLIB_TCMALLOC``'s file if set (``none``: no library), else the first
    ``libtcmalloc_minimal.so*`` in the usual library folders, else None. A named file that is missing is a one-line
    error, not a silent fallback."""
    env = os.environ if env is None else env
    named = env.get(ENV, "").strip()
    if named.lower() == "none":
        return None
    if named:
        path = Path(named)
        if not path.is_file():
            raise FileNotFoundError(f"{ENV}={named}: no such file (name a libtcmalloc_minimal.so, or 'none')")
        return path
    for folder in SEARCH if search is None else search:
        found = sorted(folder.glob(NAME + "*")) if folder.is_dir() else []
        if found:  # the plain name or the soname (.so.4) before the full version (.so.4.5.10): shortest first
            return min(found, key=lambda p: len(p.name))
    return None


def kernel_env_args(env: dict[str, str] | None = None, search: list[Path] | None = None) -> list[str]:
    """``ipykernel install`` arguments that make the kernel preload tcmalloc, or none when there is none."""
    path = find_tcmalloc(env, search)
    return [] if path is None else ["--env", "LD_PRELOAD", str(path.absolute())]


def loaded() -> str | None:
    """The tcmalloc library mapped into this process (Linux), else None: which allocator a run really used."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    return next((line.split()[-1] for line in maps.splitlines() if "libtcmalloc" in line), None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m addlib.malloc", description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel-env", action="store_true", help="print the ipykernel install --env arguments")
    args = ap.parse_args(argv)
    try:
        path = find_tcmalloc()
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.kernel_env:
        print(" ".join(kernel_env_args()))
    elif path is None:
        print(f"no tcmalloc ({ENV}=none, or none of {NAME}* in {', '.join(map(str, SEARCH))}): "
              "the system's allocator (the same results, slower)")
    else:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
