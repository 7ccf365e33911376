"""Stage evaluate: Table 2 and Figures 4 and 7 at this scale, the teacher's solvers against the ADD student
(evaluation.py), every row on the same prompts and noise. The teacher's rows come from the solvers stage
(they do not depend on the student); this stage adds the student's, the consistency baseline's and the
zero-shot rows."""
from __future__ import annotations

import csv
from pathlib import Path

import torch
from accelerate import Accelerator

from .. import config as C
from .. import data as D
from .. import evaluation as E
from .. import figures
from .. import plots
from ..columns import TABLE2
from ..consistency import SkipGrid, consistency_x0
from ..diffusion import student_schedule
from ..latent import load_teacher
from ..models import load_unet
from ..metrics import extract, fid_from_features, split_halves_fid
from ..paths import MODELS, REPORTS, code_version, write_json
from ..sampling import initial_noise, unet_input_shape
from ..training import set_threads
from .common import load_prepared, sections
from .scoring import read_solver_rows, scoring, table_row, test_inputs


def run(p: C.Params, root: Path = Path("."), progress: bool = True) -> dict:
    cfg, add_cfg = p.evaluate, p.add
    set_threads(cfg.num_threads)
    solved = read_solver_rows(cfg, root)  # the teacher's rows, made with these evaluate values (before any compute)
    acc = Accelerator()  # one process in the pipeline; under `accelerate launch` the sampling is split
    # 1. What every row shares: the scoring (reference features, metrics' networks), the test prompts and
    # noise, and the three models.
    ds, cache = load_prepared(root)
    cache = cache.extended(add_cfg.sample_prompts, p.text_encoder)
    m = Models(p, root, cache)
    sc = scoring(ds, cache, p.evaluators, cfg, root)
    floor = split_halves_fid(sc.ref_feats, seed=cfg.seed)
    test_prompts, test_noise = test_inputs(sc, cfg, cache, m.noise_shape)

    def row(gen) -> dict:
        images, throughput = E.generate(gen, test_prompts, test_noise, cfg.batch_size, seed=cfg.seed, accelerator=acc)
        return table_row(gen, images, throughput, sc, test_prompts, test_noise, cfg.speed_repeats)

    # 2. Teacher rows: the solvers stage's (guidance chosen on the held-out split), on these prompts and noise.
    rows, guidance = list(solved["rows"]), solved["teacher_guidance"]
    # 3. Student rows, plus the FID spread over noise seeds.
    seed_fids = {}
    for steps in sorted(cfg.student_steps):
        rows.append(row(m.student(steps)))
        seed_fids[f"student/add/{steps}"] = fid_over_seeds(m.student(steps), rows[-1]["fid"], sc, test_prompts,
                                                          m.noise_shape, cfg, acc)
    # 4. The consistency-distillation baseline (stage consistency) at the student's step counts.
    rows += [row(m.consistency(steps)) for steps in sorted(cfg.student_steps)]
    # 5. Zero-shot prompts (the embedded digits only).
    zero_shot = zero_shot_rows(p, m, sc, cache, test_prompts, test_noise, acc) if p.data.source == "mnist" else []
    # 6. Outputs: the table (csv + markdown), metrics, plots, Figure 4 (written by one process).
    if not acc.is_main_process:
        return {}
    write_tables(rows, root)
    targets = E.check_targets(rows)
    result = {"fid_features": sc.feat_name, "clip_model": "transformers CLIP" if cfg.clip else "in-domain image tower",
              "reference": cfg.reference, "reference_images": len(sc.ref), "num_samples": cfg.num_samples,
              "fid_floor_split_halves": floor, "student_fid_over_seeds": seed_fids, "teacher_guidance": guidance,
              "zero_shot_rows": {f"student/add/{r['steps']}": r for r in zero_shot},
              "rows": {f"{r['model']}/{r['sampler']}/{r['steps']}": r for r in rows}, "targets": targets,
              "targets_met": sum(t["met"] for t in targets.values()), "targets_total": len(targets)}
    write_json(root / REPORTS / "metrics" / "evaluate.json", result)
    write_json(root / REPORTS / "metrics" / "headline.json", E.headline(rows, targets))  # `dvc metrics show`
    out = root / REPORTS / "evaluate"
    figures.fid_vs_nfe(rows, floor, out / "fid_vs_nfe.png",
                       f"FID vs NFE ({cfg.num_samples} samples, {sc.feat_name} features)")
    figures.quality_vs_time(rows, out / "quality_vs_time.png", "quality against sampling time (batch 1, this machine)")
    figure4(rows, m, cfg, add_cfg.sample_prompts, cache, out / "figure4.png")
    C.write_resolved(sections(p, "seed", "data", "text_encoder", "teacher", "add", "consistency", "evaluators", "evaluate"),
                     out / "config.json", code_version=code_version(root))
    return result


class Models:
    """The rows' generators: the teacher at a sampler, step count and guidance; the ADD student and the LCM
    baseline at a step count (on the teacher's schedule, at LCM's timesteps)."""

    def __init__(self, p: C.Params, root: Path, cache):
        bundle = load_teacher(p.teacher, root / MODELS / "teacher")
        self.schedule, self.space, self.unet = bundle.schedule, bundle.space, bundle.unet.eval()
        self.noise_shape = unet_input_shape(self.unet)  # latent-shaped for latent teachers
        self.empty = tuple(a for a in cache[torch.tensor([0])][:2])
        self.add_unet = load_unet(root / MODELS / "student", self.space.factor).eval()
        self.sched_s = student_schedule(p.teacher.schedule, p.add.student_zero_terminal_snr)
        self.student_timesteps = p.add.student_timesteps
        self.lcm_unet = load_unet(root / MODELS / "consistency", self.space.factor).eval()
        self.grid = SkipGrid(self.schedule.T, p.consistency.solver_steps)
        self.lcm_x0 = consistency_x0(p.consistency, self.schedule)

    def teacher(self, sampler: str, steps: int, w: float) -> E.Generator:
        return E.Generator("teacher", sampler, steps, w, self.unet, self.schedule, empty=self.empty, space=self.space)

    def student(self, steps: int) -> E.Generator:
        return E.Generator("student", "add", steps, 1.0, self.add_unet, self.sched_s,
                           trained_timesteps=self.student_timesteps, space=self.space)

    def consistency(self, steps: int) -> E.Generator:
        return E.Generator("consistency", "lcm", steps, 1.0, self.lcm_unet, self.schedule, space=self.space,
                           timesteps=self.grid.sampling(steps), x0_fn=self.lcm_x0)


def fid_over_seeds(gen, fid: float, sc, prompts, noise_shape, cfg, acc) -> dict:
    """The row's FID (``fid``, at the test noise) and at ``evaluate.seed_repeats`` further noise seeds."""
    fids = [fid]
    for k in range(1, cfg.seed_repeats + 1):
        x, _ = E.generate(gen, prompts, initial_noise(cfg.num_samples, noise_shape, cfg.seed + k), cfg.batch_size,
                          seed=cfg.seed + k, accelerator=acc)
        fids.append(fid_from_features(sc.ref_feats, extract(sc.feat_fn, x)))
    t = torch.tensor(fids, dtype=torch.float64)
    return {"fids": fids, "mean": float(t.mean()), "std": float(t.std()) if len(fids) > 1 else 0.0}


def zero_shot_rows(p: C.Params, m: Models, sc, cache, prompts, noise, acc) -> list[dict]:
    """Each test prompt's digit in a caption template that no training caption uses (data.ZERO_SHOT_TEMPLATES):
    the student's rows again, on the same noise."""
    cfg = p.evaluate
    captions = D.zero_shot_captions(prompts.labels, cfg.seed)
    zs_prompts = sc.prompts_of(captions, prompts.labels, cache.extended(captions, p.text_encoder))
    rows = []
    for steps in sorted(cfg.student_steps):
        images, _ = E.generate(m.student(steps), zs_prompts, noise, cfg.batch_size, seed=cfg.seed, accelerator=acc)
        rows.append({"model": "student", "sampler": "add", "steps": steps, "prompts": "zero-shot",
                     **sc.scorer(images, zs_prompts)})
    return rows


def write_tables(rows: list[dict], root: Path) -> None:
    """Table 2 as comparison.csv (columns.TABLE2) and comparison.md."""
    tables = root / REPORTS / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    with open(tables / "comparison.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TABLE2, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (tables / "comparison.md").write_text(E.markdown_table(rows))


def figure4(rows: list[dict], m: Models, cfg, prompts: list[str], cache, path: Path) -> None:
    """Figure 4: the same prompts and noise for the teacher (its best solver at each grid step count), the ADD
    student and the LCM baseline at the student's step counts."""
    k = cfg.grid_per_prompt
    gp = E.prompts_of([q for q in prompts for _ in range(k)], torch.full((len(prompts) * k,), -1), cache)
    noise = initial_noise(len(gp), m.noise_shape, cfg.seed)
    blocks = []
    for steps in cfg.grid_steps:
        cands = [r for r in rows if r["model"] == "teacher" and r["steps"] == steps]
        sampler, w = (min(cands, key=lambda r: r["fid"])[k2] for k2 in ("sampler", "guidance")) if cands \
            else (cfg.teacher_samplers[0], 1.0)
        blocks.append((f"teacher {sampler}\n{steps} steps, w={w:g}", m.teacher(sampler, steps, w)(gp, noise)))
    for steps in sorted(cfg.student_steps):
        blocks.append((f"ADD student\n{steps} step{'s' if steps > 1 else ''}", m.student(steps)(gp, noise, seed=cfg.seed)))
    for steps in sorted(cfg.student_steps):
        blocks.append((f"consistency (LCM)\n{steps} step{'s' if steps > 1 else ''}",
                       m.consistency(steps)(gp, noise, seed=cfg.seed)))
    plots.block_grid(blocks, prompts, k, path, "Figure 4 at this scale: the same prompts and noise in every block")
