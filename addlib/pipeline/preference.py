"""Stage preference: the paper's user study (its Sec. 4.2, Figs. 5-7) at this scale. Every model in the
comparisons draws one image per study prompt and noise; blinded pairs (preference.schedule) are judged on prompt
following and on image quality by automatic raters and by the people who voted in notebooks/vote.ipynb; win rates
and Elo per source of votes, the paper's bars and its Elo-against-speed plot.

The automatic raters use only the evaluation's networks (never the discriminator's F or anything a student was
trained against): prompt following is the in-domain classifier's probability of the prompted digit; image quality
is the realism score (Kynkaanniemi et al. 2019) in the detail space (the evaluators stage's denoising
autoencoder) against the reference split. Each is
checked on real images: a held-out real image of the prompted digit against the teacher's 1-step sample (the rater
should prefer the real one almost always) and against another held-out real one (near 50%).
"""
from __future__ import annotations

import csv
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
from ..metrics import extract, realism_score
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
    table = _comparison_rows(root)
    gens = _generators(p, root, bundle, cache, table)
    models = sorted({m for c in cfg.comparisons for m in c} | {"teacher@1"})
    images = {}
    for m in models:
        images[m], _ = E.generate(gens[m], prompts, noise, ev.batch_size, seed=cfg.seed, progress=progress)
    # 2. The automatic raters' per-image scores: prompt following and realism.
    labels = prompts.labels

    def prompt_score(x):
        with torch.no_grad():
            prob = torch.cat([sc.logits(x[i:i + 500]).softmax(1) for i in range(0, len(x), 500)])
        return prob[torch.arange(len(x)), labels]

    def quality_score(x):  # in the detail space: the classifier's features barely see blur or lost strokes
        return realism_score(sc.scorer.detail_ref_feats, extract(sc.scorer.detail, x), cfg.realism_k).clamp_min(1e-6).log()

    scores = {"prompt": {}, "quality": {}}
    for m, x in images.items():
        scores["prompt"][m] = prompt_score(x).view(cfg.prompts, cfg.seeds).tolist()
        scores["quality"][m] = quality_score(x).view(cfg.prompts, cfg.seeds).tolist()
    ties = {"prompt": cfg.prompt_tie, "quality": math.log1p(cfg.quality_tie)}
    comparisons = [tuple(c) for c in cfg.comparisons]
    pairs = P.schedule(comparisons, cfg.prompts, cfg.seeds, cfg.seed)
    auto = [v for q in P.QUESTIONS for v in P.automatic_votes(pairs, {q: scores[q]}, f"auto-{q}", ties[q])]
    # 3. The raters on real images (held-out split, the prompted digit): against the teacher's 1 step, against real.
    real_a, real_b = _held_out_pair(sc.sel, labels, cfg.seed)
    validation = {}
    for q, fn in (("prompt", prompt_score), ("quality", quality_score)):
        s_a, s_b, s_t = fn(real_a), fn(real_b), fn(images["teacher@1"])
        validation[q] = {"real_vs_teacher@1": _share(s_a, s_t, ties[q]), "real_vs_real": _share(s_a, s_b, ties[q])}
    # 4. People's votes (notebooks/vote.ipynb), reported apart; then the results of each source.
    by_id = {q.id: q for q in pairs}
    human = P.read_votes(root / cfg.votes, by_id)
    seconds = {m: _seconds(table, m) for m in models}
    result = {"prompts": cfg.prompts, "seeds": cfg.seeds, "pairs": len(pairs), "models": models,
              "seconds_per_image": seconds, "rater_validation": validation,
              "automatic": P.study_results(pairs, auto, comparisons, cfg.elo_rounds, cfg.seed),
              "human": P.study_results(pairs, human, comparisons, cfg.elo_rounds, cfg.seed)}
    result["sentence"] = _sentence(result["automatic"])
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


def _held_out_pair(split, labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two different held-out real images of each prompted digit."""
    g = torch.Generator().manual_seed(seed)
    a, b = [], []
    for y in labels.tolist():
        idx = torch.nonzero(split.labels == y).flatten()
        i, j = idx[torch.randperm(len(idx), generator=g)[:2]].tolist()
        a.append(i)
        b.append(j)
    x = split.pixels()
    return x[a], x[b]


def _share(first: torch.Tensor, second: torch.Tensor, tie: float) -> float:
    """How often a rater prefers the first image of each pair (a tie counts half)."""
    d = first - second
    return float(((d > tie).float() + 0.5 * (d.abs() <= tie).float()).mean())


def _sentence(res: dict) -> str:
    """Where the paper's two claims hold here (ADD at 1 step beats the consistency student at 4; at 4 steps it
    beats the teacher at 50), per question."""
    parts = []
    for q, v in res["questions"].items():
        for key in ("add@1 vs consistency@4", "add@4 vs teacher@50"):
            if key in v["win"]:
                w = v["win"][key]
                verdict = "holds" if w["low"] > 0.5 else "is reversed" if w["high"] < 0.5 else "is not resolved"
                parts.append(f"{key} on {q}: {100 * w['win_rate']:.0f}% [{100 * w['low']:.0f}, "
                             f"{100 * w['high']:.0f}], the paper's claim {verdict}")
    return "; ".join(parts) + "." if parts else ""


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
    lines += ["### the automatic raters on real images\n", "| question | real preferred over the teacher's 1 step | "
              "real over another real |", "|---|---|---|"]
    for q, v in result["rater_validation"].items():
        lines.append(f"| {q} | {100 * v['real_vs_teacher@1']:.1f}% | {100 * v['real_vs_real']:.1f}% |")
    return "\n".join(lines) + "\n"
