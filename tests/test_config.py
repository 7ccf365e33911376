"""params.yaml -> typed config: strict keys, types and ranges; profiles merge without changing the path."""
import subprocess
import sys

import pytest
import yaml

from addlib import config
from addlib.config import checks


def test_default_and_smoke_params_parse(root, smoke_params):
    default = checks.load(root / "params.yaml")
    assert default.teacher.schedule.num_train_timesteps == 1000
    assert smoke_params.teacher.train.steps < default.teacher.train.steps
    assert smoke_params.data.resolution < default.data.resolution
    # the profile only changes values: untouched keys keep params.yaml's values
    assert smoke_params.text_encoder == default.text_encoder


@pytest.mark.parametrize("profile", ["quickstart", "sd-gpu", "sdxl-gpu"])
def test_every_profile_merges_into_valid_params(root, profile):
    p = checks.load(root / "params.yaml", root / "profiles" / f"{profile}.yaml")
    if profile.endswith("-gpu"):  # the stock checkpoints' schedules; an epsilon student on it (SDXL), else v at 0 SNR
        assert not p.teacher.schedule.rescale_zero_terminal_snr and p.teacher.pretrained == p.text_encoder.path
        assert p.add.student_zero_terminal_snr == (p.teacher.schedule.prediction_type == "v_prediction")


def test_deep_merge_keeps_siblings():
    merged = config.deep_merge({"a": {"x": 1, "y": 2}, "b": [1, 2]}, {"a": {"y": 3}, "b": [9]})
    assert merged == {"a": {"x": 1, "y": 3}, "b": [9]}


def _raw(root):
    return yaml.safe_load((root / "params.yaml").read_text())


def test_unknown_key_is_named_with_suggestion(root):
    raw = _raw(root)
    raw["teacher"]["train"]["lrr"] = 0.1
    with pytest.raises(config.ConfigError, match=r"teacher\.train\.lrr: unknown key \(did you mean 'lr'\?\)"):
        checks.parse(raw)


@pytest.mark.parametrize("path,value,match", [
    (("teacher", "train", "lr"), -1.0, r"teacher\.train\.lr: must be > 0"),
    (("teacher", "train", "steps"), "ten", r"teacher\.train\.steps: expected an integer"),
    (("teacher", "sample", "sampler"), "heun", r"teacher\.sample\.sampler: 'heun' is not one of"),
    (("data", "resolution"), 10, r"data\.resolution: must be a multiple of 4"),
    (("teacher", "unet", "cross_attention"), [True], r"teacher\.unet\.cross_attention: needs one entry"),
    (("teacher", "train", "cond_dropout"), 1.5, r"teacher\.train\.cond_dropout: must be in \[0, 1\)"),
    # zero divisors, caught before the modulo that would raise ZeroDivisionError
    (("features", "patch_size"), 0, r"features\.patch_size: must be >= 1, got 0"),
    (("features", "num_heads"), 0, r"features\.num_heads: must be >= 1, got 0"),
    (("teacher", "unet", "norm_num_groups"), 0, r"teacher\.unet\.norm_num_groups: must be >= 1, got 0"),
    (("teacher", "unet", "attention_head_dim"), 0, r"teacher\.unet\.attention_head_dim: must be >= 1, got 0"),
    # negative or non-finite numbers
    (("add", "teacher_guidance"), -5, r"add\.teacher_guidance: must be >= 0, got -5"),
    (("add", "teacher_guidance"), float("nan"), r"add\.teacher_guidance: expected a finite number, got nan"),
    (("add", "teacher_guidance"), "nan", r"add\.teacher_guidance: expected a finite number"),  # YAML: nan
    (("add", "nfsd_guidance"), -5, r"add\.nfsd_guidance: must be >= 0, got -5"),
    (("add", "lambda_ode"), -1.0, r"add\.lambda_ode: must be >= 0, got -1\.0"),
    (("add", "student_input"), "teacher", r"add\.student_input: 'teacher' is not one of 'data', 'student'"),
    (("add", "simulated_samplers"), [4, 4], r"add\.simulated_samplers: must be distinct step counts, got \[4, 4\]"),
    (("teacher", "train", "lr"), float("inf"), r"teacher\.train\.lr: expected a finite number, got inf"),
    (("evaluators", "num_threads"), -3, r"evaluators\.num_threads: must be >= 0, got -3"),
    (("evaluate", "num_threads"), -3, r"evaluate\.num_threads: must be >= 0, got -3"),
    (("features", "pretrain", "probe_steps"), -1, r"features\.pretrain\.probe_steps: must be >= 1, got -1"),
    (("seed",), -1, r"params\.seed: seeds must be >= 0, got -1"),
    (("features", "timm_name"), "hf-hub:timm/vit_small_patch14_dinov2.lvd142m",
     r"features\.timm_name: 'hf-hub:timm/vit_small_patch14_dinov2\.lvd142m' would download"),
    (("data", "split_seed"), -2, r"data\.split_seed: seeds must be >= 0"),
    (("ablations", "runs", "default", "seeds"), [0, -1], r"ablations\.runs\.default\.seeds: seeds must be >= 0"),
])
def test_bad_values_are_one_line_errors(root, path, value, match):
    raw = _raw(root)
    node = raw
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    with pytest.raises(config.ConfigError, match=match) as e:
        checks.parse(raw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("edit,match", [
    (lambda r: r["add"].update(weighting="nfsd", nfsd_negative_prompt=" "),
     r"add\.nfsd_negative_prompt: is the empty \(unconditional\) prompt, so NFSD's delta_D"),
    (lambda r: r["add"].update(student_timesteps=[1500, 999]), r"add\.student_timesteps: timesteps must be < num_train_timesteps=1000"),
    (lambda r: r["add"].update(teacher_t_range=[20, 5000]), r"add\.teacher_t_range: hi must be < num_train_timesteps=1000"),
    (lambda r: r["evaluate"].update(student_steps=[1, 3]), r"evaluate\.student_steps: \[3\] not possible"),
    (lambda r: r["teacher"]["schedule"].update(prediction_type="epsilon", rescale_zero_terminal_snr=False),
     r"add\.student_zero_terminal_snr: an epsilon-prediction student"),
    (lambda r: (r["teacher"].update(pretrained="some/sd"), r["text_encoder"].update(attention_mask=True)),
     r"text_encoder\.attention_mask: must be false with a pretrained SD-class teacher"),
    (lambda r: r["preference"].update(comparisons=[["add@1", "teacher@3"]]),
     r"preference\.comparisons: teacher@3: evaluate\.teacher_steps .* has no 3-step row"),
    (lambda r: r["consistency"].update(solver_steps=30), r"consistency\.solver_steps: must divide"),
    (lambda r: r["add"].update(simulated_samplers=[3, 4]), r"add\.simulated_samplers: must be step counts the student "
     r"samples with \(1, 2, 4\), 4 among them"),
    (lambda r: r["add"].update(simulated_samplers=[2]), r"add\.simulated_samplers: .*4 among them"),
])
def test_cross_section_errors_before_any_compute(root, edit, match):
    raw = _raw(root)
    edit(raw)
    with pytest.raises(config.ConfigError, match=match) as e:
        checks.parse(raw)
    assert "\n" not in str(e.value)


def test_the_default_nfsd_negative_prompt_is_not_the_unconditional_one(root):
    cfg = checks.parse(_raw(root))
    assert cfg.add.nfsd_negative_prompt.strip() != ""
    raw = config.load_raw(root / "params.yaml", root / "profiles" / "table1-extended.yaml")  # holds the NFSD row
    raw["add"]["nfsd_negative_prompt"] = ""  # unused unless weighting is nfsd: no error
    checks.parse(raw)
    raw["ablations"]["add"]["nfsd_negative_prompt"] = ""  # Table 1's NFSD row would then not be NFSD: refused
    with pytest.raises(config.ConfigError, match=r"ablations\.runs\.nfsd\.overrides\.add\.nfsd_negative_prompt"):
        checks.parse(raw)
    del raw["ablations"]["runs"]["nfsd"]
    raw["ablations"]["tables"] = {k: {lab: run for lab, run in rows.items() if run != "nfsd"}
                                  for k, rows in raw["ablations"]["tables"].items()}
    checks.parse(raw)  # unused unless weighting is nfsd: no error


def test_missing_key_is_an_error(root):
    raw = _raw(root)
    del raw["teacher"]["train"]["ema_decay"]
    with pytest.raises(config.ConfigError, match=r"teacher\.train\.ema_decay: missing key"):
        checks.parse(raw)


def test_float_written_without_dot_is_accepted(root):
    raw = _raw(root)
    raw["teacher"]["train"]["lr"] = "3e-4"  # YAML reads this as a string
    assert checks.parse(raw).teacher.train.lr == pytest.approx(3e-4)


def test_cli_check_exits_2_with_one_line(tmp_path, root):
    raw = _raw(root)
    raw["data"]["resolutoin"] = 16
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, "-m", "addlib.config", "check", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "data.resolutoin: unknown key (did you mean 'resolution'?)" in r.stderr


def test_values_survive_dvcs_unquoted_rewrite(root):
    """`dvc exp run -S` rewrites params.yaml and drops the quotes of `mixed_precision: "no"`; YAML 1.1 then reads
    a boolean. The choice spelled that way is taken back (and a boolean where no choice is spelled so is refused)."""
    text = (root / "params.yaml").read_text()
    assert 'mixed_precision: "no"' in text
    raw = yaml.safe_load(text.replace('mixed_precision: "no"', "mixed_precision: no"))
    assert raw["teacher"]["train"]["mixed_precision"] is False
    p = checks.parse(raw)
    assert p.teacher.train.mixed_precision == "no" and p.add.train.mixed_precision == "no"
    assert config.parse_run(raw, "default", 0).add.train.mixed_precision == "no"  # Table 1's (ablations.add)
    raw["teacher"]["sample"]["sampler"] = False
    with pytest.raises(config.ConfigError, match=r"teacher\.sample\.sampler: False is not one of"):
        checks.parse(raw)


@pytest.mark.parametrize("override,profile", [("add.lambda_distill=2.5", None),
                                              ("ablations.add.discriminator.ode_steps=6", None),
                                              ("add.lambda_distill=2.5", "table1-extended")])
def test_dvcs_own_rewrite_of_params_yaml_changes_only_the_value_set(tmp_path, root, override, profile):
    """`dvc exp run -S key=value` (the README's experiment) rewrites params.yaml with DVC's round-trip YAML dumper,
    which re-wraps long flow mappings at 80 columns: a row label wrapped inside one made the committed file invalid
    YAML. The same call DVC makes, on a copy (of params.yaml, or of the file `python -m addlib.config merge` writes
    with a profile): the file still parses, to the same typed params but for that value."""
    from dvc.utils.hydra import apply_overrides

    from addlib.config.__main__ import main as config_cli

    path, original = tmp_path / "params.yaml", tmp_path / "original.yaml"
    if profile:
        assert config_cli(["merge", str(root / "params.yaml"), str(root / "profiles" / f"{profile}.yaml"),
                           "-o", str(original)]) == 0
    else:
        original.write_text((root / "params.yaml").read_text())
    path.write_text(original.read_text())
    apply_overrides(path, [override])
    key, value = override.split("=")

    def typed(params_file):  # ablations.add is kept as written: read it through its schema, as its runs do
        p = checks.load(params_file)
        return config.to_dict(p) | {"ablations": config.to_dict(p.ablations) | {"add": config.to_dict(
            p.ablations.add_config())}}
    before, after = typed(original), typed(path)
    node = before
    *parents, leaf = key.split(".")
    for k in parents:
        node = node[k]
    assert node[leaf] != yaml.safe_load(value)
    node[leaf] = yaml.safe_load(value)
    assert after == before


def test_the_gpu_profile_changes_no_training_value(root):
    # profiles/gpu.yaml (the embedded default on one GPU) may change threads and the sampling batch only, so the
    # GPU run's results are the default's; it validates over params.yaml and over the smoke profile's sizes
    from addlib import config as C
    from addlib.config import checks

    def flat(d, pre=""):
        return {k2: v2 for k, v in d.items() for k2, v2 in
                (flat(v, f"{pre}{k}.").items() if isinstance(v, dict) else [(f"{pre}{k}", v)])}

    base = C.read_yaml(root / "params.yaml")
    gpu = C.read_yaml(root / "profiles" / "gpu.yaml")
    merged = C.apply_profile(base, gpu)
    changed = {k for k, v in flat(merged).items() if flat(base).get(k) != v}
    assert changed and all(k.endswith(".num_threads") or k == "evaluate.batch_size" for k in changed), changed
    assert set(flat(merged)) == set(flat(base))  # no new key either
    checks.parse(merged, "gpu over params.yaml")
    checks.parse(C.apply_profile(C.apply_profile(base, C.read_yaml(root / "profiles" / "smoke.yaml")), gpu),
                 "gpu over smoke")


def test_a_profiles_add_applies_to_table1_and_an_experiments_does_not(root):
    """Table 1's ADD settings (ablations.add) are the main run's add without its budget, in params.yaml and under
    every profile; a profile's add applies to both (its budget to the main run only), one that sets ablations.add
    itself keeps it, and a plain merge (what `dvc exp run -S add.<key>=...` does) changes the main run only."""
    base = config.read_yaml(root / "params.yaml")
    assert base["ablations"]["add"] == config.table1_add(base["add"])
    assert set(base["add"]["train"]) - set(base["ablations"]["add"]["train"]) == {"steps", "batch_size", "sample_every"}
    for profile in sorted((root / "profiles").glob("*.yaml")):
        raw = config.load_raw(root / "params.yaml", profile)
        assert raw["ablations"]["add"] == config.table1_add(raw["add"]), profile.name
    smoke = config.read_yaml(root / "profiles" / "smoke.yaml")
    raw = config.apply_profile(base, smoke)
    assert raw["add"]["train"]["steps"] == smoke["add"]["train"]["steps"] != base["add"]["train"]["steps"]
    assert "steps" not in raw["ablations"]["add"]["train"]  # the main run's budget stays the main run's
    checks.parse(raw)
    own = config.apply_profile(base, {"add": {"lambda_distill": 2.5}, "ablations": {"add": {"distance": "mse"}}})
    assert own["add"]["lambda_distill"] == 2.5 and own["add"]["distance"] == base["add"]["distance"]
    assert (own["ablations"]["add"]["lambda_distill"], own["ablations"]["add"]["distance"]) == (10.0, "mse")
    experiment = config.deep_merge(base, {"add": {"lambda_distill": 2.5}})
    assert experiment["ablations"]["add"]["lambda_distill"] == 10.0



@pytest.mark.parametrize("profile", ["sd-gpu", "sdxl-gpu"])
def test_the_gpu_profiles_sit_on_the_papers_recipe(tmp_path, root, profile):
    """A latent teacher at scale trains the paper's objective: its profile sets no key the paper profile sets
    (nor any other value of the objective), and `merge params.yaml paper.yaml <profile>` gives the paper's values."""
    def flat(d, at=""):
        return {k2: v2 for k, v in d.items() for k2, v2 in
                (flat(v, f"{at}{k}.").items() if isinstance(v, dict) else [(f"{at}{k}", v)])}

    paper = flat(config.read_yaml(root / "profiles" / "paper.yaml"))
    scale = flat(config.read_yaml(root / "profiles" / f"{profile}.yaml"))
    objective = [k for k in scale if k.startswith("add.") and not k.startswith(("add.train.", "add.sample"))
                 and k != "add.student_zero_terminal_snr"]  # the student's schedule follows the checkpoint's
    assert not set(paper) & set(scale) and not objective, (set(paper) & set(scale), objective)
    out = tmp_path / "params.yaml"
    r = subprocess.run([sys.executable, "-m", "addlib.config", "merge", str(root / "params.yaml"),
                        str(root / "profiles" / "paper.yaml"), str(root / "profiles" / f"{profile}.yaml"), "-o",
                        str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr  # the merged file is checked whole (its paths need not exist to merge)
    raw = config.read_yaml(out)
    merged = flat(raw)
    assert all(merged[k] == v for k, v in paper.items()) and all(merged[k] == v for k, v in scale.items())
    assert raw["ablations"]["add"] == config.table1_add(raw["add"])  # Table 1 on the same setting
