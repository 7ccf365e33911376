"""Stage preference: the paper's user study (its Sec. 4.2, Figs. 5-7) at this scale. Every model in the
comparisons draws one image per study prompt and noise; blinded pairs (preference.schedule) are judged on prompt
following and on image quality by automatic raters and by the people who voted in notebooks/vote.ipynb; win rates
and Elo per source of votes, the paper's bars and its Elo-against-speed plot.

The automatic raters use only the evaluation's networks (never the discriminator's F or anything a student was
trained against). Prompt following: the in-domain classifier's probability of the prompted digit. Image quality: the
detail autoencoder's reconstruction residual, the mean absolute difference between an image and its reconstruction
(the evaluators stage's denoising autoencoder): a denoising autoencoder's r(x) - x points towards the data
(Alain & Bengio 2014), so its size says how far an image is from real digits, and reconstruction error is the usual
per-sample novelty score. (The realism score of Kynkaanniemi et al. 2019, tried first, prefers the teacher's
1-step blurred class means to real digits: a k-NN criterion rewards images at the centre of a class.)

Each rater is checked on held-out real images before its votes count (``rater_check``): it must prefer a real
image of the prompted digit over a known failure almost always (quality: the teacher's 1-step sample, a blurred
class mean; prompt following: a real image of another digit; the class means do follow the prompt) and one real
image over another about half the time. A rater that fails is reported with its numbers, and the study's
sentence draws no claim from its votes.
"""
from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from .. import config as C
from .. import evaluation as E
from .. import figures
from .. import preference as P
from ..consistency import SkipGrid, consistency_x0
from ..diffusion import student_schedule
from ..latent import load_teacher
from ..models import load_unet
from ..evaluators import load_evaluator
from ..paths import MODELS, REPORTS, code_version, write_json
from ..sampling import initial_noise, unet_input_shape
from ..training import set_threads
from .common import load_prepared, sections
from .scoring import scoring

STUDY = "preference"  # models/preference: the study's images and pairs, for notebooks/vote.ipynb


def run(p: C.Params, root: Path = Path("."), progress: bool = True) -> dict:
    cfg, ev = p.preference, p.evaluate
    set_threads(ev.num_threads)
    ds, cache = load_prepared(root)
    bundle = load_teacher(p.teacher, root / MODELS / "teacher")
    sc = scoring(ds, cache, p.evaluators, ev, root)
    if sc.logits is None:
        raise C.ConfigError("preference: the automatic prompt rater needs class labels (an in-domain classifier)")
    # 1. The study's prompts (each with `seeds` noises) and the models' generators.
    base = sc.prompts_for(sc.ref, cfg.prompts, cfg.seed, cache)
    order = torch.arange(cfg.prompts).repeat_interleave(cfg.seeds)  # image i: prompt i // seeds, noise i % seeds
    prompts = sc.prompts_of([base.captions[i] for i in order], base.labels[order], cache)
    noise = initial_noise(len(order), unet_input_shape(bundle.unet), cfg.seed)
    reals = _held_out_reals(sc.sel, prompts.labels, cfg.check_reals, cfg.seed)  # the raters' check (before compute)
    table = _comparison_rows(root)
    gens = _generators(p, root, bundle, cache, table)
    models = sorted({m for c in cfg.comparisons for m in c} | {"teacher@1"})
    images = {}
    for m in models:
        images[m], _ = E.generate(gens[m], prompts, noise, ev.batch_size, seed=cfg.seed, progress=progress)
    # 2. The automatic raters' per-image scores: prompt following and the reconstruction residual.
    labels = prompts.labels

    def prompt_score(x, y):
        with torch.no_grad():
            prob = torch.cat([sc.logits(x[i:i + 500]).softmax(1) for i in range(0, len(x), 500)])
        return prob[torch.arange(len(x)), y]

    dae = load_evaluator("detail", p.evaluators.detail, sc.ref.pixels().shape[1], None, root / MODELS / "evaluators")

    def quality_score(x, y=None):  # minus the log reconstruction residual: higher is closer to real digits
        return -torch.cat([P.reconstruction_residual(dae, x[i:i + 500]) for i in range(0, len(x), 500)]).log()

    scores = {"prompt": {}, "quality": {}}
    for m, x in images.items():
        scores["prompt"][m] = prompt_score(x, labels).view(cfg.prompts, cfg.seeds).tolist()
        scores["quality"][m] = quality_score(x).view(cfg.prompts, cfg.seeds).tolist()
    ties = {"prompt": cfg.prompt_tie, "quality": math.log1p(cfg.quality_tie)}
    comparisons = [tuple(c) for c in cfg.comparisons]
    pairs = P.schedule(comparisons, cfg.prompts, cfg.seeds, cfg.seed)
    auto = [v for q in P.QUESTIONS for v in P.automatic_votes(pairs, {q: scores[q]}, f"auto-{q}", ties[q])]
    # 3. Each rater checked on held-out real images of the prompted digit, against a known failure and against real.
    validation = {}
    for q, fn, failure, name in (("prompt", prompt_score, reals.other_digit, "a real image of another digit"),
                                 ("quality", quality_score, images["teacher@1"], "the teacher's 1 step")):
        validation[q] = P.rater_check(fn, reals, failure, name, images["teacher@1"], ties[q], cfg.check_min,
                                      cfg.check_band)
    # 4. People's votes (notebooks/vote.ipynb), reported apart; then the results of each source.
    by_id = {q.id: q for q in pairs}
    human = P.read_votes(root / cfg.votes, by_id)
    seconds = {m: _seconds(table, m) for m in models}
    result = {"prompts": cfg.prompts, "seeds": cfg.seeds, "pairs": len(pairs), "models": models,
              "seconds_per_image": seconds, "rater_validation": validation, "check_min": cfg.check_min,
              "check_band": cfg.check_band,
              "automatic": P.study_results(pairs, auto, comparisons, cfg.elo_rounds, cfg.seed),
              "human": P.study_results(pairs, human, comparisons, cfg.elo_rounds, cfg.seed)}
    result["sentence"] = P.sentence(result["automatic"], validation)
    out = root / REPORTS / "preference"
    write_json(out / "results.json", result)
    (root / REPORTS / "tables").mkdir(parents=True, exist_ok=True)
    (root / REPORTS / "tables" / "preference.md").write_text(markdown(result))
    auto_res = result["automatic"]
    figures.preference_bars({q: v["win"] for q, v in auto_res["questions"].items()}, out / "win_rates.png",
                            f"automatic raters, {len(pairs)} blinded pairs: win rate of the first model")
    if "elo_average" in auto_res:
        figures.elo_vs_speed(auto_res["elo_average"], seconds, out / "elo_vs_speed.png",
                             "Elo (automatic raters) against sampling time")
    # 5. What people vote on: the images (uint8) and the pairs, for notebooks/vote.ipynb.
    study = root / MODELS / STUDY
    study.mkdir(parents=True, exist_ok=True)
    save_file({m: ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).contiguous() for m, x in images.items()},
              str(study / "images.safetensors"))
    write_json(study / "study.json", {"captions": prompts.captions, "seeds": cfg.seeds,
                                      "pairs": [vars(q) for q in pairs], "models": models})
    C.write_resolved(sections(p, "seed", "data", "text_encoder", "teacher", "add", "consistency", "evaluators",
                              "evaluate", "preference"), out / "config.json", code_version=code_version(root))
    return result


def _comparison_rows(root: Path) -> list[dict]:
    with open(root / REPORTS / "tables" / "comparison.csv") as f:
        return list(csv.DictReader(f))


def _teacher_row(table: list[dict], k: int) -> dict:
    rows = [r for r in table if r["model"] == "teacher" and int(r["steps"]) == k]
    return min(rows, key=lambda r: float(r["fid"]))


def _seconds(table: list[dict], m: str) -> float:
    kind, k = m.split("@")
    model, sampler = {"add": ("student", "add"), "consistency": ("consistency", "lcm")}.get(kind, ("teacher", None))
    if model == "teacher":
        return float(_teacher_row(table, int(k))["seconds_per_image"])
    rows = [r for r in table if r["model"] == model and r["sampler"] == sampler and int(r["steps"]) == int(k)]
    return float(rows[0]["seconds_per_image"]) if rows else float("nan")


def _generators(p: C.Params, root: Path, bundle, cache, table: list[dict]) -> dict[str, E.Generator]:
    """add@K, consistency@K and teacher@K (the teacher's best sampler and guidance at K in Table 2)."""
    cfg = p.preference
    empty = tuple(a for a in cache[torch.tensor([0])][:2])
    student = load_unet(root / MODELS / "student", bundle.space.factor).eval()
    consistency = load_unet(root / MODELS / "consistency", bundle.space.factor).eval()
    sched_s = student_schedule(p.teacher.schedule, p.add.student_zero_terminal_snr)
    grid = SkipGrid(bundle.schedule.T, p.consistency.solver_steps)
    out = {}
    for m in {m for c in cfg.comparisons for m in c} | {"teacher@1"}:
        kind, k = m.split("@")
        k = int(k)
        if kind == "add":
            out[m] = E.Generator("student", "add", k, 1.0, student, sched_s,
                                 trained_timesteps=p.add.student_timesteps, space=bundle.space)
        elif kind == "consistency":
            out[m] = E.Generator("consistency", "lcm", k, 1.0, consistency, bundle.schedule, space=bundle.space,
                                 timesteps=grid.sampling(k), x0_fn=consistency_x0(p.consistency, bundle.schedule))
        else:
            row = _teacher_row(table, k)
            out[m] = E.Generator("teacher", row["sampler"], k, float(row["guidance"]), bundle.unet.eval(),
                                 bundle.schedule, empty=empty, space=bundle.space)
    return out


@dataclasses.dataclass
class HeldOutReals:
    """For each study image: a held-out real image of its prompted digit (``first``), ``k`` other ones
    (``pool``, n x k x ...), and a held-out real image of another digit (``other_digit``)."""
    labels: torch.Tensor
    first: torch.Tensor
    pool: torch.Tensor
    other_digit: torch.Tensor


def _held_out_reals(split, labels: torch.Tensor, k: int, seed: int) -> HeldOutReals:
    g = torch.Generator().manual_seed(seed)
    first, pool, other = [], [], []
    for y in labels.tolist():
        same = torch.nonzero(split.labels == y).flatten()
        if len(same) < k + 1:
            raise C.ConfigError(f"preference.check_reals: {k} + 1 held-out images of digit {y} needed, "
                                f"the split has {len(same)}")
        idx = same[torch.randperm(len(same), generator=g)[:k + 1]]
        first.append(int(idx[0]))
        pool += idx[1:].tolist()
        diff = torch.nonzero(split.labels != y).flatten()
        other.append(int(diff[torch.randint(len(diff), (1,), generator=g)]))
    x = split.pixels()
    return HeldOutReals(labels, x[first], x[pool].view(len(first), k, *x.shape[1:]), x[other])


def markdown(result: dict) -> str:
    """The study's tables: win rates per source and question, the Elo table, the raters' validation."""
    lines = []
    for source in ("automatic", "human"):
        res = result[source]
        lines.append(f"### {source} raters ({res['votes']} votes)\n")
        if not res["questions"]:
            lines.append("no votes yet (notebooks/vote.ipynb)\n")
            continue
        lines += ["| comparison | question | win rate of the first | 95% interval | games | ties |", "|---|---|---|---|---|---|"]
        for q, v in res["questions"].items():
            for key, w in v["win"].items():
                lines.append(f"| {key} | {q} | {100 * w['win_rate']:.1f}% | [{100 * w['low']:.1f}, "
                             f"{100 * w['high']:.1f}] | {w['games']} | {w['ties']} |")
        lines.append("")
        elo_cols = list(res["questions"]) + (["average"] if "elo_average" in res else [])
        lines += ["| model | seconds per image | " + " | ".join(f"Elo ({c})" for c in elo_cols) + " |",
                  "|---|---|" + "---|" * len(elo_cols)]
        for m in result["models"]:
            cells = []
            for c in elo_cols:
                e = (res["elo_average"] if c == "average" else res["questions"][c]["elo"]).get(m)
                cells.append(f"{e['mean']:.1f} [{e['low']:.1f}, {e['high']:.1f}]" if e else "n/a")
            lines.append(f"| {m} | {result['seconds_per_image'][m]:.4f} | " + " | ".join(cells) + " |")
        lines.append("")
    lo, hi = 100 * (0.5 - result["check_band"]), 100 * (0.5 + result["check_band"])
    lines += ["### the automatic raters checked on held-out real images\n",
              f"A rater passes when it prefers a real image of the prompted digit over the known failure at least "
              f"{100 * result['check_min']:.0f}% of the time and one real image over another {lo:.0f}-{hi:.0f}%.\n",
              "| question | known failure | real preferred over it | real over another real | real over the "
              "teacher's 1 step | pairs | check |", "|---|---|---|---|---|---|---|"]
    for q, v in result["rater_validation"].items():
        lines.append(f"| {q} | {v['failure']} | {100 * v['real_over_failure']:.1f}% | {100 * v['real_vs_real']:.1f}% "
                     f"| {100 * v['real_vs_teacher@1']:.1f}% | {v['pairs']} | {'passed' if v['passed'] else '**failed**'} |")
    return "\n".join(lines) + "\n"
