"""Each DVC stage depends on exactly the code it runs (so an edit reruns only the stages that run it), and the
package is layered: paths.py and the package __init__ files import nothing of it, the library never imports
the runner or the stage bodies, and a stage body sees only the params sections dvc.yaml declares for it."""
import ast
import dataclasses
import json

from pathlib import Path

import pytest
import yaml

from addlib import config as C
from addlib import stages as S
from stage_code import PKG, ROOT, closure, imported_files, stage_code

STAGES = S.dvc_stages(ROOT)


def test_every_stage_runs_through_the_runner_and_has_a_body():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(STAGES) == set(spec), "every stage's cmd is `python -m addlib.stages STAGE`"
    for stage in STAGES:
        assert callable(S.body(stage).run), stage


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_dvc_deps_are_exactly_the_code_the_stage_runs(stage):
    listed = sorted(d for d in STAGES[stage]["deps"] if d.startswith("addlib/"))
    assert listed == stage_code(stage), (f"dvc.yaml {stage}: missing {sorted(set(stage_code(stage)) - set(listed))}, "
                                         f"not run {sorted(set(listed) - set(stage_code(stage)))}")
    notebook = f"notebooks/{stage}.ipynb"
    assert (notebook in STAGES[stage]["deps"]) == (ROOT / notebook).is_file()


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
    runner_and_bodies = {PKG / "stages.py", *(PKG / "pipeline").glob("*.py")}
    for f in PKG.glob("*.py"):
        if f.name != "stages.py":
            assert not closure(f) & (runner_and_bodies - {PKG / "pipeline" / "__init__.py"}), \
                f"library module {f.name} imports the runner or a stage body"
    # No import loops between library modules (config <-> latent was one).
    for f in PKG.glob("*.py"):
        for g in imported_files(f):
            assert f not in closure(g), f"import loop: {f.name} <-> {g.name}"


def test_a_stage_body_gets_only_its_declared_sections(root):
    p = S.stage_params("prepare", "params.yaml", root)
    assert p.data == C.load(root / "params.yaml").data and p.seed == 0
    assert p.teacher is None and p.add is None and p.ablations is None
    d = S.stage_params("diagnose", "params.yaml", root)
    assert d.seed is None and d.data is None and d.add is not None and d.evaluate is not None
    declared = {f.name for f in dataclasses.fields(C.Params)}
    for stage in STAGES:
        p = S.stage_params(stage, "params.yaml", root)
        kept = {n for n in declared if getattr(p, n) is not None}
        assert kept == {str(x).split(".")[0] for x in STAGES[stage].get("params", [])}, stage


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
