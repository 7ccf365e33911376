"""End to end: `dvc repro` of the smoke profile in the quick start's sandbox (a temporary copy of the repository)
runs every stage through papermill (the ablation runs generated from the profile's catalogue and the report included) and writes the
expected files and metrics; the report page holds every table and draws in headless Chromium; a second
`dvc repro` has nothing to do. And the stage bodies run under `accelerate launch` with two CPU processes."""
import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from addlib.quickstart import make_sandbox

BIN = Path(sys.executable).parent


def _sh(cmd, cwd, env):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _readme_commands(root) -> tuple[str, list[str], list[str]]:
    """The README's shell lines (comments cut) and Python blocks, and its line that enters the environment."""
    text = (root / "README.md").read_text()
    shell = [line.split("  #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)
             for line in block.splitlines() if line.strip()]
    enter = next(line for line in shell if line.startswith("source "))
    return enter, [c for c in shell if c != enter], re.findall(r"```python\n(.*?)```", text, re.S)


def _check_readme_commands(root, repo):
    """Every cheap command the README gives after `make repro` works as written in a fresh shell that entered
    the environment as the README says (not its `dvc exp run`, which trains: the stages it reruns are pinned by
    `dvc status` above); the make targets are the suite's own setup (repro, test) or open a server (lab).
    Outside the environment, one line says how to enter it."""
    enter, commands, python = _readme_commands(root)
    (repo / ".venv").symlink_to(root / ".venv")
    fresh = {"HOME": os.environ.get("HOME", "/tmp"), "PATH": "/usr/local/bin:/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    params = (repo / "params.yaml").read_text()
    ran = []
    for cmd in commands:
        if cmd.startswith("make "):
            assert cmd.split()[1] in ("repro", "test", "lab"), cmd
            continue
        if cmd.startswith("dvc exp run -S add."):  # trains; which stages it reruns is pinned by `dvc status` above,
            continue                                # and `dvc exp run` itself by the ablation run above
        r = subprocess.run(["bash", "-c", f"{enter} && {cmd}"], cwd=repo, env=fresh, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, f"README: {cmd}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        ran.append(cmd)
    (repo / "params.yaml").write_text(params)
    assert any(c.startswith("python -m addlib.sample") for c in ran) and (repo / "samples.png").is_file()
    assert any(c.startswith("dvc metrics show") for c in ran) and any(c.startswith("dvc exp show") for c in ran)
    for block in python:
        r = subprocess.run(["bash", "-c", f"{enter} && python -"], input=block, cwd=repo, env=fresh,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"README:\n{block}\n{r.stderr[-2000:]}"
    r = subprocess.run([sys.executable, "-S", "-m", "addlib.sample", "--help"], cwd=repo, env=fresh,
                       capture_output=True, text=True, timeout=60)  # -S: an interpreter without the packages
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode != 0 and len(lines) == 1 and enter in lines[0], r.stderr


def _reading(repo, declares) -> set[str]:
    """The stages of the sandbox's dvc.yaml (an ablation run as ablation@<run>) with a declared param that
    ``declares``."""
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    runs = yaml.safe_load((repo / "params.yaml").read_text())["ablations"]["runs"]
    out = set()
    for name, s in spec.items():
        if any(declares(str(p)) for p in s.get("do", s).get("params", [])):
            out |= {f"{name}@{r}" for r in runs} if "foreach" in s else {name}
    return out


@pytest.mark.slow
def test_dvc_repro_smoke_profile(tmp_path, root):
    # the quick start's sandbox (a copy without results, the profile applied, its own git repository)
    repo = make_sandbox(root, tmp_path / "repo", root / "profiles" / "smoke.yaml")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}

    r = _sh([str(BIN / "dvc"), "repro"], repo, env)
    for stage in ["check", "prepare", "teacher", "features", "add", "consistency", "evaluators", "solvers",
                  "evaluate", "preference", "diagnose"]:
        assert f"Running stage '{stage}'" in r.stdout, stage

    # every stage that trained pruned its run's checkpoints once its outputs were written
    assert not list((repo / "checkpoints").rglob("state.json"))
    card = json.loads((repo / "reports/data/card.json").read_text())
    assert card["images"] == 5000 and card["train"] == 4500 and card["resolution"] == 8
    assert card["distinct_captions"] == 60
    metrics = json.loads((repo / "reports/teacher/metrics.json").read_text())
    assert metrics["steps"] == 3 and 0 < metrics["final_loss"] < 10
    live = json.loads((repo / "reports/teacher/live/metrics.json").read_text())
    assert live["step"] == 3 and live["train"]["loss"] == pytest.approx(metrics["final_loss"])
    for f in ["reports/data/examples.png", "reports/teacher/samples.png", "reports/teacher/loss.png",
              "reports/executed/prepare.ipynb", "reports/executed/teacher.ipynb",
              "models/teacher/diffusion_pytorch_model.safetensors", "models/teacher/addlib_config.json",
              "reports/teacher/live/plots/metrics/train/loss.tsv",
              "reports/features/loss.png", "reports/features/embedding.png", "models/features/backbone.safetensors",
              "reports/add/samples.png", "reports/add/losses.png", "reports/add/logits.png",
              "reports/executed/features.ipynb", "reports/executed/add.ipynb",
              "models/student/diffusion_pytorch_model.safetensors", "models/student/addlib_config.json",
              "reports/add/live/plots/metrics/train/loss_G.tsv"]:
        assert (repo / f).is_file(), f
    # the executed notebook received the params file through papermill, and the stage wrote the typed params
    # it ran with: the smoke profile's, restricted to the sections dvc.yaml declares for the stage
    nb = json.loads((repo / "reports/executed/teacher.ipynb").read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    assert injected and 'params_file = "params.yaml"' in "".join(injected[0]["source"])
    resolved = json.loads((repo / "reports/teacher/config.json").read_text())
    assert resolved["config"]["teacher"]["train"]["steps"] == 3
    assert set(resolved["config"]) == {"seed", "data", "text_encoder", "teacher"}
    # the trained teacher loads as a diffusers model
    from diffusers import UNet2DConditionModel
    unet = UNet2DConditionModel.from_pretrained(repo / "models/teacher")
    assert unet.config.sample_size == 8 and unet.config.cross_attention_dim == 384

    features = json.loads((repo / "reports/features/metrics.json").read_text())
    assert features["steps"] == 3 and 0 <= features["linear_probe_accuracy"] <= 1
    add = json.loads((repo / "reports/add/metrics.json").read_text())
    assert add["steps"] == 3
    for k in ["final_loss_G", "final_loss_D", "final_loss_distill", "final_r1", "final_logits_real"]:
        assert k in add and add[k] == add[k], k  # logged and not NaN
    assert len(list((repo / "reports/add/progress").glob("step_*.png"))) == 1  # sample_every: 2 of 3 steps
    # the student as a diffusers pipeline: loads with from_pretrained and draws (tests/test_export.py: its images)
    from addlib.export import ADDPipeline
    pipe = ADDPipeline.from_pretrained(repo / "models/student-pipeline")
    assert pipe("a handwritten digit one", num_inference_steps=2, output_type="pt").images.shape == (1, 1, 8, 8)

    # the consistency baseline: ADD's budget, its model, grid and curve
    cd = json.loads((repo / "reports/consistency/metrics.json").read_text())
    assert cd["steps"] == 3 and cd["budget"]["steps"] == add["steps"] and math.isfinite(cd["final_loss"])
    for f in ["models/consistency/diffusion_pytorch_model.safetensors", "reports/consistency/samples.png",
              "reports/consistency/loss.png", "reports/executed/consistency.ipynb"]:
        assert (repo / f).is_file(), f
    _check_preference(repo)

    lock = (repo / "dvc.lock").read_text()
    assert all(f"{s}:" in lock for s in ["prepare", "teacher", "features", "add", "consistency", "evaluators",
                                         "solvers", "evaluate", "preference", "diagnose", "report"])
    # diagnose: the sampler cut after each student step, and one call at each student timestep for both networks
    diag = json.loads((repo / "reports/diagnostics/diagnostics.json").read_text())
    ts = diag["student_timesteps"]
    expected = {f"trace/{j + 1}/t{t}" for j, t in enumerate(ts)} | {"data"} | \
        {f"denoise/{n}/t{t}" for n in ("student", "teacher") for t in ts}
    assert set(diag["rows"]) == expected and diag["samples"] == yaml.safe_load(
        (root / "profiles/smoke.yaml").read_text())["evaluate"]["num_samples"]
    assert all(math.isfinite(r["fid"]) and 0 <= r["prompt_accuracy"] <= 1 for r in diag["rows"].values())
    assert (repo / "reports/diagnostics/refinement.png").is_file() and (repo / "reports/diagnostics/denoise.png").is_file()
    _check_ablations_and_report(repo, r.stdout, tmp_path)
    _check_budget_curve(repo, env, tmp_path)
    r = _sh([str(BIN / "dvc"), "repro"], repo, env)
    assert "Running stage" not in r.stdout
    r = _sh([str(BIN / "dvc"), "status"], repo, env)
    assert "up to date" in r.stdout
    # an experiment on ADD leaves the teacher's rows of Table 2 (stage solvers), Table 1's runs (they read their
    # own ADD settings, ablations.add) and every upstream stage as they are; a change to the student's step counts
    # only does not touch them either (issue 37). Table 1's settings rerun Table 1 and the report only.
    params = (repo / "params.yaml").read_text()
    runs = {f"ablation@{r}" for r in yaml.safe_load(params)["ablations"]["runs"]}
    for keys, value in [(["add", "lambda_distill"], 2.5), (["evaluate", "student_steps"], [1]),
                        (["ablations", "add", "lambda_distill"], 2.5)]:
        edited = yaml.safe_load(params)
        section = edited
        for k in keys[:-1]:
            section = section[k]
        assert section[keys[-1]] != value
        section[keys[-1]] = value
        (repo / "params.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
        stale = set(json.loads(_sh([str(BIN / "dvc"), "status", "--json"], repo, env).stdout))
        assert not stale & {"prepare", "teacher", "features", "evaluators", "solvers"}, stale
        if keys[0] == "ablations":
            assert stale == runs | {"report", "check"}, sorted(stale)
            continue
        assert "evaluate" in stale, sorted(stale)  # (Table 1 scores as evaluate does: it reads that section)
        if keys[-1] == "lambda_distill":  # exactly the stages that read it, and check (params.yaml is its dep)
            assert not stale & runs, sorted(stale)
            assert stale == _reading(repo, lambda p: p in ("add", "add.lambda_distill")) | {"check"}, stale
    (repo / "params.yaml").write_text(params)
    # an edit reruns only what it touches (issue 39): a new knob in add's schema, exactly the stages that read add
    # (and check, which reads every section); an edit of an ADD term, no stage upstream of the student
    for path in ["addlib/config/add.py", "addlib/objective.py"]:
        code = (repo / path).read_text()
        (repo / path).write_text(code + "\n# an edit\n")
        stale = set(json.loads(_sh([str(BIN / "dvc"), "status", "--json"], repo, env).stdout))
        (repo / path).write_text(code)
        assert {"add"} | runs <= stale and not stale & {"prepare", "teacher", "features", "evaluators"}, stale
        if path.endswith("add.py"):  # consistency reads add.train (ADD's budget); Table 1, ablations.add
            assert stale == _reading(repo, lambda p: p.split(".")[0] in ("add", "ablations")) | {"check"}, sorted(stale)
        else:
            assert not stale & {"solvers", "consistency", "check"}, sorted(stale)
    # `dvc plots show` draws with no network: every plot is an image, no script comes from a CDN
    _sh([str(BIN / "dvc"), "plots", "show", "-o", str(tmp_path / "dvc_plots")], repo, env)
    page = (tmp_path / "dvc_plots" / "index.html").read_text()
    assert "<script src=" not in page and "losses.png" in page and "loss.png" in page
    # `dvc metrics show` stays readable: a few flat numbers per file, no prose
    shown = json.loads(_sh([str(BIN / "dvc"), "metrics", "show", "--json"], repo, env).stdout)

    def leaves(o):
        return [v for x in o.values() for v in leaves(x)] if isinstance(o, dict) else [o]
    values = leaves(shown)
    assert 5 <= len(values) <= 80 and not any(isinstance(v, str) and len(v) > 40 for v in values), values
    assert "student_fid_1step" in json.dumps(shown)
    _check_readme_commands(root, repo)
    # `dvc exp run -S` rewrites params.yaml (and unquotes `mixed_precision: "no"`): the params still load, and
    # a change to one ablation run's entry reruns that run (after the check; the report is left out by the target)
    r = _sh([str(BIN / "dvc"), "exp", "run", "-S", "ablations.runs.l1.seeds=[1]", "ablation@l1"], repo, env)
    ran = set(re.findall(r"Running stage '([^']+)'", r.stdout))
    assert ran == {"check", "ablation@l1"}, ran  # check: params.yaml changed, its stamp did not
    assert json.loads((repo / "reports/ablations/runs/l1/metrics.json").read_text())["seeds"].keys() == {"1"}
    # A typo in params.yaml stops `dvc repro` at the check stage, before DVC removes any stage's outputs.
    params = (repo / "params.yaml").read_text()
    kept = [f for f in ["models/teacher/diffusion_pytorch_model.safetensors", "data/processed/dataset.safetensors",
                        "reports/teacher/samples.png", "reports/evaluate/figure4.png", "reports/html/index.html"]]
    (repo / "params.yaml").write_text(params.replace("teacher:\n", "teacher:\n  stpes_typo: 1\n", 1))
    bad = subprocess.run([str(BIN / "dvc"), "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "teacher.stpes_typo: unknown key" in bad.stdout + bad.stderr
    assert "Running stage 'teacher'" not in bad.stdout and all((repo / f).is_file() for f in kept)
    (repo / "params.yaml").write_text(params)
    # ... and a person's vote (notebooks/vote.ipynb appends to the vote file DVC tracks) reruns only the study
    from addlib import preference as P
    study = json.loads((repo / "models/preference/study.json").read_text())
    pairs = {q["id"]: P.Pair(**q) for q in study["pairs"]}
    P.append_vote(repo / "votes/human.jsonl", P.Vote("tester", next(iter(pairs)), "quality", "left", P.now()), pairs)
    r = _sh([str(BIN / "dvc"), "repro"], repo, env)  # the stamp is rewritten, unchanged: no computing stage reruns
    ran = set(re.findall(r"Running stage '([^']+)'", r.stdout))
    assert ran == {"check", "preference", "report"}, ran
    human = json.loads((repo / "reports/preference/results.json").read_text())["human"]
    assert human["votes"] == 1 and human["questions"]["quality"]["games"] == 1

    # evaluators: both networks trained and read out
    ev = json.loads((repo / "reports/evaluators/metrics.json").read_text())
    assert ev["classifier"]["steps"] == 3 and 0 <= ev["classifier"]["holdout_accuracy"] <= 1
    assert ev["clip"]["steps"] == 3 and 0 <= ev["clip"]["holdout_zero_shot_accuracy"] <= 1
    assert ev["detail"]["steps"] == 3 and ev["detail"]["feature_dim"] == 4 * 2 * 2  # code 4 x (8 / 2^2)^2
    for f in ["models/evaluators/classifier.safetensors", "models/evaluators/clip.safetensors",
              "models/evaluators/detail.safetensors"]:
        assert (repo / f).is_file(), f
    # evaluate: every row of the comparison, every column, finite metrics, targets computed
    from addlib.evaluation import COLUMNS
    with open(repo / "reports/tables/comparison.csv") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    smoke = yaml.safe_load((root / "profiles/smoke.yaml").read_text())["evaluate"]
    expected = [("teacher", s, k) for s in ["ddim", "dpmsolver++"] for k in smoke["teacher_steps"]] + \
               [("student", "add", k) for k in smoke["student_steps"]] + \
               [("consistency", "lcm", k) for k in smoke["student_steps"]]
    assert [(r["model"], r["sampler"], int(r["steps"])) for r in rows] == expected
    for r in rows:
        for c in ["nfe", "guidance", "seconds_per_image", "images_per_second", "fid", "precision", "recall",
                  "fid_detail", "precision_detail", "recall_detail", "clip_score", "prompt_accuracy"]:
            assert math.isfinite(float(r[c])), (r, c)
        assert float(r["guidance"]) in smoke["guidance_candidates"]
    ev = json.loads((repo / "reports/metrics/evaluate.json").read_text())
    assert ev["num_samples"] == smoke["num_samples"] and ev["fid_floor_split_halves"] >= 0
    assert "student1_fid_below_teacher4_best" in ev["targets"] and ev["targets_total"] == len(ev["targets"])
    assert set(ev["student_fid_over_seeds"]) == {f"student/add/{k}" for k in smoke["student_steps"]}
    md = (repo / "reports/tables/comparison.md").read_text()
    assert md.count("\n") == len(expected) + 2
    assert set(ev["zero_shot_rows"]) == {f"student/add/{k}" for k in smoke["student_steps"]}  # zero-shot prompts
    assert all(math.isfinite(r["fid"]) for r in ev["zero_shot_rows"].values())
    calib = json.loads((repo / "reports/metrics/calibration.json").read_text())  # every set, every metric
    assert len(calib) == 8 and all(math.isfinite(r["fid"]) and math.isfinite(r["fid_detail"]) for r in calib.values())
    for f in ["reports/evaluate/fid_vs_nfe.png", "reports/evaluate/quality_vs_time.png", "reports/evaluate/figure4.png",
              "reports/executed/evaluate.ipynb", "reports/executed/evaluators.ipynb"]:
        assert (repo / f).is_file(), f


@pytest.mark.slow
def test_stage_bodies_run_under_accelerate_launch(tmp_path, root):
    """The multi-GPU path: the stage bodies run directly (no notebook, no DVC; `--direct`), then `add`, `solvers`
    and `evaluate` under `accelerate launch` with two CPU processes (gloo): the student trains data-parallel, the
    evaluation sampling is split and gathered, and the main process writes the reports. Its own sandbox, so it runs
    beside the `dvc repro` test under `make test`'s two workers; Table 2 cut to one teacher row (one sampler,
    one guidance) and the student's and the baseline's two step counts."""
    from addlib import config as C

    profile = C.deep_merge(C.read_yaml(root / "profiles/smoke.yaml"), {"evaluate": {
        "teacher_samplers": ["ddim"], "teacher_steps": [2], "grid_steps": [2], "guidance_candidates": [1.0],
        "speed_repeats": 1}, "preference": {"comparisons": [["add@1", "teacher@2"]]}})  # no teacher@4 row now
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    repo = make_sandbox(root, tmp_path / "repo", tmp_path / "profile.yaml")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    for stage in ["prepare", "teacher", "features", "evaluators", "consistency"]:
        _sh([sys.executable, "-m", "addlib.stages", stage, "--direct"], repo, env)
    assert not (repo / "reports/executed").exists()  # no notebook ran
    env2 = {**env, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    for stage in ["add", "solvers", "evaluate"]:
        _sh([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
             "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29519",
             "-m", "addlib.stages", stage, "--direct"], repo, env2)
    add = json.loads((repo / "reports/add/metrics.json").read_text())
    assert add["steps"] == 3 and math.isfinite(add["final_loss_G"]) and math.isfinite(add["final_loss_D"])
    assert (repo / "models/student/diffusion_pytorch_model.safetensors").is_file()
    ev = json.loads((repo / "reports/metrics/evaluate.json").read_text())
    expected = {"teacher/ddim/2"} | {f"{m}/{k}" for m in ("student/add", "consistency/lcm") for k in (1, 2)}
    assert set(ev["rows"]) == expected and ev["num_samples"] == profile["evaluate"]["num_samples"]
    assert all(math.isfinite(r["fid"]) and math.isfinite(r["fid_detail"]) for r in ev["rows"].values())
    assert set(ev["zero_shot_rows"]) == {"student/add/1", "student/add/2"}
    with open(repo / "reports/tables/comparison.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(expected)  # written once, by the main process
    assert (repo / "reports/evaluate/figure4.png").is_file()


def _check_preference(repo: Path) -> None:
    """The study: every comparison on every prompt and noise, two automatic votes per pair, the raters checked on
    real images, no human votes yet; its tables, figures and the images people vote on."""
    cfg = yaml.safe_load((repo / "params.yaml").read_text())["preference"]
    res = json.loads((repo / "reports/preference/results.json").read_text())
    n = len(cfg["comparisons"]) * cfg["prompts"] * cfg["seeds"]
    assert res["pairs"] == n and res["automatic"]["votes"] == 2 * n and res["human"]["votes"] == 0
    for q in ("prompt", "quality"):
        auto = res["automatic"]["questions"][q]
        assert auto["games"] == n and set(auto["win"]) == {f"{a} vs {b}" for a, b in cfg["comparisons"]}
        assert all(0 <= w["low"] <= w["win_rate"] <= w["high"] <= 1 for w in auto["win"].values())
        assert set(auto["elo"]) == {m for c in cfg["comparisons"] for m in c}
        check = res["rater_validation"][q]
        assert all(0 <= check[k] <= 1 for k in ("real_over_failure", "real_vs_real", "real_vs_teacher@1"))
        assert check["pairs"] == cfg["prompts"] * cfg["seeds"] * cfg["check_reals"]
        assert check["passed"] == (check["real_over_failure"] >= cfg["check_min"]
                                   and abs(check["real_vs_real"] - 0.5) <= cfg["check_band"])
        assert (f"the {q} rater failed its check" in res["sentence"]) == (not check["passed"])
    assert set(res["automatic"]["elo_average"]) == {m for c in cfg["comparisons"] for m in c}
    assert all(math.isfinite(res["seconds_per_image"][m]) for m in res["models"])
    for f in ["reports/tables/preference.md", "reports/preference/win_rates.png", "reports/preference/elo_vs_speed.png",
              "models/preference/images.safetensors", "reports/executed/preference.ipynb"]:
        assert (repo / f).is_file(), f


def _check_budget_curve(repo: Path, env: dict, tmp_path: Path) -> None:
    """python -m addlib.budget_curve (issue 37's budget benchmark), stopping after every step of the smoke
    budget: its last point is the ablation stage's row of the same run and seed, to the digit (the same training
    path, resumed at each stop, and the same scoring), and the points before it are other students."""
    out = tmp_path / "budget" / "l1.json"
    _sh([str(BIN / "python"), "-m", "addlib.budget_curve", "--run", "l1", "--seed", "0", "--steps", "2",
         "--batch-size", "8", "--every", "1", "--samples", "16", "--eval-steps", "1", "2", "--out", str(out)],
        repo, env)
    curve = json.loads(out.read_text())
    row = json.loads((repo / "reports/ablations/runs/l1/metrics.json").read_text())["seeds"]["0"]
    assert [p["step"] for p in curve["points"]] == [1, 2] and curve["overrides"] == {"add": {"distance": "l1"}}
    for k in ("fid", "recall", "fid_detail", "recall_detail", "prompt_accuracy", "fid@2", "fid_detail@2"):
        assert curve["points"][1][k] == pytest.approx(row[k], rel=1e-6, abs=1e-9), k
    assert curve["points"][0]["fid"] != curve["points"][1]["fid"]
    assert out.with_suffix(".md").read_text().count("\n| ") == 3  # header and one line per point


def _check_ablations_and_report(repo: Path, log: str, tmp_path: Path) -> None:
    """One stage per ablation run in params.yaml, each with its seeds scored; Table 1 with every sub-table;
    the index page holds Table 1's and Table 2's tables, links the stage pages, and Chromium draws it."""
    import re

    from PIL import Image

    from addlib import ablations as A
    from addlib import report as R

    params = yaml.safe_load((repo / "params.yaml").read_text())["ablations"]
    assert params["steps"] == 2 and params["eval_samples"] == 16  # the smoke budget
    assert params["runs"] == yaml.safe_load((Path(__file__).parents[1] / "profiles/smoke.yaml").read_text())[
        "ablations"]["runs"]  # the profile's runs replaced the default's
    for run, spec in params["runs"].items():
        assert f"Running stage 'ablation@{run}'" in log, run
        m = json.loads((repo / f"reports/ablations/runs/{run}/metrics.json").read_text())
        assert m["steps"] == 2 and [int(k) for k in m["seeds"]] == spec["seeds"]
        at_2 = ["fid@2", "fid_detail@2"] if spec.get("eval_steps") == [1, 2] else []  # a run's own step counts
        for seed in m["seeds"].values():
            assert seed["steps"] == 2 and all(math.isfinite(seed[k]) for k in
                                              ["fid", "precision", "recall", "clip_score", "prompt_accuracy",
                                               "seconds_per_step", "trained_state_mib"] + at_2)
            assert ("fid@2" in seed) == bool(at_2)
        assert (repo / f"reports/ablations/runs/{run}/samples.png").is_file()
        assert (repo / f"reports/executed/ablations/{run}.ipynb").is_file()
    # the F-architecture run pretrained its own F; the random-F run did not
    assert "feature_network_pretraining" in json.loads((repo / "reports/ablations/runs/f_smaller/metrics.json").read_text())
    assert "feature_network_pretraining" not in json.loads((repo / "reports/ablations/runs/f_random/metrics.json").read_text())
    resolved = json.loads((repo / "reports/ablations/runs/l1/config.json").read_text())["config"]
    assert {k: v["add"]["distance"] for k, v in resolved.items()} == {"seed 0": "l1", "seed 1": "l1", "seed 2": "l1"}

    table1 = json.loads((repo / "reports/ablations/table1.json").read_text())
    assert set(table1) == set(params["tables"])
    for name, t in table1.items():
        assert [r["row"] for r in t["rows"]] == list(params["tables"][name]) and t["sentence"]
    assert [r["seeds"] for r in table1["distance"]["rows"]] == [len(params["runs"][run]["seeds"]) for run in
                                                                params["tables"]["distance"].values()]
    md = (repo / "reports/tables/table1.md").read_text()
    assert md.count("### ") == len(params["tables"])
    with_steps = [t.split("\n")[0] for t in md.split("### ")[1:] if "| FID 2 steps | FID (detail) 2 steps |" in t]
    assert with_steps == [A.TITLES["distance"]]  # the one sub-table whose rows were all scored at 2 steps
    assert (repo / "reports/ablations/table1.png").is_file()

    page = (repo / "reports/html/index.html").read_text()
    ids = set(re.findall(r'<table[^>]*\bid="([^"]+)"', page))  # nbconvert may reorder attributes
    assert {"table2", "targets", "networks", "calibration", "zero-shot", "budget"} | {f"table1-{name}" for name in params["tables"]} <= ids
    assert "def " not in page and "import " not in page  # rendered without code
    assert page.count("data:image/png;base64,") >= 10  # figures inside the page
    linked = re.findall(r'href="(stages/[^"]+\.html)"', page)
    assert {"stages/evaluate.html", "stages/consistency.html", "stages/preference.html",
            "stages/ablation-default.html"} <= set(linked)
    assert 'id="sec-preference"' in page
    # Table 1 is on the main run's ADD settings (the smoke profile's add applied to both): the page says so
    assert re.search(r'id="table1-base">Table 1\'s ADD settings .* are the main run\'s', page)
    assert all((repo / "reports/html" / ln).is_file() for ln in linked)
    assert (repo / "reports/html/stages/style.css").is_file()
    png = R.screenshot(repo / "reports/html/index.html", tmp_path / "index.png", width=1280, height=2400)
    im = Image.open(png).convert("RGB")
    assert im.size == (1280, 2400) and len(im.getcolors(maxcolors=1 << 20)) > 50  # drawn, not blank
