"""environment.yml (conda) installs exactly the pins of pyproject.toml."""
import re
import tomllib

import yaml


def test_environment_yml_matches_pyproject(root):
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((root / "environment.yml").read_text())
    pip = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    pins = [p for p in pip if not p.startswith("-")]
    assert sorted(pins) == sorted(deps)
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][^,;\s]*", d) for d in deps), "every dependency is pinned exactly"
    py = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert py == ["python=3.11"]
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps


def test_make_lab_starts_as_root(root):
    """JupyterLab refuses to start as root without --allow-root (containers run as root)."""
    import os
    import subprocess

    cmd = subprocess.run(["make", "-n", "lab"], cwd=root, capture_output=True, text=True, check=True).stdout
    line = [l for l in cmd.splitlines() if "jupyter lab" in l][-1]
    out = subprocess.run(["bash", "-c", "echo " + line.split("jupyter lab", 1)[1]], capture_output=True,
                         text=True).stdout
    assert ("--allow-root" in out) == (os.getuid() == 0)
