"""Bad input stops a stage before any compute: non-zero exit, one clear line, no outputs left behind."""
import re
import shutil
import subprocess
import sys

import pytest
import yaml


def _project(tmp_path, root, edit):
    """A minimal copy of the project (params.yaml, dvc.yaml) with params edited."""
    raw = yaml.safe_load((root / "params.yaml").read_text())
    edit(raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(root / "dvc.yaml", tmp_path / "dvc.yaml")
    return tmp_path


def _run(cwd, stage):
    return subprocess.run([sys.executable, "-m", "addlib.stages", stage], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def _assert_clean_failure(r, cwd, message):
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert not (cwd / "data" / "processed").exists()
    assert not (cwd / "reports").exists()
    assert not (cwd / "models").exists()


def test_unknown_params_key(tmp_path, root):
    """Stopped by the check stage (the whole file, first in dvc.yaml) and by every stage that reads the section
    (a stage parses only the sections it declares: prepare does not read teacher)."""
    cwd = _project(tmp_path, root, lambda raw: raw["teacher"]["train"].update(stpes=5))
    for stage in ["check", "teacher"]:
        _assert_clean_failure(_run(cwd, stage), cwd, "teacher.train.stpes: unknown key (did you mean 'steps'?)")


def test_missing_image_folder(tmp_path, root):
    def edit(raw):
        raw["data"].update(source="folder", folder="no/such/folder")
    cwd = _project(tmp_path, root, edit)
    _assert_clean_failure(_run(cwd, "prepare"), cwd, "data.folder: image folder not found")


def test_check_names_every_outside_input(tmp_path, root):
    """The check stage (first in dvc.yaml) looks at every input the pipeline reads from outside it."""
    cwd = _project(tmp_path, root, lambda raw: (raw["teacher"].update(pretrained="no/such/teacher"),
                                                raw["text_encoder"].update(attention_mask=False)))
    _assert_clean_failure(_run(cwd, "check"), cwd, "teacher.pretrained: folder not found: no/such/teacher")
    cwd = _project(tmp_path, root, lambda raw: raw["ablations"]["runs"]["default"]["overrides"].update(
        features={"source": "timm", "weights": "no/such/f.safetensors"}))
    _assert_clean_failure(_run(cwd, "check"), cwd, "features.weights: weights file not found")
    cwd = _project(tmp_path, root, lambda raw: None)
    r = _run(cwd, "check")
    assert r.returncode == 0 and (cwd / "reports" / "check.json").is_file(), r.stderr


def test_teacher_before_prepare(tmp_path, root):
    cwd = _project(tmp_path, root, lambda raw: None)
    _assert_clean_failure(_run(cwd, "teacher"), cwd, "run the 'prepare' stage first")


def _run_args(cwd, *args):
    return subprocess.run([sys.executable, "-m", "addlib.stages", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_ablation_run_names_and_overrides(tmp_path, root):
    cwd = _project(tmp_path, root, lambda raw: None)
    _assert_clean_failure(_run_args(cwd, "ablation", "--run", "nope"), cwd, "ablations.runs: no run named 'nope'")
    r = _run_args(cwd, "ablation")  # the run is required (argparse's usage message, exit 2)
    assert r.returncode == 2 and "--run is needed" in r.stderr
    _assert_clean_failure(_run_args(cwd, "ablation", "--run", "default"), cwd,
                          "models/teacher: not found; run the stages before 'ablation' first")
    (tmp_path / "bad").mkdir()
    bad = _project(tmp_path / "bad", root, lambda raw: raw["ablations"]["runs"]["mse"]["overrides"]["add"].update(
        distance="l3"))
    for args in [("check",), ("ablation", "--run", "mse")]:
        _assert_clean_failure(_run_args(bad, *args), bad, "ablations.runs.mse.overrides.add.distance: 'l3' is not one of")


def test_report_before_the_ablations(tmp_path, root):
    cwd = _project(tmp_path, root, lambda raw: None)
    _assert_clean_failure(_run(cwd, "report"), cwd, "report: results missing")


def test_diagnose_before_the_student(tmp_path, root):
    cwd = _project(tmp_path, root, lambda raw: None)
    _assert_clean_failure(_run(cwd, "diagnose"), cwd, "models/teacher: not found; run the stages before 'diagnose'")


def test_bad_metadata_line_stops_prepare_before_any_compute(tmp_path, root):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x", "label": "four"}\n')
    (folder / "a.png").write_bytes(b"not read: the metadata is checked first")
    (tmp_path / "p").mkdir()
    cwd = _project(tmp_path / "p", root, lambda raw: raw["data"].update(source="folder", folder=str(folder)))
    _assert_clean_failure(_run(cwd, "prepare"), cwd, "metadata.jsonl:1: label must be an integer >= 0")


@pytest.mark.parametrize("fail,message", [
    ("raise RuntimeError('planted')", r"error: stage 'prepare' failed in cell \d+: RuntimeError: planted"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
     r"error: stage 'prepare' stopped: its kernel died \(killed, or out of memory\?\)"),
])
def test_a_failing_or_dying_notebook_leaves_no_outputs_and_a_failed_notebook(tmp_path, root, fail, message):
    import nbformat

    cwd = _project(tmp_path, root, lambda raw: None)
    (cwd / "notebooks").mkdir()
    writes = "import pathlib; pathlib.Path('reports/data').mkdir(parents=True); " \
             "pathlib.Path('reports/data/card.json').write_text('{}')"  # a declared output, half-written
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('params_file = "params.yaml"', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(writes), nbformat.v4.new_code_cell(fail)])
    nb.metadata["kernelspec"] = {"name": "addlib", "display_name": "Python (addlib)", "language": "python"}
    nbformat.write(nb, str(cwd / "notebooks" / "prepare.ipynb"))
    r = _run(cwd, "prepare")
    assert r.returncode == 1, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(message, errors[0]), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not (cwd / "reports" / "data" / "card.json").exists()
    assert not (cwd / "reports" / "executed" / "prepare.ipynb").exists()
    assert (cwd / "reports" / "executed" / "prepare.failed.ipynb").is_file()
