"""SDXL-class teachers, offline: a tiny random SDXL-layout folder (two CLIP text towers, a UNet with SDXL's added
text_time conditioning, a VAE, an epsilon-prediction scheduler) saved by diffusers' own StableDiffusionXLPipeline.
The library's text encoder, UNet call and teacher target are checked against what that pipeline's components
compute for the same inputs; ADD trains on it for two steps plus an exact resume (tests/test_latent.py's run)."""
import dataclasses

import pytest
import torch

from addlib import config
from addlib.config import checks
from addlib.config.teacher import ScheduleConfig
from addlib.config.text_encoder import TextEncoderConfig
from addlib.latent import load_pretrained
from addlib.models import load_unet
from addlib.objective import teacher_x0
from addlib.sdxl import SDXLTextEncoder, SDXLUNet, unpack
from addlib.text import TextEncoder
from tiny_models import SDXL_POOLED, SDXL_SCHEDULE, sdxl_folder

PROMPTS = ["a red square", "x 7"]


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return sdxl_folder(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl")


@pytest.fixture(scope="module")
def pipe(sdxl):
    from diffusers import StableDiffusionXLPipeline

    p = StableDiffusionXLPipeline.from_pretrained(sdxl, local_files_only=True)
    p.tokenizer.model_max_length = p.tokenizer_2.model_max_length = 12  # the length the library pads to below
    return p


def _text_cfg(folder):
    return config.from_dict(TextEncoderConfig, dict(path=str(folder), max_length=12, pooling="eos",
                                                           attention_mask=False), "text_encoder")


def _time_ids(pipe, n, size=16):
    return pipe._get_add_time_ids((size, size), (0, 0), (size, size), torch.float32,
                                  text_encoder_projection_dim=SDXL_POOLED).repeat(n, 1)


def test_prompts_are_encoded_as_the_sdxl_pipeline_encodes_them(sdxl, pipe):
    enc = TextEncoder.from_config(_text_cfg(sdxl))
    assert isinstance(enc, SDXLTextEncoder)
    packed, mask, c_text = enc(PROMPTS + [""])
    states, text_embeds = unpack(packed, SDXL_POOLED)
    with torch.no_grad():
        pe, npe, pooled, npooled = pipe.encode_prompt(PROMPTS, device="cpu", num_images_per_prompt=1,
                                                      do_classifier_free_guidance=True)
    # both towers' penultimate states side by side; the second tower's projection as text_embeds
    torch.testing.assert_close(states[:2], pe)
    torch.testing.assert_close(text_embeds[:2], pooled)
    # the empty prompt is SDXL's unconditional embedding: zeros (force_zeros_for_empty_prompt)
    assert torch.equal(states[2:], npe[:1]) and torch.equal(text_embeds[2:], npooled[:1])
    assert not npe.any()
    # one extra token, attended to like every other; D's c_text is the projection, unit norm (zero for "")
    assert packed.shape == (3, 13, 32) and torch.equal(mask, torch.ones(3, 13))
    torch.testing.assert_close(c_text[:2], torch.nn.functional.normalize(pooled, dim=-1))
    assert not c_text[2].any()


def test_the_unet_takes_its_added_conditioning_from_the_packed_states(sdxl, pipe, tmp_path):
    unet = load_unet(sdxl / "unet", vae_scale_factor=2)
    assert isinstance(unet, SDXLUNet) and unet.vae_scale_factor == 2 and unet.text_embed_dim == SDXL_POOLED
    packed, mask, _ = TextEncoder.from_config(_text_cfg(sdxl))(PROMPTS)
    with torch.no_grad():
        pe, _, pooled, _ = pipe.encode_prompt(PROMPTS, device="cpu", num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([999, 500])
    with torch.no_grad():
        ours = unet(x, t, encoder_hidden_states=packed, encoder_attention_mask=mask).sample
        ref = pipe.unet(x, t, encoder_hidden_states=pe,
                        added_cond_kwargs={"text_embeds": pooled, "time_ids": _time_ids(pipe, 2)}).sample
        other_size = pipe.unet(x, t, encoder_hidden_states=pe,
                               added_cond_kwargs={"text_embeds": pooled, "time_ids": _time_ids(pipe, 2, 32)}).sample
    torch.testing.assert_close(ours, ref)
    assert not torch.allclose(ref, other_size, atol=1e-5)  # the size conditioning is seen: 16 px, not 32
    # the student saves as a diffusers UNet folder and loads back as an SDXLUNet that remembers the VAE factor
    unet.save_pretrained(tmp_path / "student")
    back = load_unet(tmp_path / "student")
    assert isinstance(back, SDXLUNet) and back.vae_scale_factor == 2
    with torch.no_grad():
        torch.testing.assert_close(back(x, t, encoder_hidden_states=packed).sample, ours)


def test_the_teachers_guided_x0_is_what_diffusers_sdxl_computes(sdxl, pipe, smoke_params):
    """The distillation target's teacher call: x0 from the guided epsilon on the stock schedule, against the
    SDXL pipeline's embeddings, its classifier-free guidance (zeros as the unconditional embedding) and
    DDIM's x0 for the same x_t and t."""
    from diffusers import DDIMScheduler

    schedule = config.from_dict(ScheduleConfig, {**SDXL_SCHEDULE, "rescale_zero_terminal_snr": False}, "s")
    teacher = load_pretrained(dataclasses.replace(smoke_params.teacher, pretrained=str(sdxl), schedule=schedule),
                              sdxl)
    assert isinstance(teacher.unet, SDXLUNet) and teacher.space.factor == 2
    enc = TextEncoder.from_config(_text_cfg(sdxl))
    cond, uncond = enc(PROMPTS)[:2], enc(["", ""])[:2]
    g = torch.Generator().manual_seed(1)
    x_t, t, w = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([749, 300]), 3.0
    with torch.no_grad():
        ours = teacher_x0(teacher.unet, teacher.schedule, x_t, t, cond, uncond, w, 1)
        pe, npe, pooled, npooled = pipe.encode_prompt(PROMPTS, device="cpu", num_images_per_prompt=1,
                                                      do_classifier_free_guidance=True)
        eps = pipe.unet(torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=torch.cat([npe, pe]),
                        added_cond_kwargs={"text_embeds": torch.cat([npooled, pooled]),
                                           "time_ids": _time_ids(pipe, 4)}).sample
    eps_u, eps_c = eps.chunk(2)
    eps = eps_u + w * (eps_c - eps_u)
    sch = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    sch.set_timesteps(1000)
    for i in range(2):
        ref = sch.step(eps[i:i + 1], int(t[i]), x_t[i:i + 1]).pred_original_sample
        torch.testing.assert_close(ours[i:i + 1], ref, rtol=1e-4, atol=1e-4)


def test_an_sdxl_text_encoder_is_required_by_an_sdxl_teacher(sdxl, smoke_params, tmp_path):
    schedule = config.from_dict(ScheduleConfig, {**SDXL_SCHEDULE, "rescale_zero_terminal_snr": False}, "s")
    teacher = dataclasses.replace(smoke_params.teacher, pretrained=str(sdxl), schedule=schedule)
    teacher.check_inputs(tmp_path)
    checks.check_text_encoder_fits_teacher(_text_cfg(sdxl), teacher)
    with pytest.raises(config.ConfigError, match=r"^text_encoder\.path: the teacher .* is SDXL-class"):
        checks.check_text_encoder_fits_teacher(smoke_params.text_encoder, teacher)
    with pytest.raises(config.ConfigError, match=r"^text_encoder: an SDXL-class folder needs pooling: eos"):
        dataclasses.replace(_text_cfg(sdxl), pooling="mean").check_inputs(tmp_path)
    import shutil

    half = shutil.copytree(sdxl, tmp_path / "half", ignore=shutil.ignore_patterns("tokenizer_2"))
    with pytest.raises(config.ConfigError, match=r"missing tokenizer_2/"):
        dataclasses.replace(teacher, pretrained=str(half)).check_inputs(tmp_path)
