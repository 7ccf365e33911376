"""The paper's preference study (Sec. 4.2, Figs. 5-7, App. B) at this scale: blinded pairs of images for one
prompt and noise, two questions (which follows the prompt better, which has the higher image quality), votes
from automatic raters and from people, win rates with 95% intervals and Elo ratings as the paper computes them.

Everything here is plain data and arithmetic, including the automatic raters' (the reconstruction residual, each
rater's check on held-out real images, the sentence that draws no claim from a rater that failed it); the networks
that score images live in the stage (addlib/pipeline/preference.py).

    pairs = schedule([("add@1", "cd@4"), ...], n_prompts, n_seeds, seed)   # balanced, blind, reproducible
    votes = automatic_votes(pairs, scores, rater="auto", tie=...)          # or people's, read_votes(path, pairs)
    games = to_games(pairs, votes, "quality")                              # (a, b, score of a)
    elo_bootstrap(games)                                                   # K = 1, start 1000, 1,000 orders

Ties: a tie is half a win for each side, in the win rates and in Elo (score 0.5), as in chess ratings.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import random
from collections import defaultdict
from pathlib import Path

import torch

QUESTIONS = ("prompt", "quality")   # prompt following, image quality (asked separately, as in the paper)
CHOICES = ("left", "right", "tie")
Z95 = 1.959963984540054             # the standard normal's 97.5% quantile


class VoteError(ValueError):
    """A corrupt or foreign line in a vote file: one line naming the file and line."""


@dataclasses.dataclass(frozen=True)
class Pair:
    """One blinded comparison: the images of ``left`` and ``right`` for prompt ``prompt`` and noise ``seed``
    (indices into the study's prompts and starting noises)."""
    id: str
    prompt: int
    seed: int
    left: str
    right: str


@dataclasses.dataclass(frozen=True)
class Vote:
    rater: str
    pair: str
    question: str
    choice: str
    time: str


def schedule(comparisons: list[tuple[str, str]], n_prompts: int, n_seeds: int, seed: int) -> list[Pair]:
    """Every comparison (a, b) on every (prompt, noise): the same number of pairs per comparison and per
    prompt. Blind: within each comparison, exactly half of the pairs (rounded) show ``a`` on the left, the
    halves drawn at random; the list is shuffled. The same arguments give the same list."""
    if n_prompts < 1 or n_seeds < 1:
        raise ValueError("the study needs at least one prompt and one noise seed")
    for a, b in comparisons:
        if a == b:
            raise ValueError(f"comparison of {a!r} with itself")
    if len(set(map(frozenset, comparisons))) != len(comparisons):
        raise ValueError("a comparison is listed twice")
    rng = random.Random(seed)
    pairs = []
    for a, b in comparisons:
        cells = [(p, s) for p in range(n_prompts) for s in range(n_seeds)]
        a_left = [i < (len(cells) + 1) // 2 for i in range(len(cells))]
        rng.shuffle(a_left)
        for (p, s), al in zip(cells, a_left):
            left, right = (a, b) if al else (b, a)
            pairs.append(Pair(f"{a}|{b}|p{p}|s{s}", p, s, left, right))
    rng.shuffle(pairs)
    return pairs


def outcome(pair: Pair, choice: str) -> tuple[str, str, float]:
    """The game a vote records: (left model, right model, left's score: 1 win, 0.5 tie, 0 loss)."""
    return pair.left, pair.right, {"left": 1.0, "right": 0.0, "tie": 0.5}[choice]


def to_games(pairs: list[Pair], votes: list[Vote], question: str) -> list[tuple[str, str, float]]:
    by_id = {p.id: p for p in pairs}
    return [outcome(by_id[v.pair], v.choice) for v in votes if v.question == question]


# ----------------------------------------------------------------------------------------------------------
# Statistics


def elo(games: list[tuple[str, str, float]], k: float = 1.0, start: float = 1000.0) -> dict[str, float]:
    """Elo ratings after replaying ``games`` in order: each model starts at ``start``; after a game of a
    against b with a's score s, a gains k (s - E_a) and b loses as much, E_a = 1 / (1 + 10^((R_b - R_a)/400))."""
    r: dict[str, float] = defaultdict(lambda: start)
    for a, b, s in games:
        e_a = 1.0 / (1.0 + 10.0 ** ((r[b] - r[a]) / 400.0))
        r[a], r[b] = r[a] + k * (s - e_a), r[b] - k * (s - e_a)
    return dict(r)


def elo_samples(games: list[tuple[str, str, float]], rounds: int = 1000, k: float = 1.0, start: float = 1000.0,
                seed: int = 0) -> dict[str, list[float]]:
    """Each model's Elo after the games replayed in each of ``rounds`` random orders (one list per model)."""
    rng = random.Random(seed)
    per_model: dict[str, list[float]] = defaultdict(list)
    order = list(games)
    for _ in range(rounds):
        rng.shuffle(order)
        for m, v in elo(order, k, start).items():
            per_model[m].append(v)
    return dict(per_model)


def summary(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per model: the mean over orders and the 2.5% and 97.5% quantiles."""
    return {m: {"mean": sum(v) / len(v), "low": _quantile(v, 0.025), "high": _quantile(v, 0.975)}
            for m, v in sorted(samples.items())}


def elo_bootstrap(games: list[tuple[str, str, float]], rounds: int = 1000, k: float = 1.0, start: float = 1000.0,
                  seed: int = 0) -> dict[str, dict[str, float]]:
    """The paper's Elo: the games replayed in ``rounds`` random orders; per model the mean rating and the
    2.5% and 97.5% quantiles over orders."""
    return summary(elo_samples(games, rounds, k, start, seed))


def _quantile(values: list[float], q: float) -> float:
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (pos - lo)


def wilson(wins: float, n: int, z: float = Z95) -> tuple[float, float, float]:
    """Win rate wins / n and its Wilson score interval (Wilson 1927); a tie counts half a win."""
    if n <= 0:
        return math.nan, math.nan, math.nan
    p = wins / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


def win_rates(games: list[tuple[str, str, float]], model: str) -> dict[str, dict[str, float]]:
    """``model``'s win rate against each opponent it played, with the Wilson interval and the game counts."""
    tally: dict[str, list[float]] = defaultdict(lambda: [0.0, 0, 0])  # wins, games, ties
    for a, b, s in games:
        if model not in (a, b):
            continue
        opp, score = (b, s) if a == model else (a, 1.0 - s)
        t = tally[opp]
        t[0], t[1], t[2] = t[0] + score, t[1] + 1, t[2] + (s == 0.5)
    out = {}
    for opp, (w, n, ties) in sorted(tally.items()):
        p, lo, hi = wilson(w, n)
        out[opp] = {"win_rate": p, "low": lo, "high": hi, "games": n, "ties": ties}
    return out


# ----------------------------------------------------------------------------------------------------------
# Votes: automatic raters and the vote file people append to


def automatic_votes(pairs: list[Pair], scores: dict[str, dict[str, list[list[float]]]], rater: str,
                    tie: float = 0.0) -> list[Vote]:
    """One vote per pair and question from per-image scores (higher is better): scores[question][model][prompt]
    [seed]. The side whose score is higher by more than ``tie`` wins; closer than that is a tie."""
    votes = []
    for q, per_model in scores.items():
        if q not in QUESTIONS:
            raise ValueError(f"unknown question {q!r}; one of {QUESTIONS}")
        for p in pairs:
            d = per_model[p.left][p.prompt][p.seed] - per_model[p.right][p.prompt][p.seed]
            choice = "left" if d > tie else "right" if d < -tie else "tie"
            votes.append(Vote(rater, p.id, q, choice, ""))
    return votes


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def append_vote(path: str | Path, vote: Vote, pairs: dict[str, Pair]) -> None:
    """Append one vote as one JSON line, flushed to disk; the file is only ever appended to."""
    _check(dataclasses.asdict(vote), pairs, f"{path}: new vote")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(dataclasses.asdict(vote), sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_votes(path: str | Path, pairs: dict[str, Pair]) -> list[Vote]:
    """The votes of a vote file (none if it does not exist); a corrupt line, or a vote for a pair this study
    does not have, is a VoteError naming the line."""
    path = Path(path)
    if not path.exists():
        return []
    votes = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise VoteError(f"{where}: not a JSON line ({e.msg})") from None
        _check(d, pairs, where)
        votes.append(Vote(**d))
    return votes


def _check(d, pairs: dict[str, Pair], where: str) -> None:
    fields = {f.name for f in dataclasses.fields(Vote)}
    if not isinstance(d, dict) or set(d) != fields:
        raise VoteError(f"{where}: a vote has exactly the keys {sorted(fields)}")
    if not all(isinstance(d[f], str) for f in fields):
        raise VoteError(f"{where}: every field of a vote is a string")
    if d["pair"] not in pairs:
        raise VoteError(f"{where}: pair {d['pair']!r} is not in this study (a vote file from another study?)")
    if d["question"] not in QUESTIONS:
        raise VoteError(f"{where}: question {d['question']!r} is not one of {QUESTIONS}")
    if d["choice"] not in CHOICES:
        raise VoteError(f"{where}: choice {d['choice']!r} is not one of {CHOICES}")
    if not d["rater"].strip():
        raise VoteError(f"{where}: the rater id is empty")


# ----------------------------------------------------------------------------------------------------------
# The study's results from one source of votes


def study_results(pairs: list[Pair], votes: list[Vote], comparisons: list[tuple[str, str]], rounds: int,
                  seed: int) -> dict:
    """Per question: the number of games, the first model's win rate against the second for every comparison
    (Wilson 95%), and Elo over all games (mean and interval over ``rounds`` orders); with both questions, the
    paper's single score, the two Elo ratings averaged (order by order)."""
    out: dict = {"votes": len(votes), "questions": {}}
    samples = {}
    for q in QUESTIONS:
        games = to_games(pairs, votes, q)
        if not games:
            continue
        win = {}
        for a, b in comparisons:
            rates = win_rates([g for g in games if {g[0], g[1]} == {a, b}], a)
            if b in rates:
                win[f"{a} vs {b}"] = rates[b]
        samples[q] = elo_samples(games, rounds, seed=seed)
        out["questions"][q] = {"games": len(games), "win": win, "elo": summary(samples[q])}
    if len(samples) == len(QUESTIONS):
        models = set.intersection(*(set(s) for s in samples.values()))
        out["elo_average"] = summary({m: [sum(v) / len(QUESTIONS) for v in zip(*(samples[q][m] for q in QUESTIONS))]
                                      for m in models})
    return out


def reconstruction_residual(dae: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per image: the mean absolute difference between x and the autoencoder's reconstruction of it."""
    with torch.no_grad():
        return (dae(x) - x).abs().flatten(1).mean(1)


def rater_check(score, reals, failure: torch.Tensor, failure_name: str, teacher_1: torch.Tensor, tie: float,
                check_min: float, check_band: float) -> dict:
    """A rater ``score(images, prompted labels)`` on real images (``reals``: per study image its prompted digit
    in ``labels``, a real image of it in ``first`` and k more in ``pool``, n x k x ...): how often it prefers each pool image over
    the known failure of the same study image, and the first real image over each pool image (ties half);
    it passes when the first share is >= check_min and the second within 0.5 +- check_band. Also, for the
    record, real over the teacher's 1-step sample (the paper's check for both questions)."""
    y, n, k = reals.labels, *reals.pool.shape[:2]
    s_pool = score(reals.pool.flatten(0, 1), y.repeat_interleave(k)).view(n, k)
    s_first, s_fail, s_t1 = score(reals.first, y), score(failure, y), score(teacher_1, y)
    out = {"real_over_failure": share(s_pool, s_fail[:, None], tie),
           "real_vs_real": share(s_first[:, None], s_pool, tie),
           "real_vs_teacher@1": share(s_pool, s_t1[:, None], tie), "pairs": n * k, "failure": failure_name}
    out["passed"] = out["real_over_failure"] >= check_min and abs(out["real_vs_real"] - 0.5) <= check_band
    return out


def share(first: torch.Tensor, second: torch.Tensor, tie: float) -> float:
    """How often a rater prefers the first image of each pair (a tie counts half); broadcasts."""
    d = first - second
    return float(((d > tie).float() + 0.5 * (d.abs() <= tie).float()).mean())


def sentence(res: dict, validation: dict) -> str:
    """Where the paper's two claims hold here (ADD at 1 step beats the consistency student at 4; at 4 steps it
    beats the teacher at 50), per question; none from a rater that failed its check on real images."""
    parts = []
    for q, v in res["questions"].items():
        check = validation[q]
        if not check["passed"]:
            parts.append(f"the {q} rater failed its check on real images (real preferred over "
                         f"{check['failure']} {100 * check['real_over_failure']:.0f}% of the time, one real image "
                         f"over another {100 * check['real_vs_real']:.0f}%), so its votes are no evidence on the "
                         f"paper's claims")
            continue
        for key in ("add@1 vs consistency@4", "add@4 vs teacher@50"):
            if key in v["win"]:
                w = v["win"][key]
                verdict = "holds" if w["low"] > 0.5 else "is reversed" if w["high"] < 0.5 else "is not resolved"
                parts.append(f"{key} on {q}: {100 * w['win_rate']:.0f}% [{100 * w['low']:.0f}, "
                             f"{100 * w['high']:.0f}], the paper's claim {verdict}")
    return ("Automatic raters: " + "; ".join(parts) + ".") if parts else ""
