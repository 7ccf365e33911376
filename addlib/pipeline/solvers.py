"""Stage solvers: the teacher's rows of Table 2 (each solver at each step count, its guidance chosen on the
held-out split, never on the test reference) and the metrics' calibration table. Neither depends on the
student, so an experiment on ADD reruns neither: the evaluate stage reads these rows (scoring.SOLVER_ROWS) and adds the
student's, the consistency baseline's and the zero-shot rows on the same prompts and noise (issue 37;
scoring.read_solver_rows)."""
from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator

from .. import calibration as K
from .. import config as C
from .. import evaluation as E
from ..latent import load_teacher
from ..metrics import extract, fid_from_features
from ..paths import MODELS, REPORTS, code_version, write_json
from ..sampling import initial_noise, unet_input_shape
from ..training import set_threads
from .common import load_prepared, sections
from .scoring import SOLVER_KEYS, SOLVER_ROWS, scoring, table_row, test_inputs

def run(p: C.Params, root: Path = Path("."), progress: bool = True) -> dict:
    cfg = p.evaluate
    set_threads(cfg.num_threads)
    acc = Accelerator()  # one process in the pipeline; under `accelerate launch` the sampling is split
    ds, cache = load_prepared(root)
    bundle = load_teacher(p.teacher, root / MODELS / "teacher")
    schedule, space, teacher = bundle.schedule, bundle.space, bundle.unet.eval()
    noise_shape = unet_input_shape(teacher)  # latent-shaped for latent teachers
    sc = scoring(ds, cache, p.evaluators, cfg, root)
    test_prompts, test_noise = test_inputs(sc, cfg, cache, noise_shape)
    sel_prompts = sc.prompts_for(sc.sel, cfg.guidance_samples, cfg.guidance_seed, cache)
    sel_noise = initial_noise(cfg.guidance_samples, noise_shape, cfg.guidance_seed)
    empty = tuple(a for a in cache[torch.tensor([0])][:2])

    def teacher_gen(sampler, steps, w):
        return E.Generator("teacher", sampler, steps, w, teacher, schedule, empty=empty, space=space)

    # 1. Each solver at each step count: guidance chosen on the held-out split (up to guidance_max_steps; more
    # steps reuse the scale chosen at the largest), then the row on the test prompts and noise.
    rows, guidance = [], {}
    for sampler in cfg.teacher_samplers:
        chosen: dict[int, float] = {}
        for steps in sorted(cfg.teacher_steps):
            if steps <= cfg.guidance_max_steps or not chosen:
                w, fids = E.choose_guidance(lambda w: teacher_gen(sampler, steps, w), cfg.guidance_candidates,
                                            sel_prompts, sel_noise,
                                            lambda x: fid_from_features(sc.sel_feats, extract(sc.feat_fn, x)),
                                            cfg.batch_size, accelerator=acc)
                chosen[steps] = w
                guidance[f"{sampler}/{steps}"] = {"chosen": w, "heldout_fid": {f"{k:g}": v for k, v in fids.items()}}
            else:
                w = chosen[max(chosen)]
                guidance[f"{sampler}/{steps}"] = {"chosen": w, "reused_from_steps": max(chosen)}
            gen = teacher_gen(sampler, steps, w)
            images, throughput = E.generate(gen, test_prompts, test_noise, cfg.batch_size, progress=progress,
                                            accelerator=acc)
            rows.append(table_row(gen, images, throughput, sc, test_prompts, test_noise, cfg.speed_repeats))
    if not acc.is_main_process:
        return {}
    # 2. The calibration (calibration.py): known degradations of real images, scored like the rows above.
    calibration = K.calibrate(sc.scorer, sc.ref.pixels(), sc.ref.labels, sc.ref.captions,
                              lambda caps, y: sc.prompts_of(caps, y, cache), cfg.num_samples, cfg.seed)
    write_json(root / REPORTS / "metrics" / "calibration.json", calibration)
    tables = root / REPORTS / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    (tables / "calibration.md").write_text(K.markdown(calibration))
    result = {"evaluate": {k: getattr(cfg, k) for k in SOLVER_KEYS}, "fid_features": sc.feat_name, "rows": rows,
              "teacher_guidance": guidance}
    write_json(root / SOLVER_ROWS, result)
    C.write_resolved(sections(p, "seed", "data", "text_encoder", "teacher", "evaluators", "evaluate"),
                     root / REPORTS / "solvers" / "config.json", code_version=code_version(root))
    return result
