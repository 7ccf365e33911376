"""The playground notebook runs as opened (from notebooks/, as JupyterLab runs it) on a trained student and
teacher, and shows every block from the same noise with a timing per block."""
import json
import shutil

import papermill as pm
import pytest
import torch
import yaml

from addlib import config as C
from addlib.config import checks
from addlib import playground
from addlib.models import build_unet
from addlib.sampling import initial_noise, sample_teacher
from addlib.text import TextEncoder


@pytest.fixture()
def project(tmp_path, root):
    raw = C.load_raw(root / "params.yaml", root / "profiles" / "smoke.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(root / "dvc.yaml", tmp_path / "dvc.yaml")
    p = checks.parse(raw)
    for name, seed in (("teacher", 0), ("student", 1)):
        torch.manual_seed(seed)
        build_unet(p.teacher.unet, p.data.resolution, p.data.channels, 384).save_pretrained(tmp_path / "models" / name)
    C.write_resolved({"teacher": p.teacher, "add": p.add, "text_encoder": p.text_encoder},
                     tmp_path / "models" / "student" / "addlib_config.json")
    return tmp_path, p


def test_every_block_starts_from_the_same_noise(project, monkeypatch):
    root, p = project
    monkeypatch.chdir(root)
    blocks, timings = playground.compare(p, ["seven", "one"], [1, 2], [("ddim", 2, 2.0)], per_prompt=2, seed=3)
    assert [b[0] for b in blocks] == ["ADD student\n1 step", "ADD student\n2 steps", "teacher ddim\n2 steps, w=2"]
    assert all(x.shape == (4, 1, 8, 8) for _, x in blocks)
    assert [(t["model"], t["steps"]) for t in timings] == [("student", 1), ("student", 2), ("teacher", 2)]
    assert all(t["seconds_per_image"] > 0 for t in timings)
    # the teacher's block is its solve from the student's starting noise (initial_noise of the same seed)
    from addlib.latent import load_teacher
    enc = TextEncoder.from_config(p.text_encoder)
    states, mask, _ = enc(["seven", "seven", "one", "one"])
    t = load_teacher(p.teacher, root / "models" / "teacher")
    ref = sample_teacher(t.unet.eval(), t.schedule, states, mask, enc([""])[:2], initial_noise(4, (1, 8, 8), 3),
                         "ddim", 2, 2.0)
    assert torch.equal(blocks[2][1], ref)


def test_the_notebook_runs_as_opened_in_jupyterlab(project, root):
    tmp, _ = project
    (tmp / "notebooks").mkdir()
    out = tmp / "notebooks" / "executed.ipynb"
    pm.execute_notebook(str(root / "notebooks" / "playground.ipynb"), str(out), kernel_name="addlib",
                        cwd=str(tmp / "notebooks"), progress_bar=False,
                        parameters={"prompts": ["seven"], "student_steps": [1, 2], "teacher": [["ddim", 2, 1.0]],
                                    "per_prompt": 2})
    outputs = [o for c in json.loads(out.read_text())["cells"] for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    table = "".join(next(o["data"]["text/plain"] for o in outputs if "seconds_per_image" in str(o.get("data", {}))))
    assert table.count("student") == 2 and table.count("teacher") == 1
    assert (tmp / "reports" / "playground.png").is_file()
