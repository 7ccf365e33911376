"""The quick start's sandbox: a copy of the project without its results, the profile applied (its ablation rows
replacing the default's), its own git repository; the project's params.yaml and results untouched. (Running
`dvc repro` in it is what tests/test_pipeline.py does with the smoke profile.)"""
import subprocess

import pytest
import yaml

from addlib import config as C
from addlib.config import checks
from addlib.quickstart import make_sandbox


def test_the_sandbox_is_a_valid_project_with_the_quickstart_profile(tmp_path, root):
    before = (root / "params.yaml").read_text()
    dest = make_sandbox(root, tmp_path / "qs", root / "profiles" / "quickstart.yaml")
    assert (root / "params.yaml").read_text() == before  # the project's params (and comments) untouched
    assert (dest / "dvc.yaml").is_file() and (dest / "addlib" / "stages.py").is_file()
    assert not (dest / "reports").exists() and not (dest / "models").exists()  # no results copied
    p = checks.load(dest / "params.yaml")
    profile = yaml.safe_load((root / "profiles" / "quickstart.yaml").read_text())
    assert p.teacher.train.steps == profile["teacher"]["train"]["steps"] != checks.load(root / "params.yaml").teacher.train.steps
    assert set(p.ablations.runs) == {"default", "adversarial_only", "distillation_only"}
    assert list(p.ablations.tables) == ["loss"]
    assert p.data == checks.load(root / "params.yaml").data  # what the profile does not name keeps the default
    log = subprocess.run(["git", "log", "--oneline"], cwd=dest, capture_output=True, text=True).stdout
    assert "quick start" in log and not subprocess.run(["git", "status", "--porcelain"], cwd=dest,
                                                       capture_output=True, text=True).stdout
    make_sandbox(root, dest, root / "profiles" / "quickstart.yaml")  # a second call updates in place


def test_a_bad_profile_is_one_line_before_anything_runs(tmp_path, root):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"teacher": {"train": {"stpes": 3}}}))
    with pytest.raises(C.ConfigError, match=r"teacher\.train\.stpes: unknown key"):
        make_sandbox(root, tmp_path / "qs", tmp_path / "bad.yaml")
    assert not (tmp_path / "qs").exists()
