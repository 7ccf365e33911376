"""The comparison of the paper's Table 2 and Figures 4 and 7 at this scale (stage ``evaluate``).

Rows: the teacher with each solver at each step count (its guidance scale chosen on the held-out split,
never on the test reference), and the ADD student at 1, 2 and 4 steps (no guidance). Every row is scored
on the same prompts (drawn from the reference split's captions, so the prompt distribution is the data's)
and, for rows of equal step count, the same starting noise:

- FID against the reference split in the evaluator's feature space (torchmetrics/clean-fid, metrics.py),
  with the split-half FID of the real images as the noise floor, and the student's spread over seeds;
- improved precision and recall (k-NN radii) in the same space, against a reference subset of equal size;
- CLIP score (image tower vs the frozen text encoder) and prompt accuracy (the classifier's readout);
- speed: seconds per image at batch 1 (median of repeats after a warm-up) and images per second at the
  large batch (median over the timed batches of the sample run, the first batch being the warm-up),
  network evaluations (NFE) per image.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from . import metrics as M
from .columns import TABLE2
from .diffusion import NoiseSchedule
from .sampling import sample_student, sample_teacher, student_timesteps

COLUMNS = list(TABLE2)


@dataclasses.dataclass
class Prompts:
    """The evaluation prompts: the caption, the generator's text states, the text embedding the CLIP score
    compares with (the frozen encoder's pooled output, or a real CLIP's text features) and the label
    (-1 unknown) of each sample."""
    captions: list[str]
    states: torch.Tensor
    mask: torch.Tensor
    text_emb: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def slice(self, i: int, j: int) -> "Prompts":
        return Prompts(self.captions[i:j], self.states[i:j], self.mask[i:j], self.text_emb[i:j], self.labels[i:j])


def draw_prompts(captions: list[str], labels: torch.Tensor, text, n: int, seed: int) -> Prompts:
    """n prompts drawn without replacement (cycling when n exceeds the split) from a split's captions."""
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(captions), generator=g) for _ in range(-(-n // len(captions)))])[:n]
    return prompts_of([captions[i] for i in order], labels[order], text)


def prompts_of(captions: list[str], labels: torch.Tensor, text) -> Prompts:
    """Prompts for exactly these captions (each must be in the text cache), in this order."""
    states, mask, pooled = text[text.rows(captions)]
    return Prompts(list(captions), states, mask, pooled, labels)


@dataclasses.dataclass
class Generator:
    """One row's sampler: ``model`` teacher|student|consistency, ``sampler`` ddim|dpmsolver++|euler|add|lcm."""
    model: str
    sampler: str
    steps: int
    guidance: float
    unet: torch.nn.Module
    schedule: NoiseSchedule
    empty: tuple[torch.Tensor, torch.Tensor] | None = None   # teacher: the empty prompt's (states, mask)
    trained_timesteps: list[int] | None = None              # student: its training timesteps
    space: torch.nn.Module | None = None                    # latent models: the VAE space (decodes)
    timesteps: list[int] | None = None                      # a few-step student's own (consistency: LCM's)
    x0_fn: Callable | None = None                           # its x0 from an output (consistency: f)

    @property
    def nfe(self) -> int:
        """Network evaluations per image: guidance doubles the teacher's (conditional + unconditional)."""
        return self.steps * (2 if self.model == "teacher" and self.guidance != 1.0 else 1)

    def __call__(self, prompts: Prompts, noise: torch.Tensor, seed: int = 0) -> torch.Tensor:
        if self.model == "teacher":
            return sample_teacher(self.unet, self.schedule, prompts.states, prompts.mask, self.empty, noise,
                                  self.sampler, self.steps, self.guidance, batch_size=len(noise), space=self.space)
        ts = self.timesteps or student_timesteps(self.steps, self.trained_timesteps, self.schedule.T)
        return sample_student(self.unet, self.schedule, prompts.states, prompts.mask, noise, ts, seed=seed,
                              batch_size=len(noise), space=self.space, x0_fn=self.x0_fn)


def generate(gen: Generator, prompts: Prompts, noise: torch.Tensor, batch_size: int, seed: int = 0,
             progress: bool = False, accelerator=None) -> tuple[torch.Tensor, float | None]:
    """All samples in batches; returns them and the large-batch throughput (images/s: median over the
    full-size batches after the first, which is the warm-up; None when there is no such batch).

    With an ``accelerator`` of several processes, process k samples batches k, k + n, k + 2n, ... and every
    process gets all images back in order; batch b always uses seed (seed, b), so the images are the same
    whatever the number of processes. Throughput is then per process."""
    from tqdm import tqdm

    starts = list(range(0, len(noise), batch_size))
    n_proc = 1 if accelerator is None else accelerator.num_processes
    mine = starts if n_proc == 1 else starts[accelerator.process_index::n_proc]
    out, rates = {}, []
    for k, i in enumerate(tqdm(mine, disable=not progress, desc=f"{gen.model} {gen.sampler} {gen.steps}",
                               leave=False)):
        b = i // batch_size
        p = prompts.slice(i, i + batch_size)
        t0 = time.perf_counter()
        out[b] = gen(p, noise[i:i + batch_size], seed=seed * 100_003 + b)
        if k > 0 and len(p) == batch_size:
            rates.append(len(p) / (time.perf_counter() - t0))
    if n_proc > 1:
        from accelerate.utils import gather_object

        merged: dict = {}
        for part in gather_object([out]):
            merged.update(part)
        out = merged
    return torch.cat([out[b] for b in sorted(out)]), (statistics.median(rates) if rates else None)


def seconds_per_image_batch1(gen: Generator, prompts: Prompts, noise: torch.Tensor, repeats: int) -> float:
    """Seconds for one image at batch size 1: one warm-up call, then the median of ``repeats`` calls."""
    one = prompts.slice(0, 1)
    gen(one, noise[:1])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        gen(one, noise[:1])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclasses.dataclass
class Scorer:
    """The evaluator networks and the reference set's features."""
    features: callable            # images -> (N, D) FID / precision-recall features
    image_emb: callable           # images -> (N, E) CLIP-space image embeddings
    classify: callable | None     # images -> (N,) predicted labels, or None without labels
    ref_feats: torch.Tensor       # reference split's features
    pr_k: int
    pr_seed: int = 0
    detail: callable | None = None            # images -> the detail space's features (the second space)
    detail_ref_feats: torch.Tensor | None = None

    def space(self, fake: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float]:
        """FID, precision and recall of features ``fake`` against ``ref`` (P/R on an equal-size random subset)."""
        g = torch.Generator().manual_seed(self.pr_seed)
        ref_sub = ref[torch.randperm(len(ref), generator=g)[:len(fake)]]
        return (M.fid_from_features(ref, fake), *M.precision_recall(ref_sub, fake, self.pr_k))

    def __call__(self, images: torch.Tensor, prompts: Prompts) -> dict:
        fid, precision, recall = self.space(M.extract(self.features, images), self.ref_feats)
        out = {"fid": fid, "precision": precision, "recall": recall,
               "clip_score": M.clip_score(M.extract(self.image_emb, images), prompts.text_emb)}
        if self.detail is not None:
            fid, precision, recall = self.space(M.extract(self.detail, images), self.detail_ref_feats)
            out.update(fid_detail=fid, precision_detail=precision, recall_detail=recall)
        else:
            out.update(fid_detail=float("nan"), precision_detail=float("nan"), recall_detail=float("nan"))
        known = prompts.labels >= 0
        if self.classify is not None and known.any():
            pred = torch.cat([self.classify(images[i:i + 500]) for i in range(0, len(images), 500)])
            out["prompt_accuracy"] = float((pred[known] == prompts.labels[known]).float().mean())
        else:
            out["prompt_accuracy"] = float("nan")
        return out


def choose_guidance(make_gen, candidates: list[float], prompts: Prompts, noise: torch.Tensor,
                    score_fid, batch_size: int, accelerator=None) -> tuple[float, dict[float, float]]:
    """The candidate guidance scale with the lowest FID against the held-out split (ties: the smaller)."""
    fids = {}
    for w in candidates:
        images, _ = generate(make_gen(w), prompts, noise, batch_size, accelerator=accelerator)
        fids[w] = score_fid(images)
    best = min(sorted(fids), key=lambda w: fids[w])
    return best, fids


SPACES = {"": ("fid", "recall"), "_detail": ("fid_detail", "recall_detail")}  # key suffix -> its FID and recall


def check_targets(rows: list[dict]) -> dict:
    """The evaluation issues' targets, computed from the table. A target on FID or recall is checked in both
    feature spaces (the classifier's, and the detail space's: value, bar, met and value_detail, bar_detail,
    met_detail; each space picks its own best teacher row) and is met only if it holds in both; a table without
    the detail space (NaN) is judged in the classifier's alone."""
    nan = float("nan")
    rows = [{"fid_detail": nan, "recall_detail": nan, **r} for r in rows]  # tables scored in one space

    def best(model, steps, key="fid"):
        cands = [r for r in rows if r["model"] == model and r["steps"] == steps]
        return min(cands, key=lambda r: r[key]) if cands else None

    def both(value, bar, ok) -> dict:
        """value(suffix), bar(suffix) -> the target in each space; ok(value, bar, suffix) -> met."""
        out = {}
        for sfx in SPACES:
            out["value" + sfx], out["bar" + sfx] = value(sfx), bar(sfx)
            out["met" + sfx] = bool(ok(out["value" + sfx], out["bar" + sfx], sfx))
        if out["value_detail"] != out["value_detail"]:  # NaN: no detail space
            return {k: v for k, v in out.items() if not k.endswith("_detail")}
        out["met"] = out["met"] and out["met_detail"]
        return out

    fid = lambda sfx: SPACES[sfx][0]  # noqa: E731
    rec = lambda sfx: SPACES[sfx][1]  # noqa: E731
    s1, s2, s4, t50 = best("student", 1), best("student", 2), best("student", 4), best("teacher", 50)
    out = {}
    for steps, name, factor in ((4, "student1_fid_below_teacher4_best", 1.0),
                                (1, "student1_fid_at_most_quarter_teacher1", 0.25),
                                (8, "student1_fid_below_teacher8_best (stretch)", 1.0)):
        if s1 and best("teacher", steps):
            strict = factor == 1.0
            out[name] = both(lambda sfx: s1[fid(sfx)], lambda sfx: factor * best("teacher", steps, fid(sfx))[fid(sfx)],
                             (lambda v, b, sfx: v < b) if strict else (lambda v, b, sfx: v <= b))
    if s1 and t50:
        out["student1_recall_at_least_0.7_teacher50"] = both(
            lambda sfx: s1[rec(sfx)], lambda sfx: 0.7 * best("teacher", 50, fid(sfx))[rec(sfx)],
            lambda v, b, sfx: v >= b)
        out["student1_prompt_accuracy_within_2pts_teacher50"] = {
            "value": s1["prompt_accuracy"], "bar": t50["prompt_accuracy"] - 0.02,
            "met": s1["prompt_accuracy"] >= t50["prompt_accuracy"] - 0.02}
        out["student1_clip_score_within_1pt_teacher50"] = {
            "value": s1["clip_score"], "bar": t50["clip_score"] - 1.0,
            "met": abs(s1["clip_score"] - t50["clip_score"]) <= 1.0 or s1["clip_score"] > t50["clip_score"]}
        if s1["images_per_second"] and t50["images_per_second"]:
            r = s1["images_per_second"] / t50["images_per_second"]
            out["speedup_large_batch_at_least_40x"] = {"value": r, "bar": 40.0, "met": r >= 40}
        r = t50["seconds_per_image"] / s1["seconds_per_image"]
        out["speedup_batch1_at_least_25x"] = {"value": r, "bar": 25.0, "met": r >= 25}
    if s1 and s2 and s4:  # more steps must help (issue 21): FID at 4 <= 2 <= 1 steps, recall kept
        out["student_fid_4_at_most_2_at_most_1_steps"] = both(
            lambda sfx: s4[fid(sfx)], lambda sfx: s2[fid(sfx)],
            lambda v, b, sfx: v <= b <= s1[fid(sfx)])
        out["student4_recall_at_least_0.9_student1"] = both(
            lambda sfx: s4[rec(sfx)], lambda sfx: 0.9 * s1[rec(sfx)], lambda v, b, sfx: v >= b)
    return out


def headline(rows: list[dict], targets: dict) -> dict[str, float]:
    """The few numbers `dvc metrics show` and `dvc exp show` display: each student row's FID, the teacher's best
    FID at each step count, the speed-ups and how many targets are met (flat, numbers only)."""
    out: dict[str, float] = {}
    for r in rows:
        if r["model"] == "student":
            out[f"student_fid_{r['steps']}step"] = round(r["fid"], 4)
            if r.get("fid_detail", float("nan")) == r.get("fid_detail"):
                out[f"student_fid_detail_{r['steps']}step"] = round(r["fid_detail"], 4)
    for steps in sorted({r["steps"] for r in rows if r["model"] == "teacher"}):
        out[f"teacher_best_fid_{steps}step"] = round(min(r["fid"] for r in rows
                                                         if r["model"] == "teacher" and r["steps"] == steps), 4)
    for key, name in (("speedup_batch1_at_least_25x", "speedup_batch1"),
                      ("speedup_large_batch_at_least_40x", "speedup_large_batch")):
        if key in targets:
            out[name] = round(targets[key]["value"], 2)
    out["targets_met"] = sum(t["met"] for t in targets.values())
    out["targets_total"] = len(targets)
    return out


def markdown_table(rows: list[dict]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return "n/a" if v != v else (f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}")
        return str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r.get(c, float("nan"))) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"
