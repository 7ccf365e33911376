"""The trained student as a diffusers pipeline: the LCMScheduler written for it reproduces ADD's few-step
sampler (timesteps and images), for the embedded pixel-space default (addlib's ADDPipeline, loaded back with
from_pretrained) and for a latent SD-layout teacher (loaded by AutoPipelineForText2Image, guidance 0, as
SD-Turbo), at 1, 2 and 4 steps, from the same starting noise and re-noising generator."""
import dataclasses
import json

import pytest
import torch

from addlib import config as C
from addlib import export as X
from addlib.config.teacher import ScheduleConfig
from addlib.diffusion import student_schedule
from addlib.models import build_unet
from addlib.export import ADDSampler
from addlib.sampling import initial_noise, renoise_generator, sample_student, student_timesteps
from addlib.text import TextEncoder


def _perturbed(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    for prm in unet.parameters():  # diffusers zero-inits conv_out: move off it so the output matters
        prm.data.add_(0.05 * torch.randn(prm.shape, generator=g))
    return unet.eval()


def _student_folder(path, p: C.Params, unet):
    unet.save_pretrained(path)
    C.write_resolved({n: getattr(p, n) for n in ("seed", "data", "text_encoder", "teacher", "add")},
                     path / "addlib_config.json")
    return path


def test_the_scheduler_gives_the_students_timesteps_and_refuses_others(smoke_params):
    sc = smoke_params.teacher.schedule
    s = X.add_scheduler(sc, True, [999, 749, 499, 249])
    for k in (1, 2, 4):
        s.set_timesteps(k)
        assert s.timesteps.tolist() == student_timesteps(k, [999, 749, 499, 249]), k
    with pytest.raises(ValueError, match="not an even grid"):
        X.add_scheduler(sc, True, [999, 700, 300])


def test_the_pixel_pipeline_is_the_library_sampler(tmp_path, smoke_params):
    p = smoke_params
    unet = _perturbed(build_unet(p.teacher.unet, p.data.resolution, 1, 384))
    folder = X.export(_student_folder(tmp_path / "student", p, unet), tmp_path / "pipe")
    assert (folder / "model_index.json").is_file()
    pipe = X.ADDPipeline.from_pretrained(folder)
    enc = TextEncoder.from_config(p.text_encoder)
    prompts = ["a handwritten digit one", "the number 7"]
    states, mask, _ = enc(prompts)
    sched = student_schedule(p.teacher.schedule, p.add.student_zero_terminal_snr)
    noise = torch.randn(2, 1, p.data.resolution, p.data.resolution, generator=torch.Generator().manual_seed(1))
    for k in (1, 2, 4):
        ref = sample_student(unet, sched, states, mask, noise, student_timesteps(k, p.add.student_timesteps), seed=5)
        got = pipe(prompts, num_inference_steps=k, generator=renoise_generator(5), latents=noise, output_type="pt").images
        torch.testing.assert_close(got, (ref + 1) / 2, rtol=1e-4, atol=2e-4)
    pil = pipe(prompts[0], num_inference_steps=1, generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 1 and pil[0].size == (p.data.resolution, p.data.resolution)
    # the library's one-call sampler is that pipeline, with the seed fixing the noise and the re-noising stream
    sampler = ADDSampler.from_pretrained(tmp_path / "student")
    start = initial_noise(2, (1, p.data.resolution, p.data.resolution), 7)
    for k in (1, 2, 4):
        ref = sample_student(unet, sched, states, mask, start, student_timesteps(k, p.add.student_timesteps), seed=7)
        torch.testing.assert_close(sampler(prompts, steps=k, seed=7), ref, rtol=1e-4, atol=4e-4)


@pytest.mark.parametrize("layout", ["sd", "sdxl"])
def test_a_latent_student_loads_like_sd_turbo(layout, tmp_path, smoke_params):
    """SD layout (v-prediction, student at zero terminal SNR) -> StableDiffusionPipeline; SDXL layout (epsilon,
    stock schedule) -> StableDiffusionXLPipeline, where diffusers computes the added conditioning itself."""
    from diffusers import AutoencoderKL, AutoPipelineForText2Image
    from addlib.latent import VAESpace
    from addlib.models import load_unet
    from tiny_models import SD_SCHEDULE, SDXL_SCHEDULE, sd_folder, sdxl_folder

    sdxl = layout == "sdxl"
    # its tokenizers' model_max_length is not the 12 tokens the student trained on
    sd = (sdxl_folder if sdxl else sd_folder)(tmp_path / layout)
    schedule = C.from_dict(ScheduleConfig, {**(SDXL_SCHEDULE if sdxl else SD_SCHEDULE),
                                              "rescale_zero_terminal_snr": False}, "schedule")
    p = dataclasses.replace(
        smoke_params, data=dataclasses.replace(smoke_params.data, resolution=16, channels=3),
        text_encoder=dataclasses.replace(smoke_params.text_encoder, path=str(sd), max_length=12, pooling="eos",
                                         attention_mask=False),
        teacher=dataclasses.replace(smoke_params.teacher, pretrained=str(sd), schedule=schedule),
        add=dataclasses.replace(smoke_params.add, student_zero_terminal_snr=not sdxl))
    unet = _perturbed(load_unet(sd / "unet", vae_scale_factor=2))
    folder = X.export(_student_folder(tmp_path / "student", p, unet), tmp_path / "pipe")
    pipe = AutoPipelineForText2Image.from_pretrained(folder, local_files_only=True)
    assert type(pipe).__name__ == ("StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline")
    assert type(pipe.scheduler).__name__ == "LCMScheduler" and type(pipe.unet).__name__ == "UNet2DConditionModel"
    assert pipe.tokenizer.model_max_length == 12  # the export pads prompts as training did
    assert pipe.unet.config.sample_size == 8  # its default size is the trained one: 16 px over the VAE's factor 2
    enc = TextEncoder.from_config(p.text_encoder)
    prompts = ["a red square", "a blue square"]
    states, mask, _ = enc(prompts)
    space = VAESpace(AutoencoderKL.from_pretrained(sd / "vae"))
    sched = student_schedule(p.teacher.schedule, not sdxl)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    for k in (1, 2, 4):
        ref = sample_student(unet, sched, states, mask, noise, student_timesteps(k, p.add.student_timesteps), seed=3,
                             space=space)
        got = pipe(prompts, num_inference_steps=k, guidance_scale=0.0, generator=renoise_generator(3), latents=noise,
                   output_type="pt").images
        torch.testing.assert_close(got, (ref + 1) / 2, rtol=1e-3, atol=1e-3)
    if sdxl:  # an epsilon student's one step: pure noise taken as x_999, x0 read from epsilon on the stock schedule
        with torch.no_grad():
            eps = unet(noise, torch.full((2,), 999), encoder_hidden_states=states).sample
        a_bar = sched.alphas_cumprod[999]
        assert 0.004 < float(a_bar) < 0.005  # SDXL's scaled-linear schedule: alpha_999 = 0.068
        x0 = (noise - (1 - a_bar).sqrt() * eps) / a_bar.sqrt()
        ref = sample_student(unet, sched, states, mask, noise, [999], space=space)
        torch.testing.assert_close(ref, space.decode(x0).clamp(-1, 1), rtol=1e-4, atol=1e-4)
    assert json.loads((folder / "addlib_config.json").read_text())["config"]["teacher"]["pretrained"] == str(sd)


def test_the_command_line_refuses_a_folder_that_is_not_a_student(tmp_path, capsys):
    assert X.main(["--student", str(tmp_path / "nothing"), "--out", str(tmp_path / "pipe")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no addlib_config.json" in err[0] and not (tmp_path / "pipe").exists()
