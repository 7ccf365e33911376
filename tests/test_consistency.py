"""Consistency distillation, the preference study's baseline: LCM's boundary condition (against diffusers'
LCMScheduler), the solver grid and its skipping pairs, the teacher's guided solver step against diffusers'
DDIMScheduler, the multistep sampler against a diffusers LCMScheduler loop, two training steps against a short
independent re-implementation (the EMA target network included), and two steps plus an exact resume."""
import copy
import dataclasses

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from addlib import consistency as CD
from addlib.diffusion import NoiseSchedule
from addlib.latent import PixelSpace, Teacher
from addlib.models import build_unet
from addlib.sampling import guided_v, renoise_generator, sample_student
from addlib.training import batch_indices, step_generator

B = 8


def _unet(smoke_params, cache, seed=0):
    torch.manual_seed(seed)
    unet = build_unet(smoke_params.teacher.unet, 8, 1, cache.states.shape[-1])
    for prm in unet.parameters():  # a random init whose outputs are not ~0 (diffusers zero-inits conv_out)
        prm.data.add_(0.05 * torch.randn_like(prm))
    return unet.eval()


def _diffusers(cls, sc, **kw):
    return cls(num_train_timesteps=sc.num_train_timesteps, beta_schedule=sc.beta_schedule, beta_start=sc.beta_start,
               beta_end=sc.beta_end, prediction_type=sc.prediction_type,
               rescale_betas_zero_snr=sc.rescale_zero_terminal_snr, **kw)


def test_boundary_condition_and_scalings_match_lcm(smoke_params):
    from diffusers import LCMScheduler

    cfg, sched = smoke_params.consistency, NoiseSchedule(smoke_params.teacher.schedule)
    x = torch.randn(3, 1, 8, 8)
    f = CD.consistency_x0(cfg, sched)
    zero = torch.zeros(3, dtype=torch.long)
    assert torch.equal(f(x, 50 * torch.randn_like(x), zero), x)  # f(x, 0) = x whatever the network says
    lcm = _diffusers(LCMScheduler, smoke_params.teacher.schedule, timestep_scaling=cfg.timestep_scaling)
    for t in [0, 19, 259, 999]:
        c_skip, c_out = CD.boundary(torch.tensor([t]), x[:1], cfg.timestep_scaling, cfg.sigma_data)
        ref_skip, ref_out = lcm.get_scalings_for_boundary_condition_discrete(t)
        assert c_skip.item() == pytest.approx(float(ref_skip), abs=1e-7)
        assert c_out.item() == pytest.approx(float(ref_out), rel=1e-6, abs=1e-9)
    assert CD.boundary(torch.tensor([19]), x[:1], 10.0, 0.5)[0].item() == pytest.approx(0.25 / (190 ** 2 + 0.25))


def test_grid_pairs_and_lcm_sampling_timesteps(smoke_params):
    from diffusers import LCMScheduler

    g = CD.SkipGrid(1000, 50)
    assert g.k == 20 and g.timesteps()[:3].tolist() == [19, 39, 59] and g.timesteps()[-1] == 999
    start, prev = g.pair(torch.tensor([0, 1, 24, 49]))
    assert start.tolist() == [19, 39, 499, 999] and prev.tolist() == [0, 19, 479, 979]
    lcm = _diffusers(LCMScheduler, smoke_params.teacher.schedule, original_inference_steps=50)
    for k in [1, 2, 3, 4, 8]:
        lcm.set_timesteps(k)
        assert g.sampling(k) == lcm.timesteps.tolist(), k
    assert g.sampling(4) == [999, 759, 499, 259]
    with pytest.raises(ValueError, match="must divide"):
        CD.SkipGrid(1000, 30)
    with pytest.raises(ValueError, match="samples 1..50"):
        g.sampling(0)


def test_the_target_is_diffusers_guided_ddim_step_then_the_target_network(smoke_params, tiny_data):
    from diffusers import DDIMScheduler

    _, cache = tiny_data
    sc = smoke_params.teacher.schedule
    cfg = dataclasses.replace(smoke_params.consistency, guidance=2.5)
    sched = NoiseSchedule(sc)
    teacher, target_net = _unet(smoke_params, cache, 0), _unet(smoke_params, cache, 1)
    empty = (cache.states[:1], cache.mask[:1])
    loss = CD.ConsistencyLoss(cfg, teacher, sched, empty)
    ddim = _diffusers(DDIMScheduler, sc, set_alpha_to_one=False, timestep_spacing="leading", clip_sample=False)
    ddim.set_timesteps(cfg.solver_steps)
    states, mask, _ = cache[torch.tensor([1, 2])]
    for index in [0, 24]:  # t = 19 -> 0 (the smallest pair) and 499 -> 479
        t_start, t_prev = (a.expand(2) for a in loss.grid.pair(torch.tensor([index])))
        z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(index))
        with torch.no_grad():
            got = loss.target(target_net, z, t_start, t_prev, (states, mask))
            v = guided_v(teacher, z, t_start, (states, mask), (empty[0].expand(2, -1, -1), empty[1].expand(2, -1)),
                         2.5)
            z_prev = torch.cat([ddim.step(v[i:i + 1], int(t_start[i]), z[i:i + 1], eta=0.0).prev_sample
                                for i in range(2)])
            out = target_net(z_prev, t_prev, encoder_hidden_states=states, encoder_attention_mask=mask).sample
            ac = ddim.alphas_cumprod[t_prev].view(-1, 1, 1, 1)
            x0 = ac.sqrt() * z_prev - (1 - ac).sqrt() * out
            st = cfg.timestep_scaling * t_prev.view(-1, 1, 1, 1).double()
            ref = (0.25 / (st ** 2 + 0.25)) * z_prev + (st / (st ** 2 + 0.25).sqrt()) * x0
        torch.testing.assert_close(got, ref.float(), rtol=1e-4, atol=1e-5)
        if index == 0:  # the boundary: the target is the teacher's DDIM step itself
            torch.testing.assert_close(got, z_prev, rtol=1e-5, atol=1e-6)


def test_multistep_sampler_is_a_diffusers_lcm_loop(smoke_params, tiny_data):
    from diffusers import LCMScheduler

    _, cache = tiny_data
    sc = smoke_params.teacher.schedule
    # a small time scaling, so that c_skip is far from 0 at the sampling timesteps and f differs from x0
    cfg = dataclasses.replace(smoke_params.consistency, timestep_scaling=0.01)
    sched, unet = NoiseSchedule(sc), _unet(smoke_params, cache)
    states, mask, _ = cache[torch.tensor([1, 2, 3])]
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    grid = CD.SkipGrid(sc.num_train_timesteps, cfg.solver_steps)
    lcm = _diffusers(LCMScheduler, sc, original_inference_steps=cfg.solver_steps, timestep_scaling=cfg.timestep_scaling)
    for k in [1, 2, 4]:
        got = sample_student(unet, sched, states, mask, noise, grid.sampling(k), seed=3,
                             x0_fn=CD.consistency_x0(cfg, sched))
        lcm.set_timesteps(k)
        g, x = renoise_generator(3), noise.clone()
        with torch.no_grad():
            for t in lcm.timesteps:
                out = unet(x, t.expand(3), encoder_hidden_states=states, encoder_attention_mask=mask).sample
                x, denoised = lcm.step(out, t, x, generator=g, return_dict=False)
        torch.testing.assert_close(got, denoised.clamp(-1, 1), rtol=1e-4, atol=1e-5)


def _train_cfg(smoke_params, **kw):
    return dataclasses.replace(smoke_params.add.train, **{**dict(steps=2, batch_size=B, grad_clip=0.0, log_every=1,
                                                                 sample_every=0, gradient_accumulation=1,
                                                                 checkpoint_every=1, warmup_steps=2), **kw})


def _reference_grads(cfg, student, target, teacher, x0, states, mask, empty, index, eps, ac):
    """The consistency-distillation loss of one batch and its gradient, straight from the formulas: diffusers'
    alphas_cumprod, v-prediction, LCM's scalings, a guided DDIM step, iCT's pseudo-Huber."""
    a, s = ac.sqrt(), (1 - ac).sqrt()
    col = lambda table, t: table[t].view(-1, 1, 1, 1)  # noqa: E731
    k = 1000 // cfg.solver_steps
    t_s = (index + 1) * k - 1
    t_p = (t_s - k).clamp_min(0)

    def f(net, x, t):
        x0_hat = col(a, t) * x - col(s, t) * net(x, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
        st = cfg.timestep_scaling * t.view(-1, 1, 1, 1).double()
        sd2 = cfg.sigma_data ** 2
        return (sd2 / (st ** 2 + sd2)).float() * x + (st / (st ** 2 + sd2).sqrt()).float() * x0_hat

    x_s = col(a, t_s) * x0 + col(s, t_s) * eps
    online = f(student, x_s, t_s)
    with torch.no_grad():
        v_c = teacher(x_s, t_s, encoder_hidden_states=states, encoder_attention_mask=mask).sample
        v_u = teacher(x_s, t_s, encoder_hidden_states=empty[0].expand(len(x0), -1, -1),
                      encoder_attention_mask=empty[1].expand(len(x0), -1)).sample
        v = v_u + cfg.guidance * (v_c - v_u)
        x_p = col(a, t_p) * (col(a, t_s) * x_s - col(s, t_s) * v) + col(s, t_p) * (col(s, t_s) * x_s + col(a, t_s) * v)
        tgt = f(target, x_p, t_p)
    sq = (online - tgt).pow(2).flatten(1).mean(1)
    loss = (sq + 0.00054 ** 2).sqrt() - 0.00054
    return loss.mean().item(), torch.autograd.grad(loss.mean(), list(student.parameters()))


def test_two_steps_equal_the_reference_with_the_ema_target_network(tmp_path, smoke_params, tiny_data):
    from diffusers import DDPMScheduler

    ds, cache = tiny_data
    sc = smoke_params.teacher.schedule
    # mu = 0.1 (below the EMA's warm-up decay 2/11 after one update), so the target's decay is pinned
    cfg = dataclasses.replace(smoke_params.consistency, guidance=2.0, target_decay=0.1)
    tc = _train_cfg(smoke_params)
    unet = _unet(smoke_params, cache)
    w0, teacher0 = copy.deepcopy(unet), copy.deepcopy(unet).requires_grad_(False)
    captured = []
    hook = register_optimizer_step_pre_hook(lambda opt, *_: captured.append(
        ([p.detach().clone() for grp in opt.param_groups for p in grp["params"]],
         [p.grad.clone() for grp in opt.param_groups for p in grp["params"]])))
    try:
        run = CD.train_consistency(cfg, tc, Teacher(unet, NoiseSchedule(sc), PixelSpace(), "trained"), 0, ds, cache,
                                   tmp_path / "student", tmp_path / "ckpt", progress=False)
    finally:
        hook.remove()
    assert len(captured) == 2 and run["steps"] == 2
    ac = _diffusers(DDPMScheduler, sc).alphas_cumprod
    empty = (cache.states[:1], cache.mask[:1])
    for step, (weights, grads) in enumerate(captured):
        g = step_generator(0, step)
        index, eps = torch.randint(0, cfg.solver_steps, (B,), generator=g), torch.randn((B, 1, 8, 8), generator=g)
        idx = batch_indices(step, len(ds), B, 0)
        x0 = ds.images[idx].float() / 127.5 - 1
        states, mask, _ = cache[cache.rows(ds.captions)[idx]]
        student = copy.deepcopy(w0)
        for p, w in zip(student.parameters(), weights):
            p.data.copy_(w)
        # the target network: the student itself before any update; after one, the EMA with decay
        # min(mu, (1 + 1) / (10 + 1)) (the EMA's warm-up) of the initial and the updated weights
        target = copy.deepcopy(w0)
        d = min(cfg.target_decay, 2 / 11)
        for p, p0, w in zip(target.parameters(), w0.parameters(), weights):
            p.data.copy_(p0.data if step == 0 else d * p0.data + (1 - d) * w)
        loss, ref = _reference_grads(cfg, student, target, teacher0, x0, states, mask, empty, index, eps, ac)
        assert run["history"][step]["loss"] == pytest.approx(loss, rel=1e-4), step
        scale = max(float(b.abs().max()) for b in ref)
        for a, b in zip(grads, ref):
            torch.testing.assert_close(a, b, rtol=2e-3, atol=1e-4 * scale)
    assert (tmp_path / "student" / "diffusion_pytorch_model.safetensors").is_file()


def test_two_steps_and_an_exact_resume(tmp_path, smoke_params, tiny_data):
    ds, cache = tiny_data
    sc = smoke_params.teacher.schedule
    cfg, tc = smoke_params.consistency, _train_cfg(smoke_params, steps=3)

    def run(folder, max_steps=None):
        teacher = Teacher(_unet(smoke_params, cache), NoiseSchedule(sc), PixelSpace(), "trained")
        return CD.train_consistency(cfg, tc, teacher, 0, ds, cache, folder / "student", folder / "ckpt",
                                    max_steps=max_steps, progress=False)

    straight = run(tmp_path / "a")
    assert run(tmp_path / "b", max_steps=1)["steps"] == 1
    resumed = run(tmp_path / "b")
    assert resumed["resumed_from_step"] == 1 and resumed["steps"] == 3
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in straight["history"]]
    for (k, a), b in zip(straight["student"].state_dict().items(), resumed["student"].state_dict().values()):
        assert torch.equal(a, b), k
