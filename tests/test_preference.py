"""The preference study's arithmetic: pair schedule (balanced, blind, reproducible), Elo by hand and its
bootstrap over orders, the Wilson interval (a textbook value, and its coverage on a known binomial), win rates
with ties, automatic votes, and the vote file (append only; corrupt and foreign lines are one-line errors)."""
import itertools
import json
import random
from collections import Counter

import pytest

from addlib import preference as P

COMPARISONS = [("add@1", "cd@4"), ("add@4", "ddim@50"), ("add@1", "ddim@1")]


def test_schedule_is_balanced_blind_and_reproducible():
    pairs = P.schedule(COMPARISONS, n_prompts=4, n_seeds=3, seed=7)
    assert len(pairs) == len(COMPARISONS) * 4 * 3 and len({p.id for p in pairs}) == len(pairs)
    for a, b in COMPARISONS:
        mine = [p for p in pairs if {p.left, p.right} == {a, b}]
        assert sorted((p.prompt, p.seed) for p in mine) == [(i, j) for i in range(4) for j in range(3)]
        assert sum(p.left == a for p in mine) == 6  # exactly half on each side
    assert Counter(p.prompt for p in pairs) == {i: 9 for i in range(4)}
    assert P.schedule(COMPARISONS, 4, 3, seed=7) == pairs
    other = P.schedule(COMPARISONS, 4, 3, seed=8)
    assert other != pairs and sorted(p.id for p in other) == sorted(p.id for p in pairs)
    # the sides are not a fixed pattern: over seeds, each cell shows a on the left about half the time
    left = Counter(p.id for s in range(200) for p in P.schedule(COMPARISONS[:1], 2, 2, s) if p.left == "add@1")
    assert all(70 < c < 130 for c in left.values())
    with pytest.raises(ValueError, match="itself"):
        P.schedule([("a", "a")], 1, 1, 0)
    with pytest.raises(ValueError, match="twice"):
        P.schedule([("a", "b"), ("b", "a")], 1, 1, 0)


def test_elo_by_hand_on_three_games():
    # A beats B, B beats C, A and C tie; K = 1, start 1000.
    # game 1: equal ratings, E = 0.5: A 1000.5, B 999.5
    # game 2: B (999.5) vs C (1000): E_B = 1 / (1 + 10^(0.5/400)) = 0.49928..., B += 0.50072, C -= 0.50072
    # game 3: A (1000.5) vs C (999.49928): E_A = 1 / (1 + 10^(-1.00072/400)), A += 0.5 - E_A
    games = [("A", "B", 1.0), ("B", "C", 1.0), ("A", "C", 0.5)]
    e_b = 1 / (1 + 10 ** (0.5 / 400))
    b, c = 999.5 + (1 - e_b), 1000 - (1 - e_b)
    e_a = 1 / (1 + 10 ** ((c - 1000.5) / 400))
    a, c = 1000.5 + (0.5 - e_a), c - (0.5 - e_a)
    r = P.elo(games)
    assert r == pytest.approx({"A": a, "B": b, "C": c}, abs=1e-12)
    assert sum(r.values()) == pytest.approx(3000)  # Elo is zero-sum
    assert P.elo(games, k=32)["A"] > a  # K scales the updates


def test_elo_bootstrap_is_the_mean_over_orders():
    games = [("A", "B", 1.0), ("B", "C", 1.0), ("A", "C", 0.5), ("C", "B", 0.0)]
    exact = [P.elo(list(o)) for o in itertools.permutations(games)]
    mean = {m: sum(r[m] for r in exact) / len(exact) for m in "ABC"}
    boot = P.elo_bootstrap(games, rounds=4000, seed=1)
    for m in "ABC":
        lo, hi = min(r[m] for r in exact), max(r[m] for r in exact)
        assert lo <= boot[m]["low"] <= boot[m]["mean"] <= boot[m]["high"] <= hi
        assert boot[m]["mean"] == pytest.approx(mean[m], abs=0.01)
    assert P.elo_bootstrap(games, rounds=50, seed=3) == P.elo_bootstrap(games, rounds=50, seed=3)
    # one round is one random order of the same games, not the given order every time
    firsts = {json.dumps(P.elo_bootstrap(games, rounds=1, seed=s), sort_keys=True) for s in range(20)}
    assert len(firsts) > 1


def test_wilson_textbook_value_and_coverage():
    p, lo, hi = P.wilson(8, 10)
    assert (p, round(lo, 4), round(hi, 4)) == (0.8, 0.4902, 0.9433)
    assert P.wilson(0, 10)[1] == pytest.approx(0.0, abs=1e-12) and P.wilson(10, 10)[2] == pytest.approx(1.0)
    rng = random.Random(0)
    for true_p, n in [(0.3, 40), (0.5, 100), (0.85, 60)]:
        hits = 0
        for _ in range(3000):
            w = sum(rng.random() < true_p for _ in range(n))
            _, lo, hi = P.wilson(w, n)
            hits += lo <= true_p <= hi
        assert 0.925 <= hits / 3000 <= 0.975, (true_p, n, hits / 3000)


def test_win_rates_count_ties_as_half_from_either_side():
    games = [("A", "B", 1.0), ("B", "A", 1.0), ("A", "B", 0.5), ("C", "A", 0.0), ("B", "C", 1.0)]
    w = P.win_rates(games, "A")
    assert w["B"]["games"] == 3 and w["B"]["ties"] == 1 and w["B"]["win_rate"] == pytest.approx(1.5 / 3)
    assert w["C"]["win_rate"] == 1.0 and set(w) == {"B", "C"}
    assert w["B"]["low"] < 0.5 < w["B"]["high"]
    assert P.win_rates(games, "B")["A"]["win_rate"] == pytest.approx(1.5 / 3)  # the tie seen from the right side


def test_automatic_votes_follow_the_scores_with_a_tie_band():
    pairs = P.schedule([("x", "y")], n_prompts=2, n_seeds=1, seed=0)
    scores = {"quality": {"x": [[0.9], [0.50]], "y": [[0.1], [0.45]]}}
    votes = P.automatic_votes(pairs, scores, rater="auto", tie=0.1)
    games = P.to_games(pairs, votes, "quality")
    by_prompt = {p.prompt: g for p, g in zip(pairs, games)}
    a, b, s = by_prompt[0]
    assert (s == 1.0) == (a == "x") and (s == 0.0) == (a == "y")  # x better on prompt 0, whatever the side
    assert by_prompt[1][2] == 0.5  # 0.05 apart: inside the tie band
    assert P.to_games(pairs, votes, "prompt") == []


def test_vote_file_appends_and_names_bad_lines(tmp_path):
    pairs = {p.id: p for p in P.schedule([("x", "y")], 2, 1, 0)}
    pid = next(iter(pairs))
    path = tmp_path / "votes.jsonl"
    assert P.read_votes(path, pairs) == []
    v1 = P.Vote("ana", pid, "prompt", "left", P.now())
    v2 = P.Vote("bo", pid, "quality", "tie", P.now())
    P.append_vote(path, v1, pairs)
    first = path.read_bytes()
    P.append_vote(path, v2, pairs)
    assert path.read_bytes().startswith(first)  # appended, never rewritten
    assert P.read_votes(path, pairs) == [v1, v2]
    with pytest.raises(P.VoteError, match="choice 'maybe'"):
        P.append_vote(path, P.Vote("ana", pid, "prompt", "maybe", P.now()), pairs)
    assert P.read_votes(path, pairs) == [v1, v2]  # a refused vote writes nothing
    for bad, match in [("{not json", r"votes.jsonl:3: not a JSON line"),
                       (json.dumps({**json.loads(json.dumps(v1.__dict__)), "pair": "z|w|p0|s0"}),
                        r"votes.jsonl:3: pair 'z\|w\|p0\|s0' is not in this study"),
                       (json.dumps({"rater": "ana"}), r"votes.jsonl:3: a vote has exactly the keys")]:
        good = path.read_text()
        path.write_text(good + bad + "\n")
        with pytest.raises(P.VoteError, match=match):
            P.read_votes(path, pairs)
        path.write_text(good)


def test_the_voting_widget_records_blinded_votes_without_a_browser(tmp_path):
    import torch

    from addlib.voting import Study, VotingWidget, png_bytes

    pairs = P.schedule([("x", "y")], n_prompts=2, n_seeds=2, seed=3)
    g = torch.Generator().manual_seed(0)
    study = Study({m: torch.randint(0, 256, (4, 1, 8, 8), generator=g, dtype=torch.uint8) for m in "xy"},
                  ["one", "one", "seven", "seven"], 2, pairs)
    path = tmp_path / "votes.jsonl"
    w = VotingWidget(study, path, rater="ana")
    first = w.current
    assert w.left.value == png_bytes(study.image(first.left, first))  # the left image is the left model's
    assert w.right.value == png_bytes(study.image(first.right, first))
    assert study.caption(first) in w.prompt.value
    w.buttons["prompt"]["left"].click()
    assert not path.exists()  # nothing is written until both questions are answered
    w.buttons["quality"]["tie"].click()
    votes = P.read_votes(path, {q.id: q for q in pairs})
    assert [(v.rater, v.pair, v.question, v.choice) for v in votes] == [("ana", first.id, "prompt", "left"),
                                                                         ("ana", first.id, "quality", "tie")]
    assert w.current == pairs[1] and "1 of 4" in w.status.value
    assert VotingWidget(study, path, rater="ana").current == pairs[1]  # a resumed session skips judged pairs
    assert VotingWidget(study, path, rater="bo").current == pairs[0]   # another rater starts from the first
    with pytest.raises(ValueError, match="rater id"):
        VotingWidget(study, path, rater=" ")


def test_study_results_per_question_and_the_averaged_elo():
    comps = [("a", "b"), ("a", "c")]
    pairs = P.schedule(comps, n_prompts=3, n_seeds=1, seed=0)
    votes = []
    for q in pairs:  # prompt: a always wins; quality: a wins against b only, ties with c
        first = "left" if q.left == "a" else "right"
        votes.append(P.Vote("r", q.id, "prompt", first, ""))
        votes.append(P.Vote("r", q.id, "quality", first if "b" in (q.left, q.right) else "tie", ""))
    res = P.study_results(pairs, votes, comps, rounds=200, seed=0)
    assert res["votes"] == 12 and res["questions"]["prompt"]["games"] == 6
    assert res["questions"]["prompt"]["win"]["a vs b"]["win_rate"] == 1.0
    assert res["questions"]["quality"]["win"]["a vs c"]["win_rate"] == 0.5
    assert res["questions"]["quality"]["win"]["a vs c"]["ties"] == 3
    e_p, e_q = (P.elo_samples(P.to_games(pairs, votes, q), 200, seed=0) for q in ("prompt", "quality"))
    avg = P.summary({m: [(x + y) / 2 for x, y in zip(e_p[m], e_q[m])] for m in "abc"})
    assert res["elo_average"] == avg
    assert res["elo_average"]["a"]["mean"] > 1000 > res["elo_average"]["b"]["mean"]
    assert P.study_results(pairs, [], comps, 10, 0) == {"votes": 0, "questions": {}}


def test_reconstruction_residual_by_hand():
    import torch
    x = torch.tensor([[[[1.0, -3.0]]], [[[0.5, 0.5]]]])
    assert P.reconstruction_residual(torch.nn.Identity(), x).tolist() == [0.0, 0.0]
    zero = torch.nn.Module()
    zero.forward = lambda z: torch.zeros_like(z)
    assert P.reconstruction_residual(zero, x).tolist() == [2.0, 0.5]   # mean |x - 0| per image


def _reals(first, pool, labels):
    import torch
    from types import SimpleNamespace
    t = torch.tensor
    return SimpleNamespace(labels=t(labels), first=t(first, dtype=torch.float)[:, None],
                           pool=t(pool, dtype=torch.float)[..., None])


def test_rater_check_shares_ties_and_the_pass_rule():
    import torch
    t = lambda v: torch.tensor(v, dtype=torch.float)[:, None]  # noqa: E731
    digit = lambda x, y: (x[:, 0] == y).float()  # noqa: E731  an image "is" its digit; the rater: is it the prompted one
    reals = _reals([0, 1, 2], [[0, 0], [1, 1], [2, 2]], [0, 1, 2])
    ok = P.rater_check(digit, reals, t([5, 5, 5]), "another digit", t([0, 1, 9]), 0.0, 0.9, 0.1)
    # pool images (their own digit) beat other digits 6/6; first vs pool ties 6/6 -> 0.5; teacher@1 ties on 2 of 3
    assert ok["real_over_failure"] == 1.0 and ok["real_vs_real"] == 0.5 and ok["passed"]
    assert ok["real_vs_teacher@1"] == pytest.approx((0.5 + 0.5 + 1.0) / 3) and ok["pairs"] == 6
    ident = lambda x, y: x[:, 0]  # noqa: E731
    reals = _reals([1, 1], [[1, 3], [1, 3]], [0, 0])
    c = P.rater_check(ident, reals, t([2, 2]), "f", t([2, 2]), 0.0, 0.9, 0.1)
    assert c["real_over_failure"] == 0.5 and c["real_vs_real"] == 0.25 and not c["passed"]
    c = P.rater_check(ident, reals, t([0, 0]), "f", t([0, 0]), 0.0, 0.9, 0.3)
    assert c["real_over_failure"] == 1.0 and c["passed"]  # real_vs_real 0.25 is inside 0.5 +- 0.3
    c = P.rater_check(ident, reals, t([0, 0]), "f", t([0, 0]), 0.0, 0.9, 0.2)
    assert not c["passed"]  # ... and outside 0.5 +- 0.2
    c = P.rater_check(ident, reals, t([1.5, 1.5]), "f", t([0, 0]), 0.6, 0.9, 0.3)
    assert c["real_over_failure"] == 0.75  # within the tie band of 1 (half), 3 beats 1.5 + 0.6


def test_the_sentence_draws_no_claim_from_a_rater_that_failed_its_check():
    win = {"add@1 vs consistency@4": {"win_rate": 0.8, "low": 0.7, "high": 0.9},
           "add@4 vs teacher@50": {"win_rate": 0.3, "low": 0.2, "high": 0.4}}
    res = {"questions": {"prompt": {"win": win}, "quality": {"win": win}}}
    good = {"passed": True}
    bad = {"passed": False, "failure": "the teacher's 1 step", "real_over_failure": 0.43, "real_vs_real": 0.54}
    s = P.sentence(res, {"prompt": good, "quality": bad})
    assert "add@1 vs consistency@4 on prompt: 80% [70, 90], the paper's claim holds" in s
    assert "add@4 vs teacher@50 on prompt: 30% [20, 40], the paper's claim is reversed" in s
    assert "on quality" not in s and "the quality rater failed its check" in s and "43%" in s
    assert s.count("holds") == 1


def test_held_out_reals_are_distinct_images_of_the_prompted_digit_and_one_of_another():
    import torch
    from types import SimpleNamespace
    from addlib.pipeline.preference import _held_out_reals
    labels = torch.arange(30) % 3
    split = SimpleNamespace(labels=labels, pixels=lambda: torch.arange(30.0)[:, None, None, None])  # image = index
    r = _held_out_reals(split, torch.tensor([0, 2, 2]), k=4, seed=0)
    ids = lambda x: x.flatten().long()  # noqa: E731
    assert r.pool.shape == (3, 4, 1, 1, 1)
    for i, y in enumerate([0, 2, 2]):
        same = [int(j) for j in ids(r.pool[i])] + [int(ids(r.first)[i])]
        assert len(set(same)) == 5 and all(labels[j] == y for j in same)
        assert labels[ids(r.other_digit)[i]] != y
    again = _held_out_reals(split, torch.tensor([0, 2, 2]), k=4, seed=0)
    assert torch.equal(again.pool, r.pool) and torch.equal(again.first, r.first)
    with pytest.raises(Exception, match="check_reals: 10 \\+ 1 held-out images of digit 0 needed, the split has 10"):
        _held_out_reals(split, torch.tensor([0]), k=10, seed=0)


def test_elo_interval_is_the_2_5_and_97_5_percent_quantiles_over_orders():
    # the interval reported beside each Elo: linear-interpolated quantiles of the ratings over orders, checked by
    # hand and against numpy's quantile (its default method is the same interpolation)
    import numpy as np

    s = P.summary({"A": [float(v) for v in range(100, -1, -1)], "B": [0.0, 10.0]})
    assert s["A"] == pytest.approx({"mean": 50.0, "low": 2.5, "high": 97.5})
    assert s["B"] == pytest.approx({"mean": 5.0, "low": 0.25, "high": 9.75})
    values = [float(v) for v in np.random.default_rng(0).normal(1000, 5, size=37)]
    got = P.summary({"m": values})["m"]
    assert got["low"] == pytest.approx(float(np.quantile(values, 0.025)), abs=1e-9)
    assert got["high"] == pytest.approx(float(np.quantile(values, 0.975)), abs=1e-9)
