"""Where a few-step student gains or loses quality, step by step: two measurements and their figure.

ADD claims the student keeps iterative refinement: k steps at least as good as one. When the k-step row of
Table 2 is worse than the 1-step row, two measurements say where the quality is lost:

* :func:`refinement_trace`: the k-step sampler cut after each of its steps. Every prefix is run on one batch
  with the same noise and seed, so prefix j repeats the first j steps of the full k-step trajectory exactly
  (the re-noising draws come from one generator in the same order) and the last prefix *is* the k-step sample.
* :func:`denoise_from_data`: held-out images noised to each student timestep s and predicted in one network
  call, by the student and by the teacher. The input has the data's statistics, so a gap to the teacher here
  is the network at s itself, not an error carried over from earlier steps. (The held-out split has fewer
  images than ``samples`` at the default; these rows use all of them, and so does their floor, "data".)

Beside the metrics, :func:`tone` measures what a feature space trained to ignore brightness and contrast cannot
see: how much ink an image has and how strong its strokes are (issue 21: the student's calls at intermediate
timesteps thin the strokes, and the k-step sampler compounds it).

``python -m addlib.pipeline.diagnose`` (the `diagnose` stage of dvc.yaml) runs both on a trained student and
plots them with :func:`plot_refinement`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .diffusion import NoiseSchedule
from .sampling import decode, sample_student


@torch.no_grad()
def refinement_trace(unet, schedule: NoiseSchedule, states: torch.Tensor, mask: torch.Tensor,
                     noise: torch.Tensor, timesteps: list[int], seed: int = 0, space=None) -> list[torch.Tensor]:
    """Images after each step of the ``len(timesteps)``-step ADD sampler on one trajectory: element j is the
    decoded x0 prediction at ``timesteps[j]``; the last element equals ``sample_student`` with all steps."""
    return [sample_student(unet, schedule, states, mask, noise, list(timesteps[:j + 1]), seed=seed,
                           batch_size=len(noise), space=space) for j in range(len(timesteps))]


def tone(images: torch.Tensor) -> dict[str, float]:
    """Pixel statistics of images in [-1, 1] (ink bright on a dark background): ``ink`` = the share of pixels
    above mid-grey (0), ``contrast`` = the pixels' standard deviation, ``solid`` = the share above 0.9, and
    ``ink_spread`` = the standard deviation over images of each image's ink share (thin and thick writers)."""
    x = images.detach().float().flatten(1)
    ink = (x > 0).float()
    return {"ink": ink.mean().item(), "contrast": x.std().item(), "solid": (x > 0.9).float().mean().item(),
            "ink_spread": ink.mean(1).std().item()}


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
