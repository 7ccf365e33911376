"""Each DVC stage depends on exactly the code it runs (so an edit reruns only the stages that run it): dvc.yaml's
code deps are what ``python -m addlib.deps`` writes from the import graph, and a params section's schema is code
of exactly the stages that read the section. The package is layered: paths.py and the package __init__ files
import nothing of it (config's only its loader), the library never imports the runner or the stage bodies, and
a stage body sees only the params sections dvc.yaml declares for it."""
import ast
import dataclasses
import json
import re
import subprocess
import sys

from pathlib import Path

import pytest
import yaml

from addlib import config as C
from addlib.config import checks
from addlib import stages as S
from addlib import deps as G
from addlib.deps import PKG, ROOT, closure, imported_files

STAGES = S.dvc_stages(ROOT)


def test_every_stage_runs_through_the_runner_and_has_a_body():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(STAGES) == set(spec), "every stage's cmd is `python -m addlib.stages STAGE`"
    for stage in STAGES:
        assert callable(S.body(stage).run), stage


EXPECTED = G.expected(ROOT)


def stage_code(stage: str) -> list[str]:
    return EXPECTED[stage]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_dvc_deps_are_exactly_the_code_the_stage_runs(stage):
    listed = sorted(d for d in STAGES[stage]["deps"] if d.startswith("addlib/"))
    assert listed == stage_code(stage), (f"dvc.yaml {stage}: missing {sorted(set(stage_code(stage)) - set(listed))}, "
                                         f"not run {sorted(set(listed) - set(stage_code(stage)))}; "
                                         "run python -m addlib.deps --write")
    notebook = f"notebooks/{stage}.ipynb"
    assert (notebook in STAGES[stage]["deps"]) == (ROOT / notebook).is_file()


def test_the_deps_command_rewrites_only_the_code_deps():
    """``python -m addlib.deps --write`` puts back a dropped line, drops a stale one, and leaves the rest of
    dvc.yaml (comments, params, outs) as written; on the committed file it changes nothing."""
    text = (ROOT / "dvc.yaml").read_text()
    assert G.rewrite(text, EXPECTED) == text
    add_block = text.index("  add:\n")
    dropped = text[:add_block] + text[add_block:].replace("      - addlib/objective.py\n", "", 1)
    extra = text.replace("      - addlib/data.py\n", "      - addlib/data.py\n      - addlib/figures.py\n", 1)
    assert dropped != text and extra != text
    assert G.rewrite(dropped, EXPECTED) == text and G.rewrite(extra, EXPECTED) == text
    assert subprocess.run([sys.executable, "-m", "addlib.deps", "--check"], cwd=ROOT).returncode == 0


def test_a_section_schema_is_code_of_exactly_the_stages_that_read_it():
    """A new knob in one section (addlib/config/<section>.py) reruns only the stages that declare the section,
    and check (which validates the whole file): an annotation's import (under TYPE_CHECKING) is not a dep."""
    for stage in STAGES:
        schemas = {Path(f).stem for f in stage_code(stage) if f.startswith("addlib/config/")} & set(C.SECTIONS)
        declared = set(S.stage_sections(stage, ROOT)) - {"seed"}
        if "ablations" in declared:  # ablations.add, Table 1's ADD settings, is an add section (its schema checks it)
            declared |= {"add"}
        assert schemas == (set(C.SECTIONS) - {"seed"} if stage == "check" else declared), stage
    assert PKG / "config" / "teacher.py" not in imported_files(PKG / "models.py")  # UNetConfig: an annotation
    assert PKG / "config" / "teacher.py" in imported_files(PKG / "export.py")  # ScheduleConfig built at run time


def test_the_check_stage_runs_before_every_other():
    """DVC removes a stage's outputs before its command runs; the check stage validates params.yaml and its
    inputs first, and every other stage depends on its stamp, so a bad value deletes nothing."""
    assert "params.yaml" in STAGES["check"]["deps"]
    for stage in STAGES:
        if stage != "check":
            assert "reports/check.json" in STAGES[stage]["deps"], stage


def test_stage_bodies_are_separate():
    """An edit to one stage's body or to what only later stages use reruns nothing upstream."""
    assert "addlib/distillation.py" not in stage_code("teacher") + stage_code("evaluate") + stage_code("features")
    assert "addlib/pipeline/evaluate.py" not in stage_code("add") + stage_code("ablation")
    assert "addlib/teacher.py" not in stage_code("add") + stage_code("features") + stage_code("evaluate")
    assert "addlib/figures.py" not in stage_code("teacher") + stage_code("add") + stage_code("ablation")
    for stage in STAGES:
        own = {f"addlib/pipeline/{stage}.py"}
        others = {f"addlib/pipeline/{s}.py" for s in STAGES} - own
        assert not others & set(stage_code(stage)), stage


def test_the_import_graph_is_layered():
    for f in (PKG / "paths.py", PKG / "timesteps.py", PKG / "__init__.py", PKG / "pipeline" / "__init__.py"):
        assert imported_files(f) == set(), f"{f.name} imports the package"
    # the config package: importing it imports the loader only; a section's schema imports the loader only (and
    # ablations' the add section's: ablations.add, Table 1's ADD settings, is an add section)
    config = PKG / "config"
    package = {PKG / "__init__.py", config / "__init__.py"}
    assert imported_files(config / "__init__.py") == {PKG / "__init__.py", config / "loader.py"}
    assert imported_files(config / "loader.py") == set()  # the sections' modules by name, only those asked for
    for section in set(C.SECTIONS) - {"seed"}:
        nested = {config / "add.py"} if section == "ablations" else set()
        assert closure(config / f"{section}.py") - {config / f"{section}.py", PKG / "metadata.py"} == package | {
            config / "loader.py"} | nested, section
    runner_and_bodies = {PKG / "stages.py", *(PKG / "pipeline").glob("*.py")}
    for f in [*PKG.glob("*.py"), *config.glob("*.py")]:
        # deps.py writes dvc.yaml from the runner's view of it; budget_curve.py drives the ablation stage's path
        if f.name not in ("stages.py", "deps.py", "budget_curve.py"):
            assert not closure(f) & (runner_and_bodies - {PKG / "pipeline" / "__init__.py"}), \
                f"library module {f.name} imports the runner or a stage body"
    # No import loops between library modules (config <-> latent was one).
    for f in [*PKG.glob("*.py"), *config.glob("*.py")]:
        for g in imported_files(f) - package:
            assert f not in closure(g), f"import loop: {f.name} <-> {g.name}"


def test_a_stage_body_gets_only_its_declared_sections(root):
    p = S.stage_params("prepare", "params.yaml", root)
    assert p.data == checks.load(root / "params.yaml").data and p.seed == 0
    assert p.teacher is None and p.add is None and p.ablations is None
    d = S.stage_params("diagnose", "params.yaml", root)
    assert d.seed is None and d.data is None and d.add is not None and d.evaluate is not None
    declared = {f.name for f in dataclasses.fields(C.Params)}
    for stage in STAGES:
        p = S.stage_params(stage, "params.yaml", root)
        kept = {n for n in declared if getattr(p, n) is not None}
        assert kept == {str(x).split(".")[0] for x in STAGES[stage].get("params", [])}, stage


def test_a_stage_imports_only_the_schemas_of_its_sections(root):
    """The runner parses the sections a stage declares and imports no other section's module (so the dvc.yaml
    deps that leave the others out are the truth)."""
    code = ("import sys; from addlib import stages; stages.stage_params('prepare'); "
            "print(sorted(m for m in sys.modules if m.startswith('addlib.config.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(["addlib.config.data", "addlib.config.loader", "addlib.config.text_encoder"])


def test_the_check_stage_refuses_an_override_the_ablation_stage_would_not_read(root):
    """An ablation run's override of a section the ablation stage does not declare would be dropped when the
    stage parses its sections: the check stage says so in one line."""
    from addlib.pipeline.check import check_all

    raw = C.load_raw(root / "params.yaml")
    check_all(raw, "params.yaml", root)
    raw["ablations"]["runs"]["mse"]["overrides"]["preference"] = {"seeds": 2}
    with pytest.raises(C.ConfigError, match=r"ablations\.runs\.mse\.overrides: sets preference, which the ablation "
                       "stage does not read"):
        check_all(raw, "params.yaml", root)


def test_notebooks_take_the_params_file_only_and_make_one_call():
    """No copied preamble: papermill passes the params file's path (and the ablation run), the notebook turns it
    into typed params with one call and hands them to its stage's body."""
    for stage in STAGES:
        path = ROOT / "notebooks" / f"{stage}.ipynb"
        if not path.is_file():
            continue
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        params = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
        names = {t.id for node in ast.parse("".join(params["source"])).body for t in node.targets}
        assert names == ({"params_file", "run"} if STAGES[stage]["foreach"] else {"params_file"}), stage
        code = "\n".join("".join(c["source"]) for c in cells)
        assert code.count("stages.stage_params(") == 1 and f'stage_params("{stage}", params_file)' in code, stage
        assert "from_dict" not in code and "config.parse" not in code, stage


def test_a_notebook_opened_in_jupyterlab_finds_the_project(tmp_path, root, monkeypatch):
    """JupyterLab runs a notebook in its own folder (notebooks/); stage_params moves to the project root."""
    import shutil

    for f in ("params.yaml", "dvc.yaml"):
        shutil.copy(root / f, tmp_path / f)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    p = S.stage_params("teacher", "params.yaml")
    assert Path.cwd() == tmp_path.resolve() and p.teacher is not None and p.add is None
    monkeypatch.chdir(tmp_path.parent)
    with pytest.raises(C.ConfigError, match="no dvc.yaml in"):
        S.stage_params("teacher", "params.yaml")


def test_modules_and_the_two_loops_stay_readable():
    """No library module grows past ~400 lines, and the two longest procedures, ADD's training loop and the
    evaluation, read as numbered steps that fit a screen (their parts are functions of their own)."""
    long = {str(f.relative_to(ROOT)): n for f in PKG.rglob("*.py") if (n := len(f.read_text().splitlines())) > 420}
    assert not long, long
    from addlib import distillation
    from addlib.pipeline import evaluate

    for fn in (distillation.train_add, evaluate.run):
        source = ast.parse(Path(fn.__code__.co_filename).read_text())
        node = next(n for n in ast.walk(source) if isinstance(n, ast.FunctionDef) and n.name == fn.__name__)
        assert node.end_lineno - node.lineno + 1 <= 85, fn.__name__
        steps = [int(m) for m in re.findall(r"^    # (\d+)\. ", ast.get_source_segment(
            Path(fn.__code__.co_filename).read_text(), node), re.M)]
        assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 5, (fn.__name__, steps)
