"""The step profiler (``python -m addlib.step_profile``, issue 37's benchmark) on the smoke profile's sizes: it
writes every labelled part of the step, and the UNet evaluations it counts are the ones the step's draws imply
(counted here by hand from ``draw_step``): the teacher's solves and target, the student's forward and its
backward-simulation calls. Timing is not asserted (benchmarks, not timed tests)."""
import json
from pathlib import Path


from addlib.config import checks
from addlib import step_profile
from addlib.objective import draw_step
from addlib.training import step_generator

from conftest import ROOT


def test_the_profile_counts_the_unet_rows_the_draws_imply(tmp_path):
    out = tmp_path / "profile.json"
    assert step_profile.main(["--params", str(ROOT / "params.yaml"), "--profile", str(ROOT / "profiles" / "smoke.yaml"),
                              "--steps", "1", "--text-width", "16", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    add = result["add"]
    assert set(add["parts_seconds_per_step"]) == set(step_profile.PARTS)
    assert 0 < sum(add["parts_seconds_per_step"].values()) <= add["seconds_per_step"] * 1.001
    assert out.with_suffix(".md").read_text().count("|") > 4 * len(step_profile.PARTS)
    # the counted step is step 0 of seed 0: its draws, and the rows they imply (smoke: lambda_ode > 0, backward
    # simulation, both c_img solves, one teacher step at guidance 1 for the target)
    p = checks.load(ROOT / "params.yaml", ROOT / "profiles" / "smoke.yaml")
    cfg, n = p.add, p.add.train.batch_size
    assert cfg.student_input == "student" and cfg.lambda_ode > 0 and cfg.teacher_guidance == 1.0
    assert cfg.discriminator.ode_guidance == 1.0 and cfg.teacher_steps == 1
    shape = (p.data.channels, p.data.resolution, p.data.resolution)
    d = draw_step(cfg, step_generator(0, 0), step_generator(0, 0, stream=1), n, shape, shape, 1000)
    tau = list(cfg.student_timesteps)
    solve_steps = sum(-(-cfg.discriminator.ode_steps * (int(s) + 1) // 1000) for s in d.s)
    chain = sum(tau.index(int(s)) for s in d.s)          # calls the sampler makes before s
    assert add["unet_evaluations_per_step"]["teacher"]["rows"] == solve_steps + n
    assert add["unet_evaluations_per_step"]["student"]["rows"] == chain + n
    assert add["unet_evaluations_per_step"]["teacher"]["calls"] == cfg.discriminator.ode_steps + 1
    assert result["add_image_cost_in_teacher_images"] > 0
    assert result["allocator"] == (step_profile.loaded() or "system")


def test_the_solve_check_compares_each_solver_with_the_fine_solve(smoke_params, tiny_data):
    """python -m addlib.solve_check (issue 37: is a cheaper solve as close to a fine one as the default's?) on a
    tiny random teacher: the fine solver itself is 0 away, another solver with as many steps is not, and each row
    takes the step's number of calls (K from pure noise, ceil(K (s + 1) / T) from s)."""
    import torch

    from addlib import solve_check
    from addlib.data import to_float
    from addlib.diffusion import NoiseSchedule
    from addlib.latent import PixelSpace, Teacher
    from addlib.models import build_unet

    ds, cache = tiny_data
    torch.manual_seed(0)
    unet = build_unet(smoke_params.teacher.unet, 8, 1, cache.states.shape[-1]).eval()
    teacher = Teacher(unet, NoiseSchedule(smoke_params.teacher.schedule), PixelSpace(), "random")
    states, mask, _ = cache[cache.rows(ds.captions[:6])]
    rows = solve_check.compare(teacher, to_float(ds.images[:6]), states, mask,
                               tuple(a for a in cache[torch.tensor([0])][:2]), [999, 499, 249],
                               ["ddim@8", "dpmsolver++@8", "ddim@2"], fine=8, guidance=1.0)
    assert {k: r["calls"] for k, r in rows.items()} == {
        "ddim@8/t999": 8, "ddim@8/t499": 4, "ddim@8/t249": 2, "dpmsolver++@8/t999": 8, "dpmsolver++@8/t499": 4,
        "dpmsolver++@8/t249": 2, "ddim@2/t999": 2, "ddim@2/t499": 1, "ddim@2/t249": 1}
    assert all(rows[f"ddim@8/t{s}"]["rms_to_fine"] == 0 for s in (999, 499, 249))
    assert rows["dpmsolver++@8/t999"]["rms_to_fine"] > 0 and rows["dpmsolver++@8/t499"]["rms_to_fine"] > 0
    assert rows["ddim@2/t999"]["rms_to_fine"] > 0
    assert rows["dpmsolver++@8/t249"]["rms_to_fine"] < 1e-5  # 2 steps: one update, the first, which is DDIM's
    table = solve_check.markdown({"samples": 6, "fine": 8, "rows": rows})
    assert table.count("\n| ") == 4 and "0.0000 (8)" in table  # the header and a row per solver
    assert solve_check.main(["--solvers", "heun@4"]) == 2 and solve_check.main(["--samples", "0"]) == 2


def test_the_budget_curves_set_values_go_into_the_runs_overrides_and_bad_ones_stop_before_compute(tmp_path):
    """python -m addlib.budget_curve --set key.path=value: merged into the run's overrides (values read as YAML,
    the run's own overrides kept), other runs untouched; a malformed pair, an unknown run, an unknown key or a
    bad --every is one line and exit 2 before anything is loaded (the e2e test pins the curve's points against
    the ablation stage's row: tests/test_pipeline.py)."""
    import pytest

    from addlib import budget_curve as B
    from addlib import config as C

    raw = {"ablations": {"runs": {"l1": {"seeds": [0], "overrides": {"add": {"distance": "l1"}}},
                                  "other": {"seeds": [0], "overrides": {}}}}}
    out = B.with_values(raw, "l1", ["add.discriminator.ode_steps=6", "add.discriminator.ode_solver=dpmsolver++"])
    assert out["ablations"]["runs"]["l1"]["overrides"] == {
        "add": {"distance": "l1", "discriminator": {"ode_steps": 6, "ode_solver": "dpmsolver++"}}}
    assert out["ablations"]["runs"]["other"] == raw["ablations"]["runs"]["other"]
    assert raw["ablations"]["runs"]["l1"]["overrides"] == {"add": {"distance": "l1"}}  # not mutated
    for bad in (["add.distance"], ["=3"]):
        with pytest.raises(C.ConfigError, match="key.path=value"):
            B.with_values(raw, "l1", bad)
    with pytest.raises(C.ConfigError, match="not in ablations.runs"):
        B.with_values(raw, "nope", [])
    root = Path(__file__).parents[1]
    assert B.main(["--root", str(root), "--steps", "4", "--batch-size", "2", "--every", "2",
                   "--set", "add.not_a_key=1"]) == 2
    with pytest.raises(SystemExit):
        B.main(["--steps", "4", "--batch-size", "2", "--every", "8"])
