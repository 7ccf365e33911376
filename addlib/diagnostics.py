"""Where a few-step student gains or loses quality, step by step (a diagnostic tool, not a pipeline stage).

ADD claims the student keeps iterative refinement: k steps at least as good as one. When the k-step row of
Table 2 is worse than the 1-step row, two measurements say where the quality is lost:

* :func:`refinement_trace`: the k-step sampler cut after each of its steps. Every prefix is run on one batch
  with the same noise and seed, so prefix j repeats the first j steps of the full k-step trajectory exactly
  (the re-noising draws come from one generator in the same order) and the last prefix *is* the k-step sample.
* :func:`denoise_from_data`: held-out images noised to each student timestep s and predicted in one network
  call, by the student and by the teacher. The input has the data's statistics, so a gap to the teacher here
  is the network at s itself, not an error carried over from earlier steps. (The held-out split has fewer
  images than ``samples`` at the default; these rows use all of them, and so does their floor, "data".)

    python -m addlib.diagnostics [--student models/student] [--samples N] [--out reports/diagnostics]

(the `diagnose` stage of dvc.yaml runs it on the pipeline's student) writes diagnostics.json (the metrics of every row, with the evaluate stage's scorer), refinement.png (both
measurements against the step / timestep) and denoise.png (real, noised, student, teacher at the lowest s).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .diffusion import NoiseSchedule, student_schedule
from .sampling import decode, sample_student


@torch.no_grad()
def refinement_trace(unet, schedule: NoiseSchedule, states: torch.Tensor, mask: torch.Tensor,
                     noise: torch.Tensor, timesteps: list[int], seed: int = 0, space=None) -> list[torch.Tensor]:
    """Images after each step of the ``len(timesteps)``-step ADD sampler on one trajectory: element j is the
    decoded x0 prediction at ``timesteps[j]``; the last element equals ``sample_student`` with all steps."""
    return [sample_student(unet, schedule, states, mask, noise, list(timesteps[:j + 1]), seed=seed,
                           batch_size=len(noise), space=space) for j in range(len(timesteps))]


@torch.no_grad()
def denoise_from_data(unet, schedule: NoiseSchedule, x0: torch.Tensor, states: torch.Tensor, mask: torch.Tensor,
                      s: int, seed: int = 0, batch_size: int = 250, space=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images ``x0`` (in [-1, 1]) to timestep ``s`` (x_s = alpha_s z0 + sigma_s eps, eps from ``seed``)
    and predict x0 in one call. Returns (the noisy input as an image, the decoded prediction)."""
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    g = torch.Generator().manual_seed(seed)
    noisy, pred = [], []
    for i in range(0, len(x0), batch_size):
        z0 = x0[i:i + batch_size].to(device, dtype)
        z0 = z0 if space is None else space.encode(z0)
        t = torch.full((len(z0),), s, device=device, dtype=torch.long)
        z_s = schedule.add_noise(z0, torch.randn(z0.shape, generator=g).to(device, dtype), t)
        out = unet(z_s, t, encoder_hidden_states=states[i:i + batch_size].to(device, dtype),
                   encoder_attention_mask=mask[i:i + batch_size].to(device, dtype)).sample
        noisy.append(decode(space, z_s))
        pred.append(decode(space, schedule.x0_from_output(z_s, out, t)))
    return torch.cat(noisy), torch.cat(pred)


def run_diagnostics(student_dir: Path, out: Path, samples: int | None = None, seed: int | None = None,
                    params: str = "params.yaml", root: Path = Path(".")) -> dict:
    """Both measurements for a trained student against the pipeline's teacher, scored like evaluate's rows
    (by default with as many samples and the same seed: evaluate.num_samples, evaluate.seed)."""
    from diffusers import UNet2DConditionModel

    from . import config as C
    from .plots import image_grid
    from .latent import load_teacher
    from .sampling import initial_noise, unet_input_shape
    from .stages import MODELS, code_version, load_prepared, scoring, write_json
    from .training import set_threads

    p = C.load(root / params)
    samples = p.evaluate.num_samples if samples is None else samples
    seed = p.evaluate.seed if seed is None else seed
    set_threads(p.evaluate.num_threads)
    ds, cache = load_prepared(root)
    bundle = load_teacher(p.teacher, root / MODELS / "teacher")
    space, teacher = bundle.space, bundle.unet.eval()
    schedule = student_schedule(p.teacher.schedule, p.add.student_zero_terminal_snr)  # the student's
    student = UNet2DConditionModel.from_pretrained(student_dir).eval()
    sc = scoring(ds, cache, p.evaluators, p.evaluate, root)
    ts = list(p.add.student_timesteps)
    rows: dict[str, dict] = {}

    def score(key: str, images: torch.Tensor, prompts) -> None:
        rows[key] = sc.scorer(images, prompts)
        r = rows[key]
        print(f"{key:32s} FID {r['fid']:7.3f}  P {r['precision']:.3f}  R {r['recall']:.3f}  "
              f"CLIP {r['clip_score']:.2f}  acc {r['prompt_accuracy']:.3f}", flush=True)

    # 1. The k-step sampler cut after each step (the evaluate stage's prompts and noise seed).
    prompts = sc.prompts_for(sc.ref, samples, seed, cache)
    noise = initial_noise(samples, unet_input_shape(teacher), seed)
    trace = refinement_trace(student, schedule, prompts.states, prompts.mask, noise, ts, seed=seed, space=space)
    for j, images in enumerate(trace):
        score(f"trace/{j + 1}/t{ts[j]}", images, prompts)
    # 2. One prediction from noised held-out images (the split the FID reference does not hold) at each student
    # timestep, student and teacher, each image with its own caption; "data" is those images unchanged (the floor).
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(sc.sel), generator=g)[:samples]
    real = sc.sel.pixels()[pick]
    own = sc.prompts_of([sc.sel.captions[i] for i in pick], sc.sel.labels[pick], cache)
    score("data", real, own)
    strips = {}
    for s in ts:
        for name, net in (("student", student), ("teacher", teacher)):
            own_schedule = schedule if name == "student" else bundle.schedule  # each on the schedule it was trained on
            noisy, pred = denoise_from_data(net, own_schedule, real, own.states, own.mask, s, seed=seed + s, space=space)
            score(f"denoise/{name}/t{s}", pred, own)
            strips[(name, s)] = (noisy[:12], pred[:12])

    out.mkdir(parents=True, exist_ok=True)
    result = {"student": str(student_dir), "samples": samples, "denoise_samples": len(real), "seed": seed,
              "student_timesteps": ts,
              "fid_features": sc.feat_name, "rows": rows}
    write_json(out / "diagnostics.json", result)
    C.write_resolved(p, out / "config.json", student=str(student_dir), samples=samples, seed=seed,
                    code_version=code_version(root))
    plot_refinement(rows, ts, out / "refinement.png",
                    f"where the student gains or loses quality ({samples} samples, {sc.feat_name} features)")
    s_low = min(ts)
    image_grid([real[:12], strips[("student", s_low)][0], strips[("student", s_low)][1],
                      strips[("teacher", s_low)][1]], out / "denoise.png",
                     row_labels=["held-out image", f"noised to t={s_low}", "student, 1 call", "teacher, 1 call"],
                     title=f"one prediction from held-out images noised to t={s_low}")
    return result


def plot_refinement(rows: dict, ts: list[int], path: Path, title: str = "") -> Path:
    """FID and prompt accuracy after each sampler step (left) and of one prediction from noised real images at
    each student timestep, student against teacher (right); the real images' own values as a dotted line."""
    from .plots import _save, plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 5.5), sharex="col")
    steps = list(range(1, len(ts) + 1))
    for r, metric in enumerate(("fid", "prompt_accuracy")):
        ax = axes[r, 0]
        ax.plot(steps, [rows[f"trace/{j}/t{ts[j - 1]}"][metric] for j in steps], "o-", color="C3", label="student")
        ax.axhline(rows["data"][metric], ls=":", color="k", label="held-out images")
        ax.set_xticks(steps, [f"{j}\n(t={ts[j - 1]})" for j in steps])
        ax.set_ylabel(metric.replace("_", " "))
        ax = axes[r, 1]
        for name, c in (("student", "C3"), ("teacher", "C0")):
            ax.plot(ts, [rows[f"denoise/{name}/t{s}"][metric] for s in ts], "o-", color=c, label=name)
        ax.axhline(rows["data"][metric], ls=":", color="k", label="held-out images")
        ax.set_ylabel(metric.replace("_", " "))
    axes[0, 0].set_title("k-step sampler, x0 after each step", fontsize=9)
    axes[0, 1].set_title("one call from real images noised to t", fontsize=9)
    axes[1, 0].set_xlabel("step")
    axes[1, 1].set_xlabel("student timestep t")
    axes[0, 1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m addlib.diagnostics", description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", default="models/student", help="a saved student (diffusers UNet folder)")
    ap.add_argument("--samples", type=int, default=None, help="images per row (default: evaluate.num_samples)")
    ap.add_argument("--seed", type=int, default=None, help="default: evaluate.seed")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="reports/diagnostics")
    a = ap.parse_args(argv)
    if a.samples is not None and a.samples < 2:
        ap.error("--samples must be at least 2 (FID needs a covariance)")
    if not (Path(a.student) / "config.json").is_file():
        ap.error(f"--student {a.student}: no diffusers UNet there (config.json missing); run `dvc repro add` first")
    run_diagnostics(Path(a.student), Path(a.out), a.samples, a.seed, a.params)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
