"""The ablation catalogue (params.yaml's ablations section): parsing with one-line errors, one run shared by
several sub-tables, each run's params valid through the normal config path, and the summary tables (means
and spreads by hand, the ordering sentence against the paper's numbers, the markdown)."""
import pytest
import yaml

from addlib import ablations as A
from addlib import config as C
from addlib.config import checks

CATALOGUE = yaml.safe_load("""
steps: 150
batch_size: 64
eval_samples: 1000
eval_steps: [1]
runs:
  base: {seeds: [0, 1, 2], overrides: {}}
  l1: {seeds: [0, 1, 2], overrides: {add: {distance: l1}}}
  adv_only: {seeds: [0], overrides: {add: {lambda_distill: 0.0}}}
  distill_only: {seeds: [0], overrides: {add: {lambda_adv: 0.0}}}
  no_cond: {seeds: [0], overrides: {add: {discriminator: {c_text: false, c_img: false}}}}
tables:
  distance: {mse: base, l1: l1}
  loss: {adversarial only: adv_only, distillation only: distill_only, "both, exponential": base}
  conditioning: {none: no_cond, both: base}
""")


def parse(catalogue):
    return C.from_dict(C.schema("ablations"), catalogue, "ablations")


def test_parse_and_shared_runs():
    cfg = parse(CATALOGUE)
    assert cfg.runs["base"].seeds == [0, 1, 2] and cfg.runs["l1"].overrides == {"add": {"distance": "l1"}}
    # a run's own step counts replace the section's for that run only
    own = parse({**CATALOGUE, "runs": {**CATALOGUE["runs"], "l1": {**CATALOGUE["runs"]["l1"], "eval_steps": [1, 4]}}})
    assert own.eval_steps_of("l1") == [1, 4] and own.eval_steps_of("base") == [1]
    shared = [t for t, rows in cfg.tables.items() if "base" in rows.values()]
    assert shared == ["distance", "loss", "conditioning"]  # trained once, read by three sub-tables


@pytest.mark.parametrize("change,message", [
    (lambda c: c["tables"]["loss"].update({"nfsd": "missing"}), "tables.loss.nfsd: no run named 'missing'"),
    (lambda c: c["runs"].update({"orphan": {"seeds": [0], "overrides": {}}}), "runs: runs in no table: orphan"),
    (lambda c: c["runs"]["l1"].update({"seeds": [0, 0]}), "runs.l1.seeds: needs at least one seed, all distinct"),
    (lambda c: c["runs"]["l1"].update({"sedes": [1]}), "runs.l1.sedes: unknown key"),
    (lambda c: c["runs"]["l1"].update({"overrides": {"seed": 3}}), "runs.l1.overrides: may not set 'seed'"),
    (lambda c: c["runs"].update({"a/b": {"seeds": [0], "overrides": {}}}), "runs.a/b: run names become"),
    (lambda c: c.update({"step": 3}), "ablations.step: unknown key"),
    (lambda c: c.update({"eval_steps": [2, 4]}), r"ablations.eval_steps: must hold 1 \(Table 1 is at one step\)"),
    (lambda c: c["runs"]["l1"].update({"eval_steps": [1, 2, 2]}), r"runs.l1.eval_steps: must hold 1 .* no repeats"),
])
def test_bad_catalogues_are_one_line_errors(change, message):
    import copy

    raw = copy.deepcopy(CATALOGUE)
    change(raw)
    with pytest.raises(C.ConfigError, match=message):
        parse(raw)


def test_each_run_is_valid_params_with_the_budget(root):
    raw = {**C.load_raw(root / "params.yaml"), "ablations": CATALOGUE}
    cfg = checks.parse(raw).ablations
    for name, run in cfg.runs.items():
        for seed in run.seeds:
            p = C.parse_run(raw, name, seed)
            assert p.seed == seed and p.add.train.steps == 150 and p.add.train.batch_size == 64
            assert p.add.train.sample_every == 0
    assert C.parse_run(raw, "l1", 0).add.distance == "l1"
    assert not C.parse_run(raw, "no_cond", 0).add.discriminator.c_img
    # a bad override is a one-line error when params.yaml is read, before any stage computes
    bad = {**raw, "ablations": {**CATALOGUE, "runs": {**CATALOGUE["runs"],
                                                      "l1": {"seeds": [0], "overrides": {"add": {"distance": "l3"}}}}}}
    with pytest.raises(C.ConfigError, match=r"ablations.runs.l1.overrides.add.distance: 'l3' is not one of"):
        checks.parse(bad, "params.yaml")


def test_the_committed_catalogue_covers_the_issue(root):
    """The default run's Table 1 (issue 37: three seeds for every row compared with the default, at a budget
    past the 1-step collapse; the paper's recipe beside the default, issue 38) and, merged over it,
    profiles/table1-extended.yaml: every sub-table the ablation issue names, the distances with three seeds
    each, and no run that is in no table or in both files. Random init (Table 1c) moved to the extended file
    (issue 37: rows rather than power; its FID is two orders of magnitude off in every run so far)."""
    cfg = checks.load(root / "params.yaml").ablations
    assert {"distance", "loss", "recipe", "c_img_pure_noise"} <= set(cfg.tables)
    assert all(len(run.seeds) >= 3 for run in cfg.runs.values()) and cfg.steps >= 200
    assert cfg.runs["default"].eval_steps == cfg.runs["paper"].eval_steps == [1, 2, 4]
    extended = C.read_yaml(root / "profiles" / "table1-extended.yaml")["ablations"]
    assert not set(extended["runs"]) & set(cfg.runs)
    full = checks.load(root / "params.yaml", root / "profiles" / "table1-extended.yaml").ablations
    assert {"distance", "loss", "features", "conditioning", "init", "teacher_steps", "multistep"} <= set(full.tables)
    dist = full.tables["distance"]
    assert {"mse", "l1", "pseudo_huber", "perceptual"} <= set(dist) and "default" in dist.values()
    assert all(len(run.seeds) >= 3 for run in full.runs.values())
    assert (full.steps, full.batch_size) == (cfg.steps, cfg.batch_size)  # one budget for every row


def test_summary_means_spreads_and_the_ordering_sentence():
    cfg = parse(CATALOGUE)
    res = {"base": {0: {"fid": 2.0, "recall": 0.6}, 1: {"fid": 3.0, "recall": 0.7}, 2: {"fid": 4.0, "recall": 0.8}},
           "l1": {0: {"fid": 5.0}, 1: {"fid": 5.0}, 2: {"fid": 8.0}},
           "adv_only": {0: {"fid": 2.5}}, "distill_only": {0: {"fid": 40.0}}, "no_cond": {0: {"fid": 1.0}}}
    out = A.summarise(cfg, res)
    mse, l1 = out["distance"]["rows"]
    assert (mse["fid"], mse["fid_std"], mse["seeds"]) == (3.0, 1.0, 3) and mse["recall"] == pytest.approx(0.7)
    assert (l1["fid"], l1["fid_std"]) == (6.0, pytest.approx(3 ** 0.5)) and l1["paper_fid"] is None
    assert mse["paper_fid"] == 20.6
    assert out["distance"]["ordering_matches_paper"] is None  # the paper has only the mse row
    # loss: here adv-only 2.5 < both 3.0 < distill-only 40; the paper: both 20.6 < adv-only 20.8 < distill-only
    assert out["loss"]["ordering_matches_paper"] is False and "differs" in out["loss"]["sentence"]
    # conditioning: none 1.0 < both 3.0 here; the paper: both 20.6 < none 21.2
    assert out["conditioning"]["ordering_matches_paper"] is False
    res["no_cond"][0]["fid"] = 9.0
    assert A.summarise(cfg, res)["conditioning"]["ordering_matches_paper"] is True
    md = A.markdown(A.summarise(cfg, res))
    assert "| mse | 3 | 3.00 ± 1.00 |" in md and "| l1 | 3 | 6.00 ± 1.73 |" in md and "| 20.6 |" in md
    assert md.count("### ") == 3 and "| none | 1 | 9.00 |" in md


def test_more_step_counts_and_training_costs_add_columns():
    """Rows scored at more student steps (eval_steps [1, 2, 4]) get FID columns per step count in both spaces
    where every row of the sub-table was scored at that count;
    a sub-table whose rows train different numbers of parameters (LoRA) gets the cost columns."""
    cfg = parse(CATALOGUE)
    cost = lambda n, mib, sec: {"trainable_parameters": n, "trained_state_mib": mib, "seconds_per_step": sec,  # noqa
                                "peak_memory_mib": 100 * mib}
    res = {"base": {s: {"fid": 2.0 + s, "fid@2": 1.0, "fid_detail@2": 5.0, "fid@4": 0.5, "fid_detail@4": 4.0,
                        **cost(1000, 8.0, 0.2)} for s in (0, 1, 2)},
           "l1": {s: {"fid": 5.0, "fid@2": 2.0 + s, "fid_detail@2": 6.0, "fid@4": 3.0, "fid_detail@4": 7.0,
                      **cost(100, 0.8, 0.1)} for s in (0, 1, 2)},
           "adv_only": {0: {"fid": 2.5, **cost(1000, 8.0, 0.2)}}, "distill_only": {0: {"fid": 40.0, **cost(1000, 8.0, 0.2)}},
           "no_cond": {0: {"fid": 1.0, **cost(1000, 8.0, 0.2)}}}
    out = A.summarise(cfg, res)
    l1 = out["distance"]["rows"][1]
    assert (l1["fid@2"], l1["fid@2_std"], l1["fid@4"]) == (3.0, 1.0, 3.0)
    md = A.markdown(out)
    distance, loss = md.split("### ")[1:3]
    assert ("| trainable parameters | trained state (MiB) | peak memory (MiB) | s / step | FID 2 steps | "
            "FID (detail) 2 steps | FID 4 steps") in distance
    assert "| 100 | 0.8 ± 0.0 | 80 ± 0 | 0.100 ± 0.000 | 3.00 ± 1.00 | 6.00 ± 0.00 | 3.00 ± 0.00 | 7.00 ± 0.00 |" in distance
    # the loss rows train the same parameters (no cost columns); adv_only and distill_only were scored at one
    # step only, so the sub-table has no step columns (base's FID@2 is not set against rows without one)
    assert "trainable parameters" not in loss and "| adversarial only | 1 | 2.50 |" in loss
    assert "steps |" not in loss and "| 20.8 |\n" in loss and "| 20.6 |\n" in loss
    # once every row has them, the columns appear
    for run in ("adv_only", "distill_only"):
        res[run][0].update({"fid@2": 7.0, "fid_detail@2": 8.0})
    loss = A.markdown(A.summarise(cfg, res)).split("### ")[2]
    assert "FID (detail) 2 steps |" in loss and "FID 4 steps" not in loss
    assert "| 20.8 | 7.00 | 8.00 |" in loss and "| 20.6 | 1.00 ± 0.00 | 5.00 ± 0.00 |" in loss


def test_a_run_parses_from_the_ablation_stages_restricted_params(root):
    """The ablation stage gets params restricted to its sections (the baseline's and the study's are None) and
    parses each run from them."""
    from addlib import stages as S

    p = S.stage_params("ablation", "params.yaml", root)
    assert p.preference is None and p.consistency is None and p.add is not None
    ps = C.parse_run(C.to_dict(p), "mse", 1)
    assert ps.add.distance == "mse" and ps.seed == 1 and ps.preference is None
    with pytest.raises(C.ConfigError, match="params.consistency: missing key"):
        C.parse({k: v for k, v in C.to_dict(p).items() if v is not None})  # every section unless told which


def test_the_paper_run_is_the_paper_profile_and_the_profile_is_the_papers_checklist(root):
    # Table 1's row "the paper's recipe" trains exactly profiles/paper.yaml's values, and those are the paper's
    # (shared/ADD_NOTES.md's checklist): no ODE term, noised data, lambda 2.5, mse, exponential c(t), one teacher
    # step, t ~ U for every input, c_img of the real x0, R1 1e-5, StyleGAN-T's augmentation
    from addlib import config as C

    profile = C.read_yaml(root / "profiles" / "paper.yaml")
    params = C.read_yaml(root / "params.yaml")
    assert params["ablations"]["runs"]["paper"]["overrides"] == profile
    assert params["ablations"]["runs"]["paper"]["seeds"] == [0, 1, 2]
    assert "paper" in params["ablations"]["tables"]["recipe"].values()
    p = checks.load(root / "params.yaml", root / "profiles" / "paper.yaml")
    a, d = p.add, p.add.discriminator
    assert (a.student_input, a.lambda_ode, a.lambda_distill, a.distance, a.weighting, a.teacher_steps,
            a.teacher_t_at_most_s, a.student_init, a.lambda_adv) == ("data", 0.0, 2.5, "mse", "exponential", 1, False,
                                                                     "teacher", 1.0)
    assert (d.c_text, d.c_img, d.c_img_pure_noise, d.c_img_noisy, d.r1_gamma) == (True, True, "real", "real", 1e-5)
    assert sorted(d.augment) == ["color", "cutout", "translation"]
    # no row label calls a run the paper's unless it is the paper's recipe
    for table, rows in params["ablations"]["tables"].items():
        for label, run in rows.items():
            if "paper" in label and run != "paper":
                assert "else ours" in label, (table, label)
