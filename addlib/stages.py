"""Pipeline stages: what each notebook calls, and the runner that DVC invokes.

``python -m addlib.stages <stage>`` is each DVC stage's command. Before any compute it validates the whole
params.yaml and the stage's inputs (a bad key, value or missing folder is a one-line error and exit code 2);
then it executes ``notebooks/<stage>.ipynb`` with papermill on the project's registered Jupyter kernel,
passing the params sections as papermill parameters. If the notebook fails, the stage's outputs are removed
(so nothing half-written looks valid) and the executed notebook is kept as ``reports/executed/<stage>.failed.ipynb``.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import config as C
from . import data as D
from . import plots
from .text import TextCache, TextEncoder, encode_captions

KERNEL = "addlib"
DATA_DIR = Path("data/processed")
REPORTS = Path("reports")
MODELS = Path("models")
CHECKPOINTS = Path("checkpoints")
EXECUTED = REPORTS / "executed"

# Which params.yaml sections each stage's notebook receives (dvc.yaml declares the same as `params`).
STAGE_SECTIONS = {
    "prepare": ["seed", "data", "text_encoder"],
    "teacher": ["seed", "data", "text_encoder", "teacher"],
    "features": ["seed", "data", "features"],
    "add": ["seed", "data", "text_encoder", "teacher", "features", "add"],
}


def code_version(root: Path = Path(".")) -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------------
# Stage bodies (called from the notebooks).


def run_prepare(seed: int, data_cfg: C.DataConfig, text_cfg: C.TextEncoderConfig, root: Path = Path(".")) -> dict:
    """Load the images, split, caption, encode every distinct caption once; write the data card."""
    ds = D.load_source(data_cfg, root)
    ds.save(root / DATA_DIR)
    encoder = TextEncoder(text_cfg.path, text_cfg.max_length)
    cache = encode_captions(encoder, ds.captions)
    cache.save(root / DATA_DIR)
    card = D.data_card(ds, data_cfg, len(cache.captions) - 1)
    card["text_encoder"] = {"path": text_cfg.path, "dim": encoder.dim, "max_length": text_cfg.max_length}
    out = root / REPORTS / "data"
    write_json(out / "card.json", card)
    images, captions = D.example_grid(ds, seed=seed)
    plots.image_grid(images, out / "examples.png", cell_labels=captions, cell_inches=1.0,
                     title=f"{data_cfg.source}: training images and their captions")
    C.write_resolved({"seed": seed, "data": data_cfg, "text_encoder": text_cfg}, out / "config.json",
                     code_version=code_version(root))
    return card


def load_prepared(root: Path = Path(".")) -> tuple[D.Dataset, TextCache]:
    return D.Dataset.load(root / DATA_DIR), TextCache.load(root / DATA_DIR)


def run_teacher(seed: int, data_cfg: C.DataConfig, text_cfg: C.TextEncoderConfig, cfg: C.TeacherConfig,
                root: Path = Path("."), progress: bool = True) -> dict:
    """Train the teacher, save it under models/teacher, and draw the sample grid (one row per prompt)."""
    from .diffusion import NoiseSchedule
    from .sampling import initial_noise, sample_teacher
    from .training import train_teacher

    ds, cache = load_prepared(root)
    out = root / REPORTS / "teacher"
    model_dir = root / MODELS / "teacher"
    summary = train_teacher(cfg, seed, ds.subset(D.TRAIN), cache, model_dir, root / CHECKPOINTS / "teacher",
                            live_dir=out / "live", progress=progress)
    unet = summary.pop("unet").eval()
    history = summary.pop("history")
    plots.loss_curve([r["step"] for r in history], {"v-prediction loss": [r["loss"] for r in history]},
                     out / "loss.png", "teacher training loss")
    C.write_resolved({"seed": seed, "data": data_cfg, "text_encoder": text_cfg, "teacher": cfg},
                     model_dir / "addlib_config.json", code_version=code_version(root))
    # Sample grid: fixed seeds, one row per prompt.
    s = cfg.sample
    encoder = TextEncoder(text_cfg.path, text_cfg.max_length)
    states, mask, _ = encoder(s.prompts)
    empty_states, empty_mask, _ = encoder([""])
    rep = lambda a: a.repeat_interleave(s.per_prompt, 0)  # noqa: E731
    noise = initial_noise(len(s.prompts) * s.per_prompt, (ds.images.shape[1],) + tuple(ds.images.shape[2:]), s.seed)
    t0 = time.perf_counter()
    x = sample_teacher(unet, NoiseSchedule(cfg.schedule), rep(states), rep(mask), (empty_states, empty_mask),
                       noise, s.sampler, s.steps, s.guidance_scale)
    sample_seconds = time.perf_counter() - t0
    rows = [list(x[i * s.per_prompt:(i + 1) * s.per_prompt]) for i in range(len(s.prompts))]
    plots.image_grid(rows, out / "samples.png", row_labels=s.prompts,
                     title=f"teacher, {s.sampler} {s.steps} steps, guidance {s.guidance_scale:g}")
    metrics = {**summary, "grid_sample_seconds": sample_seconds}
    write_json(out / "metrics.json", metrics)
    C.write_resolved({"seed": seed, "data": data_cfg, "text_encoder": text_cfg, "teacher": cfg},
                     out / "config.json", code_version=code_version(root))
    return metrics


def run_features(seed: int, data_cfg: C.DataConfig, cfg: C.FeatureNetConfig, root: Path = Path("."),
                 progress: bool = True) -> dict:
    """Pretrain (or load) the discriminator's feature network F and measure it with a linear probe."""
    from .models import count_parameters
    from .pretrain import embed, linear_probe, load_backbone, pretrain_features

    ds = D.Dataset.load(root / DATA_DIR)
    train, hold = ds.subset(D.TRAIN), ds.subset(D.HOLDOUT)
    out, model_dir = root / REPORTS / "features", root / MODELS / "features"
    model_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict = {"source": cfg.source, "objective": cfg.pretrain.objective if cfg.source == "in_domain" else None}
    if cfg.source == "in_domain" and cfg.pretrain.objective != "none":
        run = pretrain_features(cfg, seed, train.pixels(), model_dir, root / CHECKPOINTS / "features",
                                                        live_dir=None, progress=progress)
        history = run.pop("history")
        plots.loss_curve([r["step"] for r in history], {"NT-Xent": [r["loss"] for r in history]},
                         out / "loss.png", "feature network F: SimCLR pretraining loss", logy=False)
        metrics.update(steps=run["steps"], train_seconds=run["train_seconds"])
    else:
        plots.note_figure(out / "loss.png", f"F was not trained here (source: {cfg.source}, "
                                            f"objective: {cfg.pretrain.objective}).")
    backbone = load_backbone(cfg, ds.images.shape[1], model_dir, seed).eval()
    metrics["parameters"] = count_parameters(backbone)
    if (train.labels >= 0).all() and len(set(train.labels.tolist())) > 1:
        z_tr = embed(backbone, train.pixels(), cfg.img_size)
        z_ho = embed(backbone, hold.pixels(), cfg.img_size)
        metrics["linear_probe_accuracy"] = linear_probe(z_tr, train.labels, z_ho, hold.labels,
                                                        cfg.pretrain.probe_steps, seed=seed)
        if cfg.source == "in_domain":
            from .pretrain import build_vit

            torch.manual_seed(seed)
            rnd = build_vit(cfg, ds.images.shape[1]).eval()
            metrics["random_init_linear_probe_accuracy"] = linear_probe(
                embed(rnd, train.pixels(), cfg.img_size), train.labels, embed(rnd, hold.pixels(), cfg.img_size),
                hold.labels, cfg.pretrain.probe_steps, seed=seed)
        plots.embedding_scatter(z_ho, hold.labels, out / "embedding.png",
                                f"F's CLS embeddings of held-out images (PCA), probe accuracy "
                                f"{metrics['linear_probe_accuracy']:.1%}")
    else:
        plots.note_figure(out / "embedding.png", "No class labels in this dataset: no linear probe.")
    write_json(out / "metrics.json", metrics)
    resolved = {"seed": seed, "data": data_cfg, "features": cfg}
    C.write_resolved(resolved, out / "config.json", code_version=code_version(root))
    C.write_resolved(resolved, model_dir / "addlib_config.json", code_version=code_version(root))
    return metrics


def extend_cache(cache: TextCache, prompts: list[str], text_cfg: C.TextEncoderConfig) -> TextCache:
    """Add prompts that are not captions of the dataset (grid prompts, NFSD's negative prompt)."""
    new = [p for p in dict.fromkeys(prompts) if p not in cache.captions]
    if not new:
        return cache
    states, mask, pooled = TextEncoder(text_cfg.path, text_cfg.max_length)(new)
    return TextCache(cache.captions + new, torch.cat([cache.states, states]), torch.cat([cache.mask, mask]),
                     torch.cat([cache.pooled, pooled]))


def build_discriminator(feat_cfg: C.FeatureNetConfig, disc_cfg: C.DiscriminatorConfig, channels: int,
                        c_text_dim: int, root: Path = Path("."), seed: int = 0):
    from .discriminator import Discriminator, FeatureNetwork
    from .pretrain import load_backbone

    backbone = load_backbone(feat_cfg, channels, root / MODELS / "features", seed)
    fn = FeatureNetwork(backbone, feat_cfg.taps, feat_cfg.tap_patch_embed)
    return Discriminator(fn, c_text_dim, disc_cfg.c_text, disc_cfg.c_img, disc_cfg.cmap_dim, disc_cfg.group_size)


def run_add(seed: int, data_cfg: C.DataConfig, text_cfg: C.TextEncoderConfig, teacher_cfg: C.TeacherConfig,
            feat_cfg: C.FeatureNetConfig, cfg: C.ADDConfig, root: Path = Path("."), progress: bool = True) -> dict:
    """ADD training: student from the teacher, discriminator on F, distillation from the teacher."""
    from diffusers import UNet2DConditionModel

    from .diffusion import NoiseSchedule
    from .training import save_student_grid, train_add

    ds, cache = load_prepared(root)
    cache = extend_cache(cache, cfg.sample_prompts + [cfg.nfsd_negative_prompt], text_cfg)
    teacher = UNet2DConditionModel.from_pretrained(root / MODELS / "teacher")
    disc = build_discriminator(feat_cfg, cfg.discriminator, ds.images.shape[1], cache.pooled.shape[1], root, seed)
    out, model_dir = root / REPORTS / "add", root / MODELS / "student"
    run = train_add(cfg, teacher_cfg, seed, ds.subset(D.TRAIN), cache, teacher, disc,
                    cache.captions.index(cfg.nfsd_negative_prompt), model_dir, root / CHECKPOINTS / "add",
                    live_dir=out / "live", grid_dir=out / "progress", progress=progress,
                    fingerprint_extra=[C.to_dict(feat_cfg)])
    student, history = run.pop("student"), run.pop("history")
    resolved = {"seed": seed, "data": data_cfg, "text_encoder": text_cfg, "teacher": teacher_cfg,
                "features": feat_cfg, "add": cfg}
    C.write_resolved(resolved, model_dir / "addlib_config.json", code_version=code_version(root))
    C.write_resolved(resolved, out / "config.json", code_version=code_version(root))
    rows = [cache.captions.index(p) for p in cfg.sample_prompts]
    save_student_grid(student, NoiseSchedule(teacher_cfg.schedule), cache, rows, cfg, [1, 2, 4],
                      out / "samples.png", "ADD student: 1, 2 and 4 steps, same noise per column")
    steps = [r["step"] for r in history]
    curves = {k: [r.get(k, float("nan")) for r in history] for k in ("loss_G", "loss_distill", "loss_D")}
    plots.loss_curve(steps, curves, out / "losses.png", "ADD losses", logy=False)
    plots.loss_curve(steps, {k: [r.get(k, float("nan")) for r in history] for k in ("logits_real", "logits_fake")},
                     out / "logits.png", "discriminator logits (sum over heads of the token mean)", logy=False)
    last = history[-1] if history else {}
    metrics = {**run, **{f"final_{k}": v for k, v in last.items() if k != "step"}}
    write_json(out / "metrics.json", metrics)
    return metrics


# --------------------------------------------------------------------------------------------------
# The runner DVC calls.


def stage_outputs(stage: str, root: Path) -> list[Path]:
    """The stage's declared outs, metrics and plots, read from dvc.yaml (the one place they are listed)."""
    import yaml

    spec = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage]
    paths = []
    for key in ("outs", "metrics", "plots"):
        for item in spec.get(key, []):
            paths.append(root / (item if isinstance(item, str) else next(iter(item))))
    return paths


def remove_outputs(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def ensure_kernel() -> None:
    """Register this environment's Python as the 'addlib' Jupyter kernel if it is missing or stale."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL, display_name="Python (addlib)", prefix=sys.prefix)


def check_stage(stage: str, params_path: Path, root: Path) -> dict:
    """Validate params.yaml and the stage's inputs; return the raw sections the notebook gets."""
    raw = C.load_raw(params_path)
    cfg = C.parse(raw, params_path.name)
    if stage == "prepare":
        cfg.data.check_inputs(root)
        cfg.text_encoder.check_inputs(root)
    else:
        if stage == "features":
            cfg.features.check_inputs(root)
        missing = [p for p in (root / DATA_DIR / "dataset.safetensors", root / DATA_DIR / "text_cache.safetensors")
                   if not p.exists()]
        if missing:
            raise C.ConfigError(f"{missing[0]}: not found; run the 'prepare' stage first (dvc repro)")
    return {k: raw[k] for k in STAGE_SECTIONS[stage]}


def run_stage(stage: str, params_path: Path = Path("params.yaml"), root: Path = Path(".")) -> int:
    import papermill as pm

    if stage not in STAGE_SECTIONS:
        print(f"error: unknown stage {stage!r} (one of {', '.join(STAGE_SECTIONS)})", file=sys.stderr)
        return 2
    try:
        parameters = check_stage(stage, root / params_path, root)
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    outputs = stage_outputs(stage, root)
    remove_outputs(outputs)
    ensure_kernel()
    executed = root / EXECUTED / f"{stage}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(str(root / "notebooks" / f"{stage}.ipynb"), str(executed), parameters=parameters,
                            kernel_name=KERNEL, cwd=str(root), log_output=True, progress_bar=False)
    except pm.PapermillExecutionError as e:
        failed = executed.with_suffix(".failed.ipynb")
        if executed.exists():
            executed.replace(failed)
        remove_outputs(outputs)
        print(f"error: stage {stage!r} failed in cell {e.exec_count}: {e.ename}: {e.evalue} "
              f"(executed notebook: {failed})", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m addlib.stages", description="run one pipeline stage")
    ap.add_argument("stage", choices=sorted(STAGE_SECTIONS))
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    return run_stage(args.stage, Path(args.params))


if __name__ == "__main__":
    raise SystemExit(main())
