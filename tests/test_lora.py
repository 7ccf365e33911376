"""LoRA-ADD on tiny random models: only the adapters train (the teacher's weights, copied into the student, never
move), two steps plus a resume equal three, the EMA holds the adapters; the saved student is the fused plain
UNet, and the saved adapters, loaded back onto the teacher's UNet (diffusers' load_lora_adapter) or onto the
teacher's own SD pipeline (load_lora_weights, LCM-LoRA style), reproduce the student's output."""
import copy
import dataclasses

import torch
from safetensors.torch import load_file

from addlib import config
from addlib.config.add import LoRAConfig
from addlib.config.teacher import ScheduleConfig
from addlib import lora
from test_add import _run, _setup

# alpha != rank: the scale alpha / r must survive the diffusers file (it is folded into B)
LORA = LoRAConfig(rank=4, alpha=8.0, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"])


def _lora_setup(smoke_params, tiny_data, **train):
    add, ds, cache, teacher, disc = _setup(smoke_params, tiny_data, lora=LORA)
    add = dataclasses.replace(add, train=dataclasses.replace(add.train, **train))
    return add, ds, cache, teacher, disc


def test_only_the_adapters_train_and_a_resume_is_exact(tmp_path, smoke_params, tiny_data):
    add, ds, cache, teacher, disc = _lora_setup(smoke_params, tiny_data)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    full = _run(add, smoke_params, ds, cache, teacher, disc, tmp_path / "full")
    for max_steps in (2, None):  # fresh objects for the interrupted run and its resume, as new processes build them
        add, ds, cache, teacher_, disc = _lora_setup(smoke_params, tiny_data)
        resumed = _run(add, smoke_params, ds, cache, teacher_, disc, tmp_path / "resumed", max_steps=max_steps)
    assert resumed["resumed_from_step"] == 2
    keys = ["loss_G", "loss_distill", "loss_D", "r1", "logits_real", "logits_fake"]
    assert [[r[k] for k in keys] for r in full["history"]] == [[r[k] for k in keys] for r in resumed["history"]]
    a, b = (next((tmp_path / run / "ckpt").glob("*/checkpoint-3")) for run in ("full", "resumed"))
    for name in ["student", "disc_heads", "ema"]:
        sa, sb = load_file(str(a / f"{name}.safetensors")), load_file(str(b / f"{name}.safetensors"))
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
    st = load_file(str(a / "student.safetensors"))
    adapters = {k for k in st if ".lora_" in k}
    assert adapters and any(".attn1." in k for k in adapters) and any(".conv1." in k for k in adapters)
    # every weight that is not an adapter is still the teacher's, bit for bit; the adapters moved (B starts at 0)
    for k, v in st.items():
        if k not in adapters:
            assert torch.equal(v, teacher_before[k.replace(".base_layer", "")]), k
    assert all(st[k].abs().max() > 0 for k in adapters if ".lora_B." in k)
    # the EMA averages the adapters only; trainable parameters and the trained state are the adapters'
    assert set(load_file(str(a / "ema.safetensors"))) - {"__updates__"} == adapters
    assert full["trainable_parameters"] == sum(st[k].numel() for k in adapters)
    n_all = sum(v.numel() for v in teacher_before.values() if v.dtype.is_floating_point)
    assert full["trainable_parameters"] < n_all / 4
    # the saved student is the fused plain UNet (its weights differ from the teacher's), beside the adapters
    from diffusers import UNet2DConditionModel

    plain = UNet2DConditionModel.from_pretrained(tmp_path / "full" / "student")
    assert not any("lora" in k for k in plain.state_dict())
    assert any(not torch.equal(v, teacher_before[k]) for k, v in plain.state_dict().items())
    assert (tmp_path / "full" / "student" / lora.LORA_DIR / lora.WEIGHTS).is_file()


def test_the_fused_student_and_the_reloaded_adapters_give_the_students_output(tmp_path, smoke_params, tiny_data):
    # a large step size and no averaging, so that the adapters move the output well beyond float error
    add, ds, cache, teacher, disc = _lora_setup(smoke_params, tiny_data, lr_student=0.02, ema_decay=0.0)
    fresh_teacher = copy.deepcopy(teacher)
    run = _run(add, smoke_params, ds, cache, teacher, disc, tmp_path)
    student = run["student"]
    assert not hasattr(student, "peft_config")  # fused and unloaded: a plain UNet
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(4, 1, 8, 8, generator=g), torch.tensor([999, 749, 499, 249])
    states, mask = cache.states[[1, 2, 3, 1]], cache.mask[[1, 2, 3, 1]]
    call = lambda m: m(x, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample  # noqa: E731
    with torch.no_grad():
        ref, before = call(student), call(fresh_teacher)
        assert (ref - before).abs().max() > 1e-3  # the adapters matter
        reloaded = copy.deepcopy(fresh_teacher)
        reloaded.load_lora_adapter(str(tmp_path / "student" / lora.LORA_DIR), prefix="unet",
                                   weight_name=lora.WEIGHTS)
        torch.testing.assert_close(call(reloaded), ref, rtol=1e-4, atol=1e-5)


def test_the_adapters_load_onto_the_teachers_own_pipeline(tmp_path, smoke_params):
    """The exported student pipeline (fused) and the teacher's SD pipeline with the adapters loaded by
    load_lora_weights and the student's scheduler give the same images."""
    from diffusers import AutoPipelineForText2Image, UNet2DConditionModel

    from addlib import export as X
    from test_export import _student_folder
    from tiny_models import SD_SCHEDULE, sd_folder

    sd = sd_folder(tmp_path / "sd")
    schedule = config.from_dict(ScheduleConfig, {**SD_SCHEDULE, "rescale_zero_terminal_snr": False}, "s")
    p = dataclasses.replace(
        smoke_params, data=dataclasses.replace(smoke_params.data, resolution=16, channels=3),
        text_encoder=dataclasses.replace(smoke_params.text_encoder, path=str(sd), max_length=12, pooling="eos",
                                         attention_mask=False),
        teacher=dataclasses.replace(smoke_params.teacher, pretrained=str(sd), schedule=schedule),
        add=dataclasses.replace(smoke_params.add, student_zero_terminal_snr=True, lora=LORA))
    unet = lora.add_adapters(UNet2DConditionModel.from_pretrained(sd / "unet"), LORA)
    g = torch.Generator().manual_seed(0)
    for name, prm in unet.named_parameters():
        if ".lora_B." in name:  # as if trained
            prm.data.copy_(0.3 * torch.randn(prm.shape, generator=g))
    folder = tmp_path / "student"
    lora.save_adapters(unet, folder / lora.LORA_DIR, LORA)
    out = X.export(_student_folder(folder, p, lora.fused(unet).eval()), tmp_path / "pipe")
    assert (out / lora.LORA_DIR / lora.WEIGHTS).is_file()
    student_pipe = AutoPipelineForText2Image.from_pretrained(out, local_files_only=True)
    # the teacher's pipeline: its own UNet, with the student pipeline's VAE, text encoder and few-step scheduler
    teacher_pipe = type(student_pipe)(**{**student_pipe.components,
                                         "unet": UNet2DConditionModel.from_pretrained(sd / "unet")})
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    kw = dict(num_inference_steps=2, guidance_scale=0.0, latents=noise, output_type="pt")
    prompts = ["a red square", "a blue square"]
    without = teacher_pipe(prompts, generator=torch.Generator().manual_seed(3), **kw).images
    teacher_pipe.load_lora_weights(out / lora.LORA_DIR, weight_name=lora.WEIGHTS)
    got = teacher_pipe(prompts, generator=torch.Generator().manual_seed(3), **kw).images
    ref = student_pipe(prompts, generator=torch.Generator().manual_seed(3), **kw).images
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)
    assert (without - ref).abs().max() > 1e-2  # the adapters change the images
