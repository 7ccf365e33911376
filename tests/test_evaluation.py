"""The comparison's machinery: NFE accounting, prompt draws, throughput and batch-1 timing on a tiny model,
scoring (a set against itself), guidance choice, the targets read from a hand-made table, every column."""
import pytest
import torch

from addlib import evaluation as E
from addlib.diffusion import NoiseSchedule
from addlib.models import build_unet


@pytest.fixture()
def tiny(smoke_params, tiny_data):
    ds, cache = tiny_data
    torch.manual_seed(0)
    unet = build_unet(smoke_params.teacher.unet, 8, 1, cache.states.shape[-1]).eval()
    schedule = NoiseSchedule(smoke_params.teacher.schedule)
    empty = tuple(a for a in cache[torch.tensor([0])][:2])
    return ds, cache, unet, schedule, empty


def test_nfe_counts_guidance_twice_for_the_teacher_only(tiny):
    _, _, unet, schedule, empty = tiny
    assert E.Generator("teacher", "ddim", 4, 1.0, unet, schedule, empty).nfe == 4
    assert E.Generator("teacher", "ddim", 4, 2.0, unet, schedule, empty).nfe == 8
    assert E.Generator("student", "add", 4, 1.0, unet, schedule, trained_timesteps=[999, 749, 499, 249]).nfe == 4


def test_draw_prompts_cycles_and_keeps_labels(tiny):
    ds, cache, *_ = tiny
    p = E.draw_prompts(ds.captions, ds.labels, cache, 40, seed=3)
    assert len(p) == 40 and p.states.shape[0] == 40
    label_of = {"a": 0, "b": 1, "c": 2}
    assert all(label_of[c] == int(y) for c, y in zip(p.captions, p.labels))
    first = sorted(p.captions[:16])
    assert first == sorted(ds.captions)  # the first pass is a permutation of the split
    row = {c: i for i, c in enumerate(cache.captions)}
    assert torch.equal(p.text_emb, cache.pooled[[row[c] for c in p.captions]])


def test_generate_throughput_skips_the_warmup_batch_and_partial_batches(tiny):
    ds, cache, unet, schedule, empty = tiny
    gen = E.Generator("student", "add", 2, 1.0, unet, schedule, trained_timesteps=[999, 749, 499, 249])
    p = E.draw_prompts(ds.captions, ds.labels, cache, 10, seed=0)
    noise = torch.randn(10, 1, 8, 8)
    x, rate = E.generate(gen, p, noise, batch_size=4)  # batches of 4, 4, 2: only the second is timed
    assert x.shape == (10, 1, 8, 8) and rate is not None and rate > 0
    x1, rate1 = E.generate(gen, p, noise, batch_size=16)
    assert rate1 is None and x1.shape == x.shape  # one batch is all warm-up: no throughput claimed
    assert E.seconds_per_image_batch1(gen, p, noise, repeats=3) > 0


def test_teacher_generator_matches_sample_teacher(tiny):
    from addlib.sampling import sample_teacher

    ds, cache, unet, schedule, empty = tiny
    p = E.draw_prompts(ds.captions, ds.labels, cache, 6, seed=0)
    noise = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    gen = E.Generator("teacher", "dpmsolver++", 3, 2.0, unet, schedule, empty)
    x, _ = E.generate(gen, p, noise, batch_size=4)
    ref = sample_teacher(unet, schedule, p.states, p.mask, empty, noise, "dpmsolver++", 3, 2.0)
    assert torch.allclose(x, ref, atol=1e-5)


def _scorer(real, detail=None):
    feats = lambda x: x.flatten(1).double()  # noqa: E731
    return E.Scorer(feats, lambda x: x.flatten(1), lambda x: (x.flatten(1)[:, 0] > 0).long(), feats(real), pr_k=3,
                    detail=detail, detail_ref_feats=None if detail is None else detail(real))


def test_scorer_on_the_reference_itself(tiny):
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 1, 2, 2, generator=g)
    labels = (real.flatten(1)[:, 0] > 0).long()
    p = E.Prompts(["x"] * 300, torch.zeros(300, 1, 1), torch.ones(300, 1), real.flatten(1), labels)
    s = _scorer(real)(real, p)
    assert abs(s["fid"]) < 1e-6 and s["precision"] == 1.0 and s["recall"] == 1.0
    assert s["clip_score"] == pytest.approx(100.0) and s["prompt_accuracy"] == 1.0
    shifted = _scorer(real)(real + 3.0, p)
    assert shifted["fid"] == pytest.approx(4 * 9.0, rel=0.05)  # mean shift of 3 in 4 dims: |dmu|^2 = 36
    assert s["fid_detail"] != s["fid_detail"]  # no detail space: NaN, not a number that looks measured
    # the second space scores the same images in its own features: here the first two pixels, doubled
    two = lambda x: 2 * x.flatten(1)[:, :2].double()  # noqa: E731
    s2 = _scorer(real, two)(real + torch.tensor([[[[1.0, 0.0], [5.0, 5.0]]]]), p)
    assert s2["fid"] == pytest.approx(1 + 2 * 25.0, rel=0.05)  # classifier space: |dmu|^2 = 1 + 25 + 25
    assert s2["fid_detail"] == pytest.approx(4.0, rel=0.05)    # detail space: only the first pixel moved, by 2
    assert 0 <= s2["precision_detail"] <= 1 and 0 <= s2["recall_detail"] <= 1


def test_choose_guidance_takes_the_lowest_heldout_fid():
    made = []

    class Gen:
        model, sampler, steps = "teacher", "ddim", 1

        def __init__(self, w):
            self.w = w
            made.append(w)

        def __call__(self, prompts, noise, seed=0):
            return noise + self.w

    p = E.Prompts(["x"] * 4, torch.zeros(4, 1, 1), torch.ones(4, 1), torch.zeros(4, 1), torch.zeros(4, dtype=torch.long))
    best, fids = E.choose_guidance(Gen, [1.0, 2.0, 3.0], p, torch.zeros(4, 1), lambda x: float((x.mean() - 2.2) ** 2), 2)
    assert best == 2.0 and made == [1.0, 2.0, 3.0] and set(fids) == {1.0, 2.0, 3.0}


def _row(model, sampler, steps, fid, recall=0.5, acc=0.9, clip=40.0, spi=0.1, ips=100.0, w=1.0):
    nfe = steps * (2 if model == "teacher" and w != 1.0 else 1)
    return dict(model=model, sampler=sampler, steps=steps, nfe=nfe, guidance=w, seconds_per_image=spi,
                images_per_second=ips, fid=fid, precision=0.8, recall=recall, clip_score=clip, prompt_accuracy=acc)


def test_targets_from_a_hand_made_table():
    rows = [_row("teacher", "ddim", 1, 200.0), _row("teacher", "dpmsolver++", 1, 180.0),
            _row("teacher", "ddim", 4, 30.0), _row("teacher", "dpmsolver++", 4, 25.0),
            _row("teacher", "ddim", 8, 10.0), _row("teacher", "ddim", 50, 4.0, recall=0.6, acc=0.95, clip=41.0,
                                                                  spi=1.0, ips=2.0, w=2.0),
            _row("student", "add", 1, 20.0, recall=0.40, acc=0.94, clip=39.5, spi=0.03, ips=100.0),
            _row("student", "add", 2, 21.0), _row("student", "add", 4, 22.0)]
    t = E.check_targets(rows)  # a table scored in the classifier's space only: judged there
    assert t["student1_fid_below_teacher4_best"] == {"value": 20.0, "bar": 25.0, "met": True}
    assert t["student1_fid_at_most_quarter_teacher1"]["bar"] == 45.0 and t["student1_fid_at_most_quarter_teacher1"]["met"]
    assert not t["student1_fid_below_teacher8_best (stretch)"]["met"]
    assert t["student1_recall_at_least_0.7_teacher50"]["bar"] == pytest.approx(0.42)
    assert not t["student1_recall_at_least_0.7_teacher50"]["met"]
    assert t["student1_prompt_accuracy_within_2pts_teacher50"]["met"]
    assert not t["student1_clip_score_within_1pt_teacher50"]["met"]  # 1.5 points below
    assert t["speedup_large_batch_at_least_40x"]["value"] == pytest.approx(50.0) and t["speedup_large_batch_at_least_40x"]["met"]
    assert t["speedup_batch1_at_least_25x"]["value"] == pytest.approx(1 / 0.03) and t["speedup_batch1_at_least_25x"]["met"]
    assert not t["student_fid_4_at_most_2_at_most_1_steps"]["met"]  # 22 > 21
    assert t["student4_recall_at_least_0.9_student1"]["bar"] == pytest.approx(0.36)
    assert "met_detail" not in t["student1_fid_below_teacher4_best"]


def test_targets_hold_in_both_feature_spaces():
    def row(model, sampler, steps, fid, fid_d, recall=0.5, recall_d=0.5):
        return {**_row(model, sampler, steps, fid, recall=recall), "fid_detail": fid_d, "recall_detail": recall_d}

    rows = [row("teacher", "ddim", 4, 30.0, 3.0), row("teacher", "dpmsolver++", 4, 25.0, 5.0),
            row("student", "add", 1, 20.0, 4.0), row("student", "add", 2, 19.0, 3.5),
            row("student", "add", 4, 18.0, 3.6, recall=0.5, recall_d=0.44)]
    t = E.check_targets(rows)
    beat = t["student1_fid_below_teacher4_best"]
    # each space takes its own best 4-step teacher: dpmsolver++ (25) in one, ddim (3.0) in the other
    assert (beat["value"], beat["bar"], beat["met"]) == (20.0, 25.0, False)
    assert (beat["value_detail"], beat["bar_detail"], beat["met_detail"]) == (4.0, 3.0, False)
    steps = t["student_fid_4_at_most_2_at_most_1_steps"]
    assert steps["met_detail"] is False and steps["met"] is False  # 3.6 > 3.5 in the detail space only
    recall = t["student4_recall_at_least_0.9_student1"]
    assert recall["met_detail"] is False and recall["met"] is False  # 0.44 < 0.45 in the detail space only
    rows[-1].update(fid_detail=3.4, recall_detail=0.46)
    t = E.check_targets(rows)
    assert t["student_fid_4_at_most_2_at_most_1_steps"]["met"] and t["student4_recall_at_least_0.9_student1"]["met"]


def test_markdown_table_has_every_column_in_order():
    md = E.markdown_table([_row("student", "add", 1, 20.0), _row("teacher", "ddim", 1, float("nan"))])
    header = md.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == E.COLUMNS
    assert "n/a" in md.splitlines()[3] and len(md.splitlines()) == 4


def test_headline_metrics_are_few_flat_numbers():
    rows = [{"model": "teacher", "sampler": s, "steps": k, "fid": f} for s, k, f in
            [("ddim", 4, 1.4), ("dpmsolver++", 4, 1.1), ("ddim", 8, 0.5)]] + \
           [{"model": "student", "sampler": "add", "steps": k, "fid": f} for k, f in [(1, 0.68), (4, 0.61)]]
    targets = {"speedup_batch1_at_least_25x": {"value": 87.366, "bar": 25.0, "met": True},
               "student_fid_4_at_most_2_at_most_1_steps": {"value": 0.61, "bar": 0.68, "met": True},
               "student1_fid_below_teacher8_best (stretch)": {"value": 0.68, "bar": 0.5, "met": False}}
    h = E.headline(rows, targets)
    assert h == {"student_fid_1step": 0.68, "student_fid_4step": 0.61, "teacher_best_fid_4step": 1.1,
                 "teacher_best_fid_8step": 0.5, "speedup_batch1": 87.37, "targets_met": 2, "targets_total": 3}


def test_evaluate_reads_the_solvers_rows_only_when_made_with_its_values(tmp_path, smoke_params):
    # the teacher's rows of Table 2 come from the solvers stage; evaluate refuses them (one line, before any
    # compute) when they are missing or were made with other values of the keys they depend on
    import dataclasses
    import json

    from addlib import config as C
    from addlib.pipeline.scoring import SOLVER_KEYS, SOLVER_ROWS, read_solver_rows

    cfg = smoke_params.evaluate
    with pytest.raises(C.ConfigError, match="run the 'solvers' stage before 'evaluate'"):
        read_solver_rows(cfg, tmp_path)
    made = json.loads(json.dumps({k: getattr(cfg, k) for k in SOLVER_KEYS}))
    (tmp_path / SOLVER_ROWS).parent.mkdir(parents=True)
    (tmp_path / SOLVER_ROWS).write_text(json.dumps({"evaluate": made, "rows": [{"model": "teacher"}],
                                                    "teacher_guidance": {}}))
    assert read_solver_rows(cfg, tmp_path)["rows"] == [{"model": "teacher"}]
    # a key the rows do not depend on may differ; one they do may not
    assert "student_steps" not in SOLVER_KEYS and "grid_steps" not in SOLVER_KEYS
    read_solver_rows(dataclasses.replace(cfg, student_steps=[1]), tmp_path)
    with pytest.raises(C.ConfigError, match=r"evaluate\.num_samples .*rerun the 'solvers' stage"):
        read_solver_rows(dataclasses.replace(cfg, num_samples=cfg.num_samples + 1), tmp_path)
    with pytest.raises(C.ConfigError, match=r"evaluate\.teacher_steps"):
        read_solver_rows(dataclasses.replace(cfg, teacher_steps=[1]), tmp_path)
