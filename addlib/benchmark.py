"""Time and memory of ADD training steps at a params profile's sizes: ``python -m addlib.benchmark``.

It runs the real ``train_add`` step (student and discriminator updates, teacher target, VAE decode, F) for a
few steps on synthetic images and text states of the profile's shapes, without checkpoints, and reports the
median seconds per step (after two warm-up steps) and the peak accelerator memory. With ``--random`` the
teacher UNet, VAE and F get random weights of the architecture in ``--architecture`` (timing and memory do
not depend on the weights), so the numbers can be measured where no checkpoint is at hand; otherwise the
profile's local checkpoint and feature network are loaded.

    python -m addlib.benchmark --profile profiles/sd-gpu.yaml --random --batch-sizes 4 8 --out bench.json
    python -m addlib.benchmark --profile profiles/sdxl-gpu.yaml --random \
        --architecture profiles/architectures/sdxl.json --batch-sizes 1 2 --out bench-sdxl.json
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from . import config as C
from .config import checks
from .data import TRAIN, Dataset
from .diffusion import NoiseSchedule
from .discriminator import Discriminator, FeatureNetwork
from .latent import Teacher, VAESpace, load_teacher
from .text import TextCache


def random_parts(params: C.Params, arch: dict) -> tuple[Teacher, torch.nn.Module, int, int]:
    """Teacher (UNet + VAE) and F backbone with random weights of the given architecture."""
    import timm
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .sdxl import SDXLUNet

    vae = VAESpace(AutoencoderKL(**arch["vae"]))
    sdxl = arch["unet"].get("addition_embed_type") == "text_time"  # SDXL-class: text_embeds packed in the states
    unet = (SDXLUNet if sdxl else UNet2DConditionModel)(**arch["unet"])
    if sdxl:
        unet.register_to_config(_vae_scale_factor=vae.factor)
    f = params.features
    backbone = timm.create_model(f.timm_name, pretrained=False, num_classes=0, img_size=f.img_size)
    return (Teacher(unet, NoiseSchedule(params.teacher.schedule), vae, "random"), backbone,
            arch["text"]["tokens"], arch["text"]["width"])


def checkpoint_parts(params: C.Params) -> tuple[Teacher, torch.nn.Module, int, int]:
    from .pretrain import load_backbone

    teacher = load_teacher(params.teacher, Path("models/teacher"))
    backbone = load_backbone(params.features, params.data.channels)
    width = int(teacher.unet.config.cross_attention_dim)
    return teacher, backbone, params.text_encoder.max_length, width


def synthetic_data(n: int, channels: int, resolution: int, tokens: int, width: int, captions: int = 8):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, resolution, resolution), generator=g, dtype=torch.uint8)
    names = [f"caption {i}" for i in range(captions)]
    ds = Dataset(images, torch.full((n,), -1), [names[i % captions] for i in range(n)],
                 torch.full((n,), TRAIN, dtype=torch.uint8))
    k = captions + 1
    cache = TextCache([""] + names, torch.randn(k, tokens, width, generator=g), torch.ones(k, tokens),
                      torch.nn.functional.normalize(torch.randn(k, width, generator=g), dim=-1))
    return ds, cache


def measure(params: C.Params, teacher: Teacher, backbone, tokens: int, width: int, batch_size: int, steps: int,
            checkpointing: bool) -> dict:
    from .distillation import train_add

    add = params.add
    add = dataclasses.replace(add, train=dataclasses.replace(
        add.train, steps=steps, batch_size=batch_size, log_every=1, sample_every=0, checkpoint_every=10 ** 9,
        gradient_checkpointing=checkpointing))
    f = params.features
    disc = Discriminator(FeatureNetwork(backbone, f.taps, f.tap_patch_embed), width, add.discriminator.c_text,
                         add.discriminator.c_img, add.discriminator.cmap_dim, add.discriminator.group_size)
    ds, cache = synthetic_data(batch_size * steps, params.data.channels, params.data.resolution, tokens, width)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    row = {"batch_size": batch_size, "gradient_checkpointing": checkpointing, "resolution": params.data.resolution,
           "mixed_precision": add.train.mixed_precision}
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run = train_add(add, teacher, 0, ds, cache, disc, 0, Path(tmp) / "s", Path(tmp) / "c", progress=False,
                            save=False)
    except torch.OutOfMemoryError:
        gc.collect()
        torch.cuda.empty_cache()  # so the next configuration starts from the same free memory
        return {**row, "error": "out of memory"}
    per_step = [1.0 / r["steps_per_second"] for r in run["history"]]
    timed = per_step[2:] or per_step
    row.update(seconds_per_step=statistics.median(timed), images_per_second=batch_size / statistics.median(timed),
               first_step_seconds=per_step[0], wall_seconds=time.perf_counter() - t0,
               peak_memory_gib=torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None,
               losses={k: v for k, v in run["history"][-1].items() if k.startswith("loss")})
    del run
    gc.collect()
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m addlib.benchmark", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", default="profiles/sd-gpu.yaml")
    ap.add_argument("--random", action="store_true", help="random weights of --architecture (no checkpoint)")
    ap.add_argument("--architecture", default="profiles/architectures/sd21.json")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--no-checkpointing-too", action="store_true",
                    help="also measure the first batch size without gradient checkpointing")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    try:
        params = checks.load(args.params, args.profile)
    except C.ConfigError as e:
        print(f"error: {e}")
        return 2
    arch = json.loads(Path(args.architecture).read_text()) if args.random else None
    teacher, backbone, tokens, width = random_parts(params, arch) if args.random else checkpoint_parts(params)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    configs = [(b, params.add.train.gradient_checkpointing) for b in args.batch_sizes]
    if args.no_checkpointing_too:
        configs.append((args.batch_sizes[0], not params.add.train.gradient_checkpointing))
    rows = []
    for b, ckpt in configs:
        rows.append(measure(params, teacher, backbone, tokens, width, b, args.steps, ckpt))
        print(json.dumps(rows[-1]), flush=True)
    result = {"device": device, "torch": torch.__version__, "profile": args.profile,
              "weights": f"random ({args.architecture})" if args.random else "checkpoint",
              "student_parameters": sum(p.numel() for p in teacher.unet.parameters()), "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
