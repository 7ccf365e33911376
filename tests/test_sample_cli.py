"""The command-line sampler on a tiny saved student: a PNG grid of the right size, the same noise in every step
block, and one-line errors for a folder that holds no student or a step count it cannot sample with."""
import pytest
import torch
from PIL import Image

from addlib import config as C
from addlib.models import build_unet
from addlib.sample import main
from addlib.export import ADDSampler


@pytest.fixture()
def student(tmp_path, smoke_params):
    p = smoke_params
    torch.manual_seed(0)
    unet = build_unet(p.teacher.unet, p.data.resolution, p.data.channels, 384)  # MiniLM's width
    unet.save_pretrained(tmp_path / "student")
    C.write_resolved({"teacher": p.teacher, "add": p.add, "text_encoder": p.text_encoder},
                     tmp_path / "student" / "addlib_config.json")
    return tmp_path / "student"


def test_writes_one_row_per_prompt_and_a_block_per_step_count(student, tmp_path, capsys, monkeypatch):
    out = tmp_path / "grid.png"
    args = ["--model", str(student), "--prompt", "the number 3", "--prompt", "seven", "--steps", "1", "2",
            "--per-prompt", "3", "--seed", "5", "--out", str(out)]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    w, h = Image.open(out).size
    assert w > h > 100  # 2 rows x 6 columns
    # each block is the library's sampler at that step count from the same seed (the same noise per column)
    import addlib.plots as plots
    seen = {}
    monkeypatch.setattr(plots, "block_grid", lambda blocks, rows, k, path, title: seen.update(blocks=blocks) or path)
    main(args)
    s = ADDSampler.from_pretrained(student)
    prompts = ["the number 3"] * 3 + ["seven"] * 3
    (l1, x1), (l2, x2) = seen["blocks"]
    assert (l1, l2) == ("1 step", "2 steps")
    assert torch.equal(x1, s(prompts, steps=1, seed=5)) and torch.equal(x2, s(prompts, steps=2, seed=5))


@pytest.mark.parametrize("args,message", [
    (["--steps", "3"], "--steps [3]: this student (timesteps [999, 749, 499, 249]) samples with [1, 2, 4] steps"),
    (["--model", "nowhere"], "--model nowhere: no trained student there (config.json missing)"),
])
def test_bad_arguments_are_one_line_errors(student, tmp_path, capsys, args, message):
    base = ["--model", str(student), "--prompt", "seven", "--out", str(tmp_path / "g.png")]
    with pytest.raises(SystemExit) as e:
        main(base + args)
    assert e.value.code == 2 and message in capsys.readouterr().err
