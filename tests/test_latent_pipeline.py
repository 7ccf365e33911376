"""The pipeline's stages on a latent teacher, changed by params only: a tiny random SD-layout folder (teacher,
VAE, CLIP text encoder) or SDXL-layout folder (two text towers, added conditioning, epsilon) and a captioned RGB
imagefolder, through prepare -> teacher -> features -> add -> consistency -> evaluators -> solvers -> evaluate, then the
student samples pixels in one call. Also the GPU benchmark's CPU path, for both layouts."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from addlib import config as C
from addlib.config import checks
from addlib.pipeline import add, consistency, evaluate, evaluators, features, prepare, solvers, teacher
from tiny_models import SD_SCHEDULE, SDXL_SCHEDULE, sd_folder, sdxl_folder


@pytest.fixture(params=["sd", "sdxl"])
def latent_root(request, tmp_path, root):
    sdxl = request.param == "sdxl"
    sd = (sdxl_folder if sdxl else sd_folder)(tmp_path / request.param)
    img = tmp_path / "images"
    img.mkdir()
    rng = np.random.default_rng(0)
    colours = [(220, 40, 40), (40, 40, 220), (40, 200, 40)]
    words = ["red", "blue", "green"]
    with open(img / "metadata.jsonl", "w") as f:
        for i in range(30):
            k = i % 3
            arr = (np.array(colours[k])[None, None] * rng.uniform(0.6, 1.0, (16, 16, 1))).astype(np.uint8)
            Image.fromarray(arr).save(img / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "text": f"a {words[k]} square", "label": k}) + "\n")
    profile = {
        "data": {"source": "folder", "folder": str(img), "resolution": 16, "channels": 3},
        "text_encoder": {"path": str(sd), "max_length": 12, "pooling": "eos", "attention_mask": False},
        "teacher": {"pretrained": str(sd), "schedule": {**(SDXL_SCHEDULE if sdxl else SD_SCHEDULE),
                                                        "rescale_zero_terminal_snr": False},
                    "sample": {"prompts": ["a red square", "a blue square"]}},
        "features": {"img_size": 16, "patch_size": 4},
        "add": {"sample_prompts": ["a red square", "a green square"], "student_zero_terminal_snr": not sdxl},
    }
    (tmp_path / "latent.yaml").write_text(yaml.safe_dump(profile))
    raw = C.apply_profile(C.load_raw(root / "params.yaml", root / "profiles" / "smoke.yaml"), profile)
    return tmp_path, checks.parse(raw)


def test_stages_run_on_a_latent_teacher_by_params_alone(latent_root):
    r, p = latent_root
    prepare.run(p, r)
    t = teacher.run(p, r, progress=False)
    assert t["pretrained"] == p.teacher.pretrained and t["parameters"] > 0
    assert (r / "reports/teacher/samples.png").is_file()
    assert (r / "reports/teacher/live/metrics.json").is_file()  # the outputs dvc.yaml declares exist
    features.run(p, r, progress=False)
    a = add.run(p, r, progress=False)
    assert a["steps"] == p.add.train.steps and math.isfinite(a["final_loss_distill"])
    cd = consistency.run(p, r, progress=False)  # the baseline on the same latent teacher
    assert cd["steps"] == p.add.train.steps and math.isfinite(cd["final_loss"])
    evaluators.run(p, r, progress=False)
    solvers.run(p, r, progress=False)
    evaluate.run(p, r, progress=False)
    ev = json.loads((r / "reports/metrics/evaluate.json").read_text())
    assert {f"{m}/{k}" for m in ("student/add", "consistency/lcm") for k in p.evaluate.student_steps} <= set(ev["rows"])
    assert all(math.isfinite(row["fid"]) for row in ev["rows"].values())
    from addlib.export import ADDSampler

    x = ADDSampler.from_pretrained(r / "models/student")(["a red square"], steps=1, seed=0)
    assert x.shape == (1, 3, 16, 16)


@pytest.mark.parametrize("layout", ["sd", "sdxl"])
def test_benchmark_runs_the_add_step_at_a_profiles_sizes(layout, tmp_path, root):
    sdxl = layout == "sdxl"  # SDXL's added conditioning (the pooled embedding packed as a 7th token)
    extra = dict(addition_embed_type="text_time", addition_time_embed_dim=2,
                 projection_class_embeddings_input_dim=8 + 6 * 2) if sdxl else {}
    arch = {"unet": {"sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
                     "block_out_channels": [8, 16], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                     "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "attention_head_dim": 8,
                     "cross_attention_dim": 16, "norm_num_groups": 4, **extra},
            "vae": {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
                    "norm_num_groups": 4, "block_out_channels": [8, 16],
                    "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2},
            "text": {"tokens": 6, "width": 16}}
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    profile = yaml.safe_load((root / f"profiles/{layout}-gpu.yaml").read_text())
    profile["data"]["resolution"] = 16
    profile["features"].update(timm_name="vit_tiny_patch16_224", img_size=32)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(profile))
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "addlib.benchmark", "--params", str(root / "params.yaml"),
                           "--profile", str(tmp_path / "p.yaml"), "--random", "--architecture",
                           str(tmp_path / "arch.json"), "--batch-sizes", "2", "--steps", "3", "--out", str(out)],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    (row,) = res["rows"]
    assert row["batch_size"] == 2 and row["mixed_precision"] == "bf16" and row["seconds_per_step"] > 0
    assert all(math.isfinite(v) for v in row["losses"].values())
