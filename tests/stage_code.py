"""The library code a pipeline stage runs: the runner (addlib/stages.py), the stage's body
(addlib/pipeline/<stage>.py) and every addlib module they import, directly or through each other, at the top
level or inside a function (read from the source, not by importing it). tests/test_stage_deps.py checks dvc.yaml
against it; ``python tests/stage_code.py`` prints each stage's list."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "addlib"


def _module_file(parts: list[str]) -> Path | None:
    """addlib.<parts...> -> its file (a module, or a package's __init__.py)."""
    base = ROOT.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def imported_files(path: Path) -> set[Path]:
    """The addlib files one source file imports (anywhere in it)."""
    pkg = list(path.relative_to(ROOT).parent.parts)  # e.g. ["addlib", "pipeline"]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[list[str]] = []
        if isinstance(node, ast.Import):
            targets = [a.name.split(".") for a in node.names if a.name.split(".")[0] == "addlib"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - (node.level - 1)]
            elif (node.module or "").split(".")[0] == "addlib":
                base = []
            else:
                continue
            mod = base + (node.module.split(".") if node.module else [])
            targets = [mod] + [mod + [a.name] for a in node.names]  # `from . import x`: x may be a module
        for parts in targets:
            for k in range(1, len(parts) + 1):  # a module's parent packages run their __init__.py too
                f = _module_file(parts[:k])
                if f is not None and f != path:
                    out.add(f)
    return out


def closure(*files: Path) -> set[Path]:
    seen, todo = set(), list(files)
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo.extend(imported_files(f))
    return seen


def stage_code(stage: str) -> list[str]:
    """The addlib files a stage runs, relative to the repository root, sorted."""
    files = closure(PKG / "__init__.py", PKG / "stages.py", PKG / "pipeline" / "__init__.py",
                    PKG / "pipeline" / f"{stage}.py")
    return sorted(str(f.relative_to(ROOT)) for f in files)


if __name__ == "__main__":
    for f in sorted((PKG / "pipeline").glob("*.py")):
        if f.stem not in ("__init__", "common", "scoring"):
            print(f.stem, stage_code(f.stem))
