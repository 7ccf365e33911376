"""The ablation catalogue (params.yaml's ablations section): parsing with one-line errors, one run shared by
several sub-tables, each run's params valid through the normal config path, and the summary tables (means
and spreads by hand, the ordering sentence against the paper's numbers, the markdown)."""
from pathlib import Path

import pytest
import yaml

from addlib import ablations as A
from addlib import config as C
from addlib.config import checks

ROOT = Path(__file__).resolve().parents[1]
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
""") | {"add": C.table1_add(C.read_yaml(ROOT / "params.yaml")["add"])}


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
    (lambda c: c["add"]["train"].update({"steps": 1500}), r"ablations.add.train.steps: Table 1's budget is ablations"),
    (lambda c: c["add"].update({"lambda_distil": 2.5}), r"ablations.add.lambda_distil: unknown key \(did you mean"),
    (lambda c: c["add"].pop("distance"), r"ablations.add.distance: missing key"),
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
    # every run starts from Table 1's ADD settings, never from the main run's add: an experiment on add leaves
    # Table 1's runs as they are, and ablations.add changes every run but where a run overrides the key
    main = {**raw, "add": C.deep_merge(raw["add"], {"lambda_distill": 2.5, "distance": "mse"})}
    assert C.parse_run(main, "base", 0) == C.parse_run(raw, "base", 0)
    ours = {**raw, "ablations": C.deep_merge(CATALOGUE, {"add": {"lambda_distill": 2.5, "distance": "mse"}})}
    assert C.parse_run(ours, "base", 0).add.lambda_distill == C.parse_run(ours, "l1", 0).add.lambda_distill == 2.5
    assert (C.parse_run(ours, "base", 0).add.distance, C.parse_run(ours, "l1", 0).add.distance) == ("mse", "l1")
    assert C.parse_run(raw, "base", 0).add.lambda_distill == raw["add"]["lambda_distill"] == 10.0
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
    assert p.preference is None and p.consistency is None and p.add is None  # the main run's add: not read
    ps = C.parse_run(C.to_dict(p), "mse", 1)
    assert ps.add.distance == "mse" and ps.seed == 1 and ps.preference is None
    assert ps.add.lambda_distill == p.ablations.add["lambda_distill"] and ps.add.train.steps == p.ablations.steps
    restricted = C.parse_run(C.to_dict(p), "mse", 1, sections=S.stage_sections("ablation", root))
    assert restricted.add == ps.add  # as stages.check_stage parses it: add is built, so it is checked
    with pytest.raises(C.ConfigError, match="params.add: missing key"):
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


def test_the_report_says_where_table1s_settings_differ_from_the_main_runs():
    """Table 1 reads its own ADD settings (ablations.add): the report compares them, typed, with the main run's
    add, the main run's budget aside, and names every key that differs (nested ones by their dotted path)."""
    from addlib import report as R

    p = checks.load(ROOT / "params.yaml")
    ours, main = C.to_dict(p.ablations.add_config()), C.to_dict(p.add)
    assert ours["train"]["steps"] == p.ablations.steps != main["train"]["steps"]
    assert A.departures(ours, main) == {}
    assert "are the main run's" in R.table1_base_html(ours, main)
    edited = C.deep_merge(main, {"lambda_distill": 2.5, "discriminator": {"ode_steps": 4}, "lora": {"rank": 4},
                                 "train": {"batch_size": 8, "lr_student": 1.0e-4}})
    assert A.departures(ours, edited) == {"lambda_distill": (10.0, 2.5), "lora.rank": (None, 4),
                                          "discriminator.ode_steps": (8, 4), "train.lr_student": (5.0e-5, 1.0e-4)}
    html = R.table1_base_html(ours, edited)
    assert "differ from the main run's" in html and "in 4 keys" in html and "train.batch_size" not in html
    assert "<code>discriminator.ode_steps</code> (Table 1: 8, the main run: 4)" in html


def test_the_ordering_sentence_weighs_each_pair_against_the_seeds_spread():
    """Each pair the paper orders: whether it holds here and whether its gap is larger than the sum of the two
    rows' standard deviations (by hand below); a one-seed row has no spread, so its pairs are not judged."""
    cfg = parse(CATALOGUE)
    res = {"base": {0: {"fid": 2.0}, 1: {"fid": 3.0}, 2: {"fid": 4.0}},           # 3.0 ± 1.0
           "adv_only": {0: {"fid": 4.5}, 1: {"fid": 5.0}, 2: {"fid": 5.5}},       # 5.0 ± 0.5
           "distill_only": {0: {"fid": 3.8}, 1: {"fid": 4.0}, 2: {"fid": 4.2}},   # 4.0 ± 0.2
           "l1": {0: {"fid": 5.0}}, "no_cond": {0: {"fid": 1.0}}}
    loss = A.summarise(cfg, res)["loss"]
    pairs = {(q["paper_better"], q["paper_worse"]): q for q in loss["pairs"]}
    # the paper: both 20.6 < adversarial only 20.8 < distillation only 315.6
    assert set(pairs) == {("adversarial only", "distillation only"), ("both, exponential", "adversarial only"),
                          ("both, exponential", "distillation only")}
    q = pairs[("adversarial only", "distillation only")]  # 4.0 - 5.0: reversed, by more than 0.5 + 0.2
    assert (q["holds"], q["gap"], q["beyond_spread"]) == (False, pytest.approx(-1.0), True)
    assert q["spread"] == pytest.approx(0.7)
    q = pairs[("both, exponential", "adversarial only")]  # 5.0 - 3.0 > 1.0 + 0.5
    assert (q["holds"], q["gap"], q["spread"], q["beyond_spread"]) == (True, 2.0, 1.5, True)
    q = pairs[("both, exponential", "distillation only")]  # 4.0 - 3.0 within 1.0 + 0.2
    assert (q["holds"], q["beyond_spread"]) == (True, False) and q["spread"] == pytest.approx(1.2)
    assert loss["ordering_matches_paper"] is False
    assert loss["sentence"].endswith("1 of 3 pairs is within the seeds' spread (the sum of the two standard "
                                     "deviations), so their order is not settled here: both, exponential against "
                                     "distillation only, gap +1.00 within 1.20.")
    # every pair apart: the smallest gap is named with its spread
    res["distill_only"] = {0: {"fid": 39.0}, 1: {"fid": 40.0}, 2: {"fid": 41.0}}  # 40.0 ± 1.0
    loss = A.summarise(cfg, res)["loss"]
    assert loss["ordering_matches_paper"] is True and all(q["beyond_spread"] for q in loss["pairs"])
    assert loss["sentence"].endswith("Every pair's gap is larger than the seeds' spread (the sum of the two standard "
                                     "deviations): the smallest, 2.00 against 1.50.")
    # a one-seed row: its pairs are not judged
    res["adv_only"] = {0: {"fid": 5.0}}
    loss = A.summarise(cfg, res)["loss"]
    assert [q["beyond_spread"] for q in loss["pairs"]].count(None) == 2
    assert "(2 with a one-seed row not judged)" in loss["sentence"]
    res["base"] = {0: {"fid": 3.0}}
    assert "no pair is judged" in A.summarise(cfg, res)["loss"]["sentence"]
