"""Run by tests/test_distributed.py, once as a plain process and once under ``accelerate launch`` with two CPU
processes (gloo): tiny ADD training (optionally stopping early, or resuming a checkpoint written by the
other world size) and split evaluation sampling. Writes what it saw as JSON (main process only). tests/test_malloc.py
runs it plain with and without tcmalloc."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import timm
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from addlib.config import checks  # noqa: E402
from addlib.diffusion import NoiseSchedule  # noqa: E402
from addlib.discriminator import Discriminator, FeatureNetwork  # noqa: E402
from addlib.latent import PixelSpace, Teacher  # noqa: E402
from addlib.models import build_unet  # noqa: E402
from addlib.distillation import train_add  # noqa: E402
from addlib.malloc import loaded  # noqa: E402
from tiny_models import tiny_digits  # noqa: E402


def tiny_setup(batch_size: int, steps: int):
    params = checks.load(ROOT / "params.yaml", ROOT / "profiles" / "smoke.yaml")
    ds, cache = tiny_digits(24)
    torch.manual_seed(0)
    unet = build_unet(params.teacher.unet, 8, 1, 16)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=8, patch_size=2, in_chans=1,
                            embed_dim=16, depth=2, num_heads=2, num_classes=0)
    disc = Discriminator(FeatureNetwork(vit, taps=[0, 1]), 16, group_size=2)
    train = dataclasses.replace(params.add.train, steps=steps, batch_size=batch_size, checkpoint_every=2,
                                log_every=1, sample_every=0, num_threads=1)
    add = dataclasses.replace(params.add, train=train,
                              discriminator=dataclasses.replace(params.add.discriminator, group_size=2))
    return add, Teacher(unet, NoiseSchedule(params.teacher.schedule), PixelSpace(), "trained"), ds, cache, disc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=None)
    args = ap.parse_args()
    add, teacher, ds, cache, disc = tiny_setup(batch_size=8, steps=args.steps)
    run = train_add(add, teacher, 0, ds, cache, disc, 0, Path(args.ckpt) / "student", Path(args.ckpt),
                    max_steps=args.max_steps, progress=False)
    # Evaluation sampling split over processes: 10 images in batches of 3 (uneven on purpose).
    from addlib import evaluation as E
    from addlib.sampling import initial_noise

    prompts = E.prompts_of(["a", "b", "c", "a", "b"] * 2, torch.full((10,), -1), cache)
    gen = E.Generator("student", "add", 2, 1.0, run["student"], teacher.schedule, trained_timesteps=[999, 499])
    from accelerate import Accelerator

    state = Accelerator()  # the one train_add made (shared state)
    images, _ = E.generate(gen, prompts, initial_noise(10, (1, 8, 8), 5), 3, seed=9, accelerator=state)
    if state.is_main_process:
        Path(args.out).write_text(json.dumps({
            "processes": state.num_processes, "history": run["history"], "resumed_from": run["resumed_from_step"],
            "images": images.flatten().tolist(), "n_images": len(images), "tcmalloc": loaded()}))


if __name__ == "__main__":
    main()
