"""Latent (Stable-Diffusion-class) teachers, offline: a tiny random SD-layout folder written in the test is
loaded through the same code a user's checkpoint takes, and ADD trains on it for two steps plus a resume."""
import dataclasses
import json

import pytest
import timm
import torch

from addlib import config
from addlib.config.teacher import ScheduleConfig
from addlib.config.text_encoder import TextEncoderConfig
from addlib.data import TRAIN, Dataset
from addlib.discriminator import Discriminator, FeatureNetwork
from addlib.latent import VAESpace, check_schedule, load_pretrained, load_teacher
from addlib.text import TextEncoder, encode_captions
from addlib.distillation import train_add
from tiny_models import SD_SCHEDULE, SDXL_SCHEDULE, sd_folder, sdxl_folder


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return sd_folder(tmp_path_factory.mktemp("sd") / "tiny-sd")


def _params(smoke_params, folder, **add_overrides):
    # the stock checkpoint's schedule for the teacher; a v-prediction student at zero terminal SNR, an epsilon
    # one (the SDXL-layout folder of tests/test_sdxl.py) on the stock schedule
    sdxl = (folder / "text_encoder_2").is_dir()
    schedule = config.from_dict(ScheduleConfig, {**(SDXL_SCHEDULE if sdxl else SD_SCHEDULE),
                                                        "rescale_zero_terminal_snr": False}, "s")
    teacher = dataclasses.replace(smoke_params.teacher, pretrained=str(folder), schedule=schedule)
    add_overrides = {"student_zero_terminal_snr": not sdxl, **add_overrides}
    text = config.from_dict(TextEncoderConfig, dict(path=str(folder), max_length=12, pooling="eos",
                                                           attention_mask=False), "text_encoder")
    train = dataclasses.replace(smoke_params.add.train, steps=3, batch_size=4, checkpoint_every=10, log_every=1,
                                sample_every=0)
    add = dataclasses.replace(smoke_params.add, train=train, **add_overrides)
    return teacher, text, add


def test_text_encoder_from_a_pipeline_folder_uses_clips_pooled_output(sd):
    from transformers import CLIPTextModel, CLIPTokenizer

    enc = TextEncoder(str(sd), max_length=12, pooling="eos", attention_mask=False)
    states, mask, pooled = enc(["a digit 7", "x"])
    tok = CLIPTokenizer.from_pretrained(str(sd / "tokenizer"))
    model = CLIPTextModel.from_pretrained(str(sd / "text_encoder"))
    ids = tok(["a digit 7", "x"], padding="max_length", max_length=12, return_tensors="pt").input_ids
    out = model(ids)  # SD pipelines call it with no attention mask
    torch.testing.assert_close(states, out.last_hidden_state)
    torch.testing.assert_close(pooled, torch.nn.functional.normalize(out.pooler_output, dim=-1))
    assert torch.equal(mask, torch.ones(2, 12))  # the UNet attends to every token, as SD was trained


def test_vae_space_round_trip_shapes_and_scaling(sd):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(sd / "vae"))
    space = VAESpace(vae)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = space.encode(x)
    assert z.shape == (2, 4, 8, 8) and space.latent_shape((3, 16, 16)) == (4, 8, 8)
    torch.testing.assert_close(z, vae.encode(x).latent_dist.mean * 0.5)  # mean times scaling_factor
    torch.testing.assert_close(space.decode(z), vae.decode(z / 0.5).sample)
    with pytest.raises(config.ConfigError, match="not divisible"):
        space.latent_shape((3, 15, 15))


def test_params_are_checked_against_the_checkpoint(sd, smoke_params, tmp_path):
    teacher, _, _ = _params(smoke_params, sd)
    check_schedule(teacher.schedule, sd)
    wrong = dataclasses.replace(teacher.schedule, beta_end=0.02)
    with pytest.raises(config.ConfigError, match=r"teacher.schedule.beta_end: params say 0.02, the checkpoint"):
        check_schedule(wrong, sd)
    # a stock checkpoint is not at zero terminal SNR: the teacher must not be driven on a rescaled schedule
    with pytest.raises(config.ConfigError, match=r"rescale_zero_terminal_snr: params say True, the checkpoint's "
                                                 r"scheduler says False"):
        check_schedule(dataclasses.replace(teacher.schedule, rescale_zero_terminal_snr=True), sd)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "unet").mkdir()
    with pytest.raises(config.ConfigError, match="missing vae/, text_encoder/, tokenizer/, scheduler/"):
        dataclasses.replace(teacher, pretrained=str(tmp_path / "half")).check_inputs(tmp_path)


def _run(smoke_params, sd, folder, train_overrides=None, add_overrides=None, **kw):
    teacher_cfg, text_cfg, add = _params(smoke_params, sd, **(add_overrides or {}))
    add = dataclasses.replace(add, train=dataclasses.replace(add.train, **(train_overrides or {})))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 16, 16), generator=g, dtype=torch.uint8)[torch.arange(12) % 3]
    captions = [["red 1", "blue 2", "green 3"][i % 3] for i in range(12)]
    ds = Dataset(images, torch.arange(12) % 3, captions, torch.full((12,), TRAIN, dtype=torch.uint8))
    cache = encode_captions(TextEncoder.from_config(text_cfg), captions)
    teacher = load_teacher(teacher_cfg, folder / "unused")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, in_chans=3,
                            embed_dim=16, depth=2, num_heads=2, num_classes=0)
    disc = Discriminator(FeatureNetwork(vit, taps=[0, 1]), cache.pooled.shape[-1],
                         group_size=add.discriminator.group_size)
    run = train_add(add, teacher, 0, ds, cache, disc, 0, folder / "student", folder / "ckpt", progress=False, **kw)
    return run, teacher, teacher_cfg, text_cfg, add


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return sdxl_folder(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl")


@pytest.mark.parametrize("layout", ["sd", "sdxl"])
def test_add_on_a_latent_teacher_two_steps_then_resume(layout, request, smoke_params, tmp_path):
    """SD layout (v-prediction, the student at zero terminal SNR) and SDXL layout (epsilon, the student on the
    stock schedule: its first step takes pure noise as x_999 and reads x0 from epsilon, as SDXL-Turbo does)."""
    sd = request.getfixturevalue(layout)
    full, teacher, teacher_cfg, text_cfg, add = _run(smoke_params, sd, tmp_path / "full")
    assert isinstance(teacher.space, VAESpace) and teacher.source == str(sd)
    _run(smoke_params, sd, tmp_path / "resumed", max_steps=2)
    resumed = _run(smoke_params, sd, tmp_path / "resumed")[0]
    assert resumed["resumed_from_step"] == 2
    keys = ["loss_G", "loss_distill", "loss_D", "r1", "logits_real", "logits_fake"]
    assert [[r[k] for k in keys] for r in full["history"]] == [[r[k] for k in keys] for r in resumed["history"]]
    assert all(torch.isfinite(torch.tensor([r[k] for k in keys])).all() for r in full["history"])
    # the student (an SD-layout UNet) moved away from the teacher's weights and saved as a diffusers model
    ref = load_pretrained(teacher_cfg, sd).unet.state_dict()
    student = full["student"].state_dict()
    assert any(not torch.equal(student[k], v) for k, v in ref.items())
    assert (type(full["student"]).__name__ == "SDXLUNet") == (layout == "sdxl")
    # ... and samples pixels in one call, decoded by the teacher's VAE
    from addlib.export import ADDSampler

    out = tmp_path / "full" / "student"
    (out / "addlib_config.json").write_text(json.dumps({"config": {
        "teacher": config.to_dict(teacher_cfg), "text_encoder": config.to_dict(text_cfg), "add": config.to_dict(add)}}))
    x = ADDSampler.from_pretrained(out)(["red 1", "green 3"], steps=2, seed=0)
    assert x.shape == (2, 3, 16, 16) and x.abs().max() <= 1


def test_micro_batches_give_the_first_steps_losses_and_latent_distillation_runs(sd, smoke_params, tmp_path):
    """gradient_accumulation 2 cuts each batch in two: step 1's losses (before any update) are the same to
    floating point, D's too (spectral norm's power iteration runs once per step, not once per forward);
    distill_space: latent compares latents instead of decoded images."""
    keys = ["loss_G", "loss_distill", "loss_student", "loss_D", "r1", "logits_real", "logits_fake"]
    # D's local batch norm takes statistics over groups of samples: micro-batches of whole groups keep them
    groups = dict(discriminator=dataclasses.replace(smoke_params.add.discriminator, group_size=2))
    one = _run(smoke_params, sd, tmp_path / "one", add_overrides=groups, max_steps=1)[0]["history"][0]
    two = _run(smoke_params, sd, tmp_path / "two", train_overrides=dict(gradient_accumulation=2),
               add_overrides=groups, max_steps=1)[0]["history"][0]
    assert [two[k] for k in keys] == pytest.approx([one[k] for k in keys], rel=1e-5, abs=1e-7)
    lat = _run(smoke_params, sd, tmp_path / "lat", add_overrides=dict(distill_space="latent", **groups),
               max_steps=1)[0]
    assert lat["history"][0]["loss_distill"] != one["loss_distill"]
    assert lat["history"][0]["loss_G"] == pytest.approx(one["loss_G"], rel=1e-6)


def test_the_teachers_target_is_on_its_own_stock_schedule(sd, smoke_params):
    """A stock SD-layout checkpoint (not zero terminal SNR): the teacher's x0 estimate for a given x_t and t
    equals diffusers' own scheduler's pred_original_sample for the same model output, whatever the student's
    schedule is."""
    from diffusers import DDIMScheduler

    from addlib.diffusion import student_schedule
    from addlib.objective import teacher_x0

    teacher_cfg, _, add = _params(smoke_params, sd)
    teacher = load_pretrained(teacher_cfg, sd)
    g = torch.Generator().manual_seed(0)
    x_t, t = torch.randn(3, 4, 8, 8, generator=g), torch.tensor([749, 300, 999])
    cond = (torch.randn(3, 5, 16, generator=g), torch.ones(3, 5))
    with torch.no_grad():
        ours = teacher_x0(teacher.unet, teacher.schedule, x_t, t, cond, cond, 1.0, 1)
        v = teacher.unet(x_t, t, encoder_hidden_states=cond[0], encoder_attention_mask=cond[1]).sample
    sch = DDIMScheduler.from_pretrained(sd / "scheduler", clip_sample=False)  # diffusers clips x0 by default
    sch.set_timesteps(1000)
    for i in range(3):
        ref = sch.step(v[i:i + 1], int(t[i]), x_t[i:i + 1]).pred_original_sample
        torch.testing.assert_close(ours[i:i + 1], ref, rtol=1e-4, atol=1e-5)
    # the student's schedule is the rescaled one (t = 999 pure noise); the teacher's is not
    s_sched = student_schedule(teacher.schedule.cfg, add.student_zero_terminal_snr)
    assert float(s_sched.alphas_cumprod[999]) == 0.0 and float(teacher.schedule.alphas_cumprod[999]) > 1e-3
    assert float(teacher.schedule.snr(torch.tensor([749]))) == pytest.approx(0.060, abs=2e-3)
