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
    ds, cache = load_prepared(root)
    cache = cache.extended(add_cfg.sample_prompts, p.text_encoder)
    out = root / REPORTS / "evaluate"
    bundle = load_teacher(p.teacher, root / MODELS / "teacher")
    schedule, space, teacher = bundle.schedule, bundle.space, bundle.unet.eval()
    noise_shape = unet_input_shape(teacher)  # latent-shaped for latent teachers
    sc = scoring(ds, cache, p.evaluators, cfg, root)
    floor = split_halves_fid(sc.ref_feats, seed=cfg.seed)

    test_prompts, test_noise = test_inputs(sc, cfg, cache, noise_shape)
    student = load_unet(root / MODELS / "student", space.factor).eval()
    sched_s = student_schedule(p.teacher.schedule, add_cfg.student_zero_terminal_snr)
    empty = tuple(a for a in cache[torch.tensor([0])][:2])

    def teacher_gen(sampler, steps, w):
        return E.Generator("teacher", sampler, steps, w, teacher, schedule, empty=empty, space=space)

    def student_gen(steps):
        return E.Generator("student", "add", steps, 1.0, student, sched_s,
                           trained_timesteps=add_cfg.student_timesteps, space=space)

    consistency = load_unet(root / MODELS / "consistency", space.factor).eval()
    grid = SkipGrid(schedule.T, p.consistency.solver_steps)

    def consistency_gen(steps):  # the baseline runs on the teacher's schedule, at LCM's timesteps
        return E.Generator("consistency", "lcm", steps, 1.0, consistency, schedule, space=space,
                           timesteps=grid.sampling(steps), x0_fn=consistency_x0(p.consistency, schedule))

    seed_fids = {}

    def add_row(gen, images, throughput):
        rows.append(table_row(gen, images, throughput, sc, test_prompts, test_noise, cfg.speed_repeats))

    # 1. Teacher rows: the solvers stage's (guidance chosen on the held-out split), on these prompts and noise.
    rows, guidance = list(solved["rows"]), solved["teacher_guidance"]
    # 2. Student rows, plus the FID spread over noise seeds.
    for steps in sorted(cfg.student_steps):
        gen = student_gen(steps)
        images, throughput = E.generate(gen, test_prompts, test_noise, cfg.batch_size, seed=cfg.seed, accelerator=acc)
        add_row(gen, images, throughput)
        fids = [rows[-1]["fid"]]
        for k in range(1, cfg.seed_repeats + 1):
            x, _ = E.generate(gen, test_prompts, initial_noise(cfg.num_samples, noise_shape, cfg.seed + k),
                              cfg.batch_size, seed=cfg.seed + k, accelerator=acc)
            fids.append(fid_from_features(sc.ref_feats, extract(sc.feat_fn, x)))
        t = torch.tensor(fids, dtype=torch.float64)
        seed_fids[f"student/add/{steps}"] = {"fids": fids, "mean": float(t.mean()),
                                             "std": float(t.std()) if len(fids) > 1 else 0.0}
    # 2a. The consistency-distillation baseline (stage consistency) at the student's step counts.
    for steps in sorted(cfg.student_steps):
        gen = consistency_gen(steps)
        images, throughput = E.generate(gen, test_prompts, test_noise, cfg.batch_size, seed=cfg.seed, accelerator=acc)
        add_row(gen, images, throughput)
    # 2b. Zero-shot prompts (the embedded digits): each test prompt's digit in a caption template that no
    # training caption uses (data.ZERO_SHOT_TEMPLATES), the student rows again on the same noise.
    zero_shot = []
    if p.data.source == "mnist":
        captions = D.zero_shot_captions(test_prompts.labels, cfg.seed)
        cache = cache.extended(captions, p.text_encoder)
        zs_prompts = sc.prompts_of(captions, test_prompts.labels, cache)
        for steps in sorted(cfg.student_steps):
            images, _ = E.generate(student_gen(steps), zs_prompts, test_noise, cfg.batch_size, seed=cfg.seed,
                                   accelerator=acc)
            zero_shot.append({"model": "student", "sampler": "add", "steps": steps, "prompts": "zero-shot",
                              **sc.scorer(images, zs_prompts)})

    # 3. Outputs: the table (csv + markdown), metrics, plots, Figure 4 (written by one process).
    if not acc.is_main_process:
        return {}
    tables = root / REPORTS / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    with open(tables / "comparison.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=E.COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (tables / "comparison.md").write_text(E.markdown_table(rows))
    targets = E.check_targets(rows)
    result = {"fid_features": sc.feat_name, "clip_model": "transformers CLIP" if cfg.clip else "in-domain image tower",
              "reference": cfg.reference, "reference_images": len(sc.ref), "num_samples": cfg.num_samples,
              "fid_floor_split_halves": floor, "student_fid_over_seeds": seed_fids, "teacher_guidance": guidance,
              "zero_shot_rows": {f"student/add/{r['steps']}": r for r in zero_shot},
              "rows": {f"{r['model']}/{r['sampler']}/{r['steps']}": r for r in rows}, "targets": targets,
              "targets_met": sum(t["met"] for t in targets.values()), "targets_total": len(targets)}
    write_json(root / REPORTS / "metrics" / "evaluate.json", result)
    write_json(root / REPORTS / "metrics" / "headline.json", E.headline(rows, targets))  # `dvc metrics show`
    figures.fid_vs_nfe(rows, floor, out / "fid_vs_nfe.png",
                     f"FID vs NFE ({cfg.num_samples} samples, {sc.feat_name} features)")
    figures.quality_vs_time(rows, out / "quality_vs_time.png", "quality against sampling time (batch 1, this machine)")
    # Figure 4: the same prompts and noise for the teacher (its best solver at each step count) and the student.
    k = cfg.grid_per_prompt
    gp = E.prompts_of([q for q in add_cfg.sample_prompts for _ in range(k)], torch.full((len(add_cfg.sample_prompts) * k,), -1),
                      cache)
    noise = initial_noise(len(gp), noise_shape, cfg.seed)
    blocks = []
    for steps in cfg.grid_steps:
        cands = [r for r in rows if r["model"] == "teacher" and r["steps"] == steps]
        sampler, w = (min(cands, key=lambda r: r["fid"])[k2] for k2 in ("sampler", "guidance")) if cands \
            else (cfg.teacher_samplers[0], 1.0)
        blocks.append((f"teacher {sampler}\n{steps} steps, w={w:g}", teacher_gen(sampler, steps, w)(gp, noise)))
    for steps in sorted(cfg.student_steps):
        blocks.append((f"ADD student\n{steps} step{'s' if steps > 1 else ''}", student_gen(steps)(gp, noise, seed=cfg.seed)))
    for steps in sorted(cfg.student_steps):
        blocks.append((f"consistency (LCM)\n{steps} step{'s' if steps > 1 else ''}",
                       consistency_gen(steps)(gp, noise, seed=cfg.seed)))
    plots.block_grid(blocks, add_cfg.sample_prompts, k, out / "figure4.png",
                     "Figure 4 at this scale: the same prompts and noise in every block")
    C.write_resolved(sections(p, "seed", "data", "text_encoder", "teacher", "add", "consistency", "evaluators", "evaluate"),
                     out / "config.json", code_version=code_version(root))
    return result
