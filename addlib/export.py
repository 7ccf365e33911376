"""The trained student as a diffusers pipeline, loadable like SD-Turbo.

    python -m addlib.export --student models/student --out models/student-pipeline

ADD's few-step sampler (predict x0 at each student timestep, re-noise it with fresh noise to the next one) is
exactly diffusers' ``LCMScheduler`` step when its boundary scalings are c_skip = 0 and c_out = 1: the
scheduler is written with the student's schedule, ``original_inference_steps`` = the number of student
timesteps (its timestep grid is then the student's: 999, 749, 499, 249) and a ``timestep_scaling`` so large
that c_skip is below float precision. ``set_timesteps(k)`` then gives the student's k-step timesteps.

- A latent teacher (a local SD 1.5 / 2.1 folder): a ``StableDiffusionPipeline`` folder with the teacher's VAE,
  text encoder and tokenizer, the student's UNet and that scheduler (an SDXL-class folder: a
  ``StableDiffusionXLPipeline`` with both text towers; diffusers then computes SDXL's added conditioning, which
  the library packs into the text states, sdxl.py), so that
  ``AutoPipelineForText2Image.from_pretrained(out)(prompt, num_inference_steps=1, guidance_scale=0.0)`` works
  as it does for SD-Turbo.
- The embedded default (pixel space, the MiniLM text encoder): :class:`ADDPipeline`, a ``DiffusionPipeline``
  with the same scheduler, saved with a ``model_index.json`` and loaded with ``ADDPipeline.from_pretrained``.

Both give the library sampler's images (``sampling.sample_student``) for the same starting noise and
re-noising generator (tests/test_export.py).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, LCMScheduler, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from .config import from_dict
from .config.teacher import ScheduleConfig
from .lora import LORA_DIR
from .sampling import initial_noise, renoise_generator, student_timesteps, unet_input_shape

LCM_SCALING = 1.0e7  # c_skip(t >= 1) = 0.25 / (1e14 t^2 + 0.25) < 3e-15: the plain x0 estimate, as ADD samples


def add_scheduler(schedule: ScheduleConfig, zero_terminal_snr: bool, student_timesteps: list[int]) -> LCMScheduler:
    """An LCMScheduler whose loop is ADD's sampler for a student trained at ``student_timesteps`` on the teacher's
    ``schedule`` (rescaled to zero terminal SNR if ``zero_terminal_snr``, as diffusion.student_schedule)."""
    T, n = schedule.num_train_timesteps, len(student_timesteps)
    grid = [(i + 1) * (T // n) - 1 for i in reversed(range(n))]
    if T % n or list(student_timesteps) != grid:
        raise ValueError(f"student timesteps {list(student_timesteps)} are not an even grid of {T} ({grid}): an "
                         "LCMScheduler cannot express them")
    return LCMScheduler(num_train_timesteps=T, beta_start=schedule.beta_start, beta_end=schedule.beta_end,
                        beta_schedule=schedule.beta_schedule, prediction_type=schedule.prediction_type,
                        rescale_betas_zero_snr=zero_terminal_snr or schedule.rescale_zero_terminal_snr,
                        original_inference_steps=n, timestep_scaling=LCM_SCALING, clip_sample=False)


class ADDPipeline(DiffusionPipeline):
    """A pixel-space ADD student with its text encoder: ``pipe(prompt, num_inference_steps=1, generator=g)``.

    ``max_length`` and ``use_attention_mask`` are the text encoder settings the student was trained with.
    """

    def __init__(self, unet: UNet2DConditionModel, scheduler: LCMScheduler, text_encoder, tokenizer,
                 max_length: int = 16, use_attention_mask: bool = True):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
        self.register_to_config(max_length=max_length, use_attention_mask=use_attention_mask)
        self.image_processor = VaeImageProcessor(do_resize=False)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states and attention mask, as text.TextEncoder gives them."""
        from .text import TextEncoder

        encoder = TextEncoder.from_modules(self.tokenizer, self.text_encoder, self.config.max_length,
                                           attention_mask=self.config.use_attention_mask)
        states, mask, _ = encoder(prompts)
        return states, mask

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_inference_steps: int = 1, generator: torch.Generator | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "pil", return_dict: bool = True):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        device, dtype = self.unet.device, self.unet.dtype
        states, mask = (a.to(device, dtype) for a in self.encode_prompt(prompts))
        c, s = self.unet.config.in_channels, self.unet.config.sample_size
        if latents is None:
            latents = torch.randn((len(prompts), c, s, s), generator=generator, dtype=dtype).to(device)
        x = latents.to(device, dtype) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            out = self.unet(x, t.expand(len(x)), encoder_hidden_states=states, encoder_attention_mask=mask).sample
            x, denoised = self.scheduler.step(out, t, x, generator=generator, return_dict=False)
        image = self.image_processor.postprocess(denoised.clamp(-1, 1), output_type=output_type)
        return ImagePipelineOutput(images=image) if return_dict else (image,)


def build_pipeline(student: str | Path) -> DiffusionPipeline:
    """The student at ``student`` (a models/student folder with its addlib_config.json) as a diffusers pipeline
    in memory: what :func:`export` saves and :class:`ADDSampler` calls."""
    from transformers import AutoModel, AutoTokenizer

    from .text import resolve_path

    student = Path(student)
    resolved = json.loads((student / "addlib_config.json").read_text())["config"]
    schedule = from_dict(ScheduleConfig, resolved["teacher"]["schedule"], "teacher.schedule")
    add = resolved["add"]
    scheduler = add_scheduler(schedule, add.get("student_zero_terminal_snr", False), add["student_timesteps"])
    unet = UNet2DConditionModel.from_pretrained(student)  # a plain diffusers UNet, SDXL-class ones included
    text = resolved["text_encoder"]
    pretrained = resolved["teacher"].get("pretrained")
    if pretrained:  # the teacher's own pipeline, with the student's UNet and the few-step scheduler
        from diffusers import AutoencoderKL

        teacher = Path(pretrained)
        load = dict(local_files_only=True)
        vae = AutoencoderKL.from_pretrained(teacher / "vae", **load)
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        data = resolved.get("data")
        if data:  # the pipeline's default size: the one the student was trained at
            unet.register_to_config(sample_size=data["resolution"] // factor)
        if (teacher / "text_encoder_2").is_dir():  # SDXL-class: diffusers computes the added conditioning
            from diffusers import StableDiffusionXLPipeline
            from transformers import CLIPTextModel, CLIPTextModelWithProjection

            index = json.loads((teacher / "model_index.json").read_text()) if (teacher / "model_index.json").is_file() else {}
            pipe = StableDiffusionXLPipeline(
                vae=vae, text_encoder=CLIPTextModel.from_pretrained(teacher / "text_encoder", **load),
                text_encoder_2=CLIPTextModelWithProjection.from_pretrained(teacher / "text_encoder_2", **load),
                tokenizer=AutoTokenizer.from_pretrained(teacher / "tokenizer", **load),
                tokenizer_2=AutoTokenizer.from_pretrained(teacher / "tokenizer_2", **load),
                unet=unet, scheduler=scheduler, add_watermarker=False,
                force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", True))
            tokenizers = [pipe.tokenizer, pipe.tokenizer_2]
        else:
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline(
                vae=vae, text_encoder=AutoModel.from_pretrained(teacher / "text_encoder", **load),
                tokenizer=AutoTokenizer.from_pretrained(teacher / "tokenizer", **load),
                unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)
            tokenizers = [pipe.tokenizer]
        # the pipeline pads prompts to the tokenizer's model_max_length: the length the student was trained with
        for tokenizer in tokenizers:
            tokenizer.model_max_length = text["max_length"]
    else:
        folder = resolve_path(text["path"])
        if (folder / "text_encoder").is_dir():
            folder = folder / "text_encoder"
        pipe = ADDPipeline(unet, scheduler, AutoModel.from_pretrained(folder, local_files_only=True),
                           AutoTokenizer.from_pretrained(folder.parent / "tokenizer" if folder.name == "text_encoder"
                                                         else folder, local_files_only=True),
                           max_length=text["max_length"], use_attention_mask=text["attention_mask"])
    return pipe


def export(student: str | Path, out: str | Path) -> Path:
    """Write the student at ``student`` (a models/student folder with its addlib_config.json) as a diffusers
    pipeline folder at ``out``; returns ``out``."""
    student, out = Path(student), Path(out)
    pipe = build_pipeline(student)
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    shutil.copy2(student / "addlib_config.json", out / "addlib_config.json")
    if (student / LORA_DIR).is_dir():  # LoRA-ADD: the adapters too, for pipe.load_lora_weights on the teacher's pipeline
        shutil.copytree(student / LORA_DIR, out / LORA_DIR)
    return out


class ADDSampler:
    """The trained student in one call: ``ADDSampler.from_pretrained("models/student")(prompts, steps, seed)``
    returns images in [-1, 1], shape (len(prompts), C, H, W).

    A thin front over the student's diffusers pipeline (:func:`build_pipeline`: :class:`ADDPipeline`, or the
    teacher's own SD / SDXL pipeline with the student's UNet; both with the LCMScheduler that is ADD's sampler),
    so the library, the command line and diffusers sample through one loop (the evaluation's batched
    ``sampling.sample_student`` gives the same images, tests/test_export.py). ``seed`` fixes the starting noise
    (``sampling.initial_noise``) and the re-noising generator (``sampling.renoise_generator``); ``steps`` must
    be one of ``sampling.student_step_counts`` (1, 2 or 4 for the default timesteps), else a one-line error.
    """

    def __init__(self, pipe, trained_timesteps: list[int], T: int):
        self.pipe, self.T = pipe, T
        self.student_timesteps = list(trained_timesteps)
        self.shape = unet_input_shape(pipe.unet)  # the export sets sample_size to the trained size

    @classmethod
    def from_pretrained(cls, path, device: str = "cpu") -> "ADDSampler":
        resolved = json.loads((Path(path) / "addlib_config.json").read_text())["config"]
        pipe = build_pipeline(path).to(device)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, resolved["add"]["student_timesteps"], resolved["teacher"]["schedule"]["num_train_timesteps"])

    def timesteps(self, steps: int) -> list[int]:
        return student_timesteps(steps, self.student_timesteps, self.T)

    @torch.no_grad()
    def __call__(self, prompts: str | list[str], steps: int = 1, seed: int = 0) -> torch.Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        self.timesteps(steps)  # the one-line error for a step count the student was not trained for
        noise = initial_noise(len(prompts), self.shape, seed)
        guidance = {} if isinstance(self.pipe, ADDPipeline) else {"guidance_scale": 0.0}  # SD-Turbo's call
        images = self.pipe(prompts, num_inference_steps=steps, generator=renoise_generator(seed), latents=noise,
                           output_type="pt", **guidance).images
        return (images.float().cpu() * 2 - 1).clamp(-1, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m addlib.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", default="models/student", help="a trained student folder")
    ap.add_argument("--out", default="models/student-pipeline", help="the pipeline folder to write")
    a = ap.parse_args(argv)
    if not (Path(a.student) / "addlib_config.json").is_file():
        print(f"error: {a.student}: no addlib_config.json (a student folder the add stage wrote)", file=sys.stderr)
        return 2
    try:
        print(export(a.student, a.out))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
