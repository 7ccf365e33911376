"""dvc.yaml's code deps, written from the import graph: ``python -m addlib.deps --write`` (``--check``: exit 1
and name the stages whose lists are stale; the test suite runs it).

A stage runs the runner (addlib/stages.py), its body (addlib/pipeline/<stage>.py) and every addlib module they
import, directly or through each other, at the top level or inside a function (read from the source, not by
importing it), plus the schema of each params section it declares (addlib/config/<section>.py, which the
loader imports by name). Imports under ``if TYPE_CHECKING:`` never run and are not deps. So an edit reruns
exactly the stages that run the edited file, and a new knob in one section only the stages that read it.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

from .stages import dvc_stages, stage_sections

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


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _nodes(tree: ast.AST):
    """Every node of the tree but those inside an ``if TYPE_CHECKING:`` block."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(child for child in ast.iter_child_nodes(node) if not _is_type_checking(child))


def imported_files(path: Path) -> set[Path]:
    """The addlib files one source file imports when it runs (anywhere in it)."""
    pkg = list(path.relative_to(ROOT).parent.parts)  # e.g. ["addlib", "pipeline"]
    out = set()
    for node in _nodes(ast.parse(path.read_text())):
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


def stage_code(stage: str, sections: list[str] = ()) -> list[str]:
    """The addlib files a stage runs, relative to the repository root, sorted: ``sections`` are the params
    sections it declares."""
    schemas = [PKG / "config" / f"{s}.py" for s in sections if (PKG / "config" / f"{s}.py").is_file()]
    files = closure(PKG / "__init__.py", PKG / "stages.py", PKG / "pipeline" / "__init__.py",
                    PKG / "pipeline" / f"{stage}.py", *schemas)
    return sorted(str(f.relative_to(ROOT)) for f in files)


def expected(root: Path = ROOT) -> dict[str, list[str]]:
    """Each stage's code deps as the import graph says."""
    return {name: stage_code(name, stage_sections(name, root)) for name in dvc_stages(root)}


def rewrite(text: str, deps: dict[str, list[str]]) -> str:
    """dvc.yaml's text with each stage's run of ``- addlib/...`` dep lines replaced by ``deps[stage]`` (comments,
    order and everything else kept as written)."""
    lines, out, stage, i = text.split("\n"), [], None, 0
    done = set()
    while i < len(lines):
        line = lines[i]
        m = re.fullmatch(r"  ([A-Za-z0-9_@-]+):\s*", line)
        if m:
            stage = m.group(1)
        dep = re.fullmatch(r"(\s+)- addlib/\S+\s*", line)
        if dep and stage in deps and stage not in done:
            while i < len(lines) and re.fullmatch(r"\s+- addlib/\S+\s*", lines[i]):
                i += 1
            out.extend(f"{dep.group(1)}- {f}" for f in deps[stage])
            done.add(stage)
            continue
        out.append(line)
        i += 1
    missing = set(deps) - done
    if missing:
        raise ValueError(f"dvc.yaml: no '- addlib/...' deps to rewrite in {', '.join(sorted(missing))}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m addlib.deps", description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps")
    ap.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml's code deps are stale")
    args = ap.parse_args(argv)
    path = ROOT / "dvc.yaml"
    text = path.read_text()
    deps = expected(ROOT)
    new = rewrite(text, deps)
    if new == text:
        print("dvc.yaml: every stage's code deps are the code it runs")
        return 0
    listed = {n: sorted(d for d in s["deps"] if d.startswith("addlib/")) for n, s in dvc_stages(ROOT).items()}
    stale = [n for n, d in deps.items() if listed[n] != d]
    if args.write:
        path.write_text(new)
        print(f"dvc.yaml: rewrote the code deps of {', '.join(stale)}")
        return 0
    print(f"dvc.yaml: stale code deps in {', '.join(stale)}; run python -m addlib.deps --write", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
