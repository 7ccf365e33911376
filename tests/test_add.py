"""ADD training on tiny random models: two steps plus a resume equal an uninterrupted run; every loss
variant of the ablations runs; the saved student samples in one call."""
import copy
import dataclasses
import json
import shutil
import types

import pytest
import timm
import torch
from safetensors.torch import load_file

from addlib.diffusion import NoiseSchedule
from addlib.discriminator import Discriminator, FeatureNetwork
from addlib.latent import PixelSpace, Teacher
from addlib.models import build_unet
from addlib.objective import teacher_x0
from addlib.distillation import train_add


def _setup(smoke_params, tiny_data, **add_overrides):
    ds, cache = tiny_data
    torch.manual_seed(0)
    teacher = build_unet(smoke_params.teacher.unet, 8, 1, cache.states.shape[-1])
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=8, patch_size=2, in_chans=1,
                            embed_dim=16, depth=2, num_heads=2, num_classes=0)
    disc = Discriminator(FeatureNetwork(vit, taps=[0, 1]), cache.pooled.shape[-1])
    add = smoke_params.add
    train = dataclasses.replace(add.train, steps=3, batch_size=4, checkpoint_every=10, log_every=1, sample_every=0)
    add = dataclasses.replace(add, train=train, **add_overrides)
    return add, ds, cache, teacher, disc


def _run(add, smoke_params, ds, cache, teacher, disc, folder, **kw):
    bundle = Teacher(teacher, NoiseSchedule(smoke_params.teacher.schedule), PixelSpace(), "trained")
    return train_add(add, bundle, 0, ds, cache, disc, 0, folder / "student",
                     folder / "ckpt", live_dir=folder / "live", progress=False, **kw)


def test_two_steps_then_resume_equals_three(tmp_path, smoke_params, tiny_data):
    # with D's augmentation on (the default has none): its random draws must resume too
    augmented = dataclasses.replace(smoke_params.add.discriminator, augment=["color", "translation", "cutout"])
    add, ds, cache, teacher, disc = _setup(smoke_params, tiny_data, discriminator=augmented)
    full = _run(add, smoke_params, ds, cache, teacher, disc, tmp_path / "full")
    # fresh objects for the interrupted run, as a new process would build them
    add, ds, cache, teacher, disc = _setup(smoke_params, tiny_data, discriminator=augmented)
    _run(add, smoke_params, ds, cache, teacher, disc, tmp_path / "resumed", max_steps=2)
    add, ds, cache, teacher, disc = _setup(smoke_params, tiny_data, discriminator=augmented)
    f_before = {k: v.clone() for k, v in disc.F.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    resumed = _run(add, smoke_params, ds, cache, teacher, disc, tmp_path / "resumed")
    assert resumed["resumed_from_step"] == 2
    keys = ["loss_G", "loss_distill", "loss_D", "r1", "logits_real", "logits_fake"]
    for a, b in zip(full["history"], resumed["history"]):
        assert [a[k] for k in keys] == [b[k] for k in keys]
    a, b = (next((tmp_path / run / "ckpt").glob("*/checkpoint-3")) for run in ("full", "resumed"))
    for name in ["student", "disc_heads", "ema"]:
        sa, sb = load_file(str(a / f"{name}.safetensors")), load_file(str(b / f"{name}.safetensors"))
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
    # the student moved away from the teacher; the frozen F and the frozen teacher did not move
    st = load_file(str(a / "student.safetensors"))
    assert any(not torch.equal(st[k], v) for k, v in teacher.state_dict().items())
    assert all(torch.equal(v, f_before[k]) for k, v in disc.F.state_dict().items())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())


@pytest.mark.parametrize("overrides,logged,absent", [
    (dict(weighting="sds"), {"loss_G", "loss_distill", "loss_D"}, set()),
    (dict(weighting="nfsd"), {"loss_distill"}, set()),
    (dict(distance="l1"), {"loss_distill"}, set()),
    (dict(distance="pseudo_huber"), {"loss_distill"}, set()),
    (dict(distance="perceptual"), {"loss_distill"}, set()),
    (dict(teacher_steps=2), {"loss_distill"}, set()),
    (dict(lambda_adv=0.0), {"loss_distill"}, {"loss_G", "loss_D"}),
    (dict(lambda_distill=0.0), {"loss_G", "loss_D"}, {"loss_distill"}),
    (dict(student_init="random"), {"loss_G", "loss_distill"}, set()),
    (dict(student_input="student", lambda_ode=1.0), {"loss_G", "loss_distill", "loss_ode"}, set()),
    (dict(lambda_ode=0.0), {"loss_G", "loss_distill"}, {"loss_ode"}),
])
def test_ablation_variants_run(tmp_path, smoke_params, tiny_data, overrides, logged, absent):
    add, ds, cache, teacher, disc = _setup(smoke_params, tiny_data, **overrides)
    add = dataclasses.replace(add, train=dataclasses.replace(add.train, steps=1))
    row = _run(add, smoke_params, ds, cache, teacher, disc, tmp_path)["history"][-1]
    assert logged <= row.keys() and not (absent & row.keys())
    assert all(torch.isfinite(torch.tensor(v)) for k, v in row.items())


def test_conditioning_off_runs(tmp_path, smoke_params, tiny_data):
    add, ds, cache, teacher, _ = _setup(smoke_params, tiny_data)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=8, patch_size=2, in_chans=1,
                            embed_dim=16, depth=2, num_heads=2, num_classes=0)
    disc = Discriminator(FeatureNetwork(vit, taps=[1]), 16, use_c_text=False, use_c_img=False)
    add = dataclasses.replace(add, train=dataclasses.replace(add.train, steps=1))
    assert "loss_D" in _run(add, smoke_params, ds, cache, teacher, disc, tmp_path)["history"][-1]


def test_backward_simulation_draws_after_the_papers_draws(smoke_params):
    """add.student_input: student draws its chain's noises after every draw of the paper's step, so the paper's
    input (data) draws exactly what it drew before the option existed; one fresh noise per chain slot."""
    from addlib.objective import draw_step
    from addlib.training import step_generator

    draws = {mode: draw_step(dataclasses.replace(smoke_params.add, student_input=mode), step_generator(0, 3),
                             step_generator(0, 3, stream=1), 8, (1, 8, 8), (1, 8, 8), 1000)
             for mode in ("data", "student")}
    a, b = draws["data"], draws["student"]
    for f in ("s", "eps", "t", "eps_prime"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert a.eps_chain is None and b.eps_chain.shape == (8, len(smoke_params.add.student_timesteps) - 1, 1, 8, 8)
    others = [b.eps, b.eps_prime] + [b.eps_chain[:, j] for j in range(b.eps_chain.shape[1])]
    assert all(not torch.allclose(x, y) for i, x in enumerate(others) for y in others[i + 1:])
    assert torch.equal(b.rows(slice(2, 5)).eps_chain, b.eps_chain[2:5])


def test_ode_regression_is_zero_without_noisy_inputs(tmp_path, smoke_params, tiny_data):
    """lambda_ode > 0 on a batch of pure-noise inputs only (s = 999), with the paper's c_img everywhere: no row
    needs a teacher solve, none is made, and the regression contributes exactly 0."""
    paper = dataclasses.replace(smoke_params.add.discriminator, c_img_pure_noise="real", c_img_noisy="real")
    add, ds, cache, teacher, disc = _setup(smoke_params, tiny_data, student_timesteps=[999], lambda_ode=1.0,
                                           discriminator=paper)
    add = dataclasses.replace(add, train=dataclasses.replace(add.train, steps=1))
    row = _run(add, smoke_params, ds, cache, teacher, disc, tmp_path)["history"][-1]
    assert row["loss_ode"] == 0.0 and row["loss_distill"] > 0


@pytest.mark.parametrize("at_most_s", [True, False])
def test_teacher_timestep_of_the_distillation_target(tmp_path, smoke_params, tiny_data, at_most_s):
    """add.teacher_t_at_most_s: a student input at s = 249 is re-noised for the teacher at t in [20, 249];
    without it t ~ U[20, 980] (the teacher sees t > 249: 48 draws all <= 249 has probability ~1e-30)."""
    add, ds, cache, teacher, disc = _setup(smoke_params, tiny_data, student_timesteps=[249],
                                           teacher_t_at_most_s=at_most_s)
    add = dataclasses.replace(add, train=dataclasses.replace(add.train, batch_size=16))
    seen = []
    teacher.register_forward_pre_hook(lambda module, args: seen.append(args[1].flatten()))
    _run(add, smoke_params, ds, cache, teacher, disc, tmp_path)
    t = torch.cat(seen)  # the student is a copy of the teacher (hook included): its calls are at s = 249
    assert len(t) >= 3 * 16 and int(t.min()) >= add.teacher_t_range[0] == 20
    if at_most_s:
        assert int(t.max()) <= 249 and len(set(t.tolist())) > 10  # spread over [20, 249], not pinned
    else:
        assert int(t.max()) > 249


def test_teacher_x0_one_step_is_the_v_conversion(smoke_params, tiny_data):
    from addlib.diffusion import NoiseSchedule
    _, _, cache, teacher, _ = _setup(smoke_params, tiny_data)
    s = NoiseSchedule(smoke_params.teacher.schedule)
    x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([300, 700])
    cond = (cache.states[1:3], cache.mask[1:3])
    with torch.no_grad():
        v = teacher(x_t, t, encoder_hidden_states=cond[0], encoder_attention_mask=cond[1]).sample
        torch.testing.assert_close(teacher_x0(teacher, s, x_t, t, cond, cond, 1.0, 1), s.x0_from_v(x_t, v, t))


def test_saved_student_samples_in_one_call(tmp_path, smoke_params, tiny_data):
    from addlib import config
    from addlib.export import ADDSampler

    add, ds, cache, teacher, disc = _setup(smoke_params, tiny_data)
    add = dataclasses.replace(add, train=dataclasses.replace(add.train, steps=1))
    _run(add, smoke_params, ds, cache, teacher, disc, tmp_path)
    # a real text encoder is needed for arbitrary prompts: the bundled one gives 384-d states, so build a
    # matching student to check the loading path end to end
    student = build_unet(smoke_params.teacher.unet, 8, 1, 384)
    student.save_pretrained(tmp_path / "s384")
    resolved = {"teacher": config.to_dict(smoke_params.teacher), "text_encoder": config.to_dict(smoke_params.text_encoder),
                "add": config.to_dict(add)}
    (tmp_path / "s384" / "addlib_config.json").write_text(json.dumps({"config": resolved}))
    sampler = ADDSampler.from_pretrained(tmp_path / "s384")
    x1 = sampler(["the number 3", "seven"], steps=1, seed=0)
    assert x1.shape == (2, 1, 8, 8) and x1.abs().max() <= 1
    assert torch.equal(x1, sampler(["the number 3", "seven"], steps=1, seed=0))
    assert sampler.timesteps(4) == add.student_timesteps and sampler.timesteps(2) == [999, 499]
    assert (tmp_path / "student" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.parametrize("pairing", ["real", "teacher_ode"])
def test_pure_noise_image_conditioning_variants_run(tmp_path, smoke_params, tiny_data, pairing):
    add, ds, cache, teacher, disc = _setup(smoke_params, tiny_data)
    add = dataclasses.replace(add, student_timesteps=[999],  # every sample starts from pure noise
                              discriminator=dataclasses.replace(add.discriminator, c_img_pure_noise=pairing),
                              train=dataclasses.replace(add.train, steps=1))
    row = _run(add, smoke_params, ds, cache, teacher, disc, tmp_path)["history"][-1]
    assert {"loss_G", "loss_D", "logits_fake"} <= row.keys()


def test_nfsd_target_by_hand():
    """Katzir et al.: delta_D = eps(empty) for t < 200, eps(empty) - eps(negative) otherwise; delta_C =
    eps(c) - eps(empty); x_psi = x_hat - sigma/alpha (delta_D + s delta_C). An epsilon 'teacher' that returns
    a constant per prompt makes every term a number."""
    from addlib import config
    from addlib.config.teacher import ScheduleConfig
    from addlib.objective import nfsd_target

    sch = NoiseSchedule(config.from_dict(ScheduleConfig, dict(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, prediction_type="epsilon",
        rescale_zero_terminal_snr=False), "s"))

    class PerPrompt(torch.nn.Module):  # eps = the first entry of the prompt's states
        def forward(self, x, t, encoder_hidden_states, encoder_attention_mask):
            return type("Out", (), {"sample": torch.ones_like(x) * encoder_hidden_states[:, 0, 0].view(-1, 1, 1, 1)})

    states = lambda v: (torch.full((2, 1, 1), v), torch.ones(2, 1))  # noqa: E731
    e_c, e_u, e_n, s = 3.0, 1.0, -0.5, 2.0
    x_hat, x_t, t = torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2), torch.tensor([100, 600])
    out = nfsd_target(PerPrompt(), sch, x_hat, x_t, t, states(e_c), states(e_u), states(e_n), s)
    ratio = (sch._sigma[t] / sch._alpha[t]).tolist()
    expect = [-ratio[0] * (e_u + s * (e_c - e_u)), -ratio[1] * ((e_u - e_n) + s * (e_c - e_u))]
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor(expect))
    # with the empty prompt as the negative one, delta_D vanishes at t >= 200: pure guidance, not NFSD
    degenerate = nfsd_target(PerPrompt(), sch, x_hat, x_t, t, states(e_c), states(e_u), states(e_u), s)
    torch.testing.assert_close(degenerate[1, 0, 0, 0], torch.tensor(-ratio[1] * s * (e_c - e_u)))


@pytest.mark.parametrize("change", ["teacher weights", "F's weights", "one pixel", "an add value"])
def test_an_add_checkpoint_on_other_inputs_is_not_resumed(tmp_path, smoke_params, tiny_data, change):
    """After a new teacher, feature network, data or `add` value outside add.train, `add` starts afresh instead of
    resuming an old student (test_two_steps_then_resume_equals_three shows that the same inputs do resume)."""
    add, ds, cache, teacher, disc = _setup(smoke_params, tiny_data)
    assert _run(add, smoke_params, ds, cache, teacher, disc, tmp_path, max_steps=2)["steps"] == 2
    add, ds, cache, teacher, disc = _setup(smoke_params, tiny_data)
    with torch.no_grad():
        if change == "teacher weights":
            next(teacher.parameters()).add_(1e-3)
        elif change == "F's weights":
            next(disc.F.parameters()).add_(1e-3)
        elif change == "one pixel":
            ds.images[0, 0, 0, 0] ^= 1
        else:
            add = dataclasses.replace(add, lambda_distill=add.lambda_distill + 1.0)
    assert _run(add, smoke_params, ds, cache, teacher, disc, tmp_path)["resumed_from_step"] == 0


def test_a_resumed_run_keeps_the_progress_grids_of_the_steps_before_the_kill(tmp_path, smoke_params, tiny_data):
    """DVC and the runner remove reports/add/progress before a rerun; the grids live on in the run's checkpoint
    folder, so a resumed run ends with every grid an uninterrupted run writes."""
    add, ds, cache, teacher, disc = _setup(smoke_params, tiny_data, sample_prompts=["a", "c"], sample_per_prompt=1)
    add = dataclasses.replace(add, train=dataclasses.replace(add.train, sample_every=1))
    grids = tmp_path / "progress"
    _run(add, smoke_params, ds, cache, teacher, disc, tmp_path, max_steps=2, grid_dir=grids)
    assert sorted(p.name for p in grids.glob("*.png")) == ["step_000001.png", "step_000002.png"]
    shutil.rmtree(grids)  # what a rerun of the stage does to its outputs
    add, ds, cache, teacher, disc = _setup(smoke_params, tiny_data, sample_prompts=["a", "c"], sample_per_prompt=1)
    add = dataclasses.replace(add, train=dataclasses.replace(add.train, sample_every=1))
    resumed = _run(add, smoke_params, ds, cache, teacher, disc, tmp_path, grid_dir=grids)
    assert resumed["resumed_from_step"] == 2
    assert sorted(p.name for p in grids.glob("*.png")) == ["step_000001.png", "step_000002.png", "step_000003.png"]


@pytest.mark.parametrize("solver", ["ddim", "dpmsolver++"])
def test_solves_of_different_lengths_in_one_loop_equal_each_length_solved_on_its_own(smoke_params, tiny_data, solver):
    # teacher_x0 with a step count per row (one teacher call per step index, issue 37's speed-up) against the
    # slow path it replaced: every group of equal length solved by its own loop
    ds, cache = tiny_data
    torch.manual_seed(0)
    teacher = build_unet(smoke_params.teacher.unet, 8, 1, cache.states.shape[-1]).eval()
    sched = NoiseSchedule(smoke_params.teacher.schedule)
    g = torch.Generator().manual_seed(0)
    n = 12
    x_t = torch.randn(n, 1, 8, 8, generator=g)
    t = torch.tensor([999, 749, 499, 249, 999, 30, 749, 499, 1, 249, 999, 600])
    steps = (8 * (t + 1) + 999) // 1000   # 1 to 8 steps (the c_img solve's rule)
    states, mask, _ = cache[torch.arange(n) % len(cache.captions)]
    empty = tuple(a.expand(n, *a.shape[1:]) for a in cache[torch.tensor([0])][:2])
    for w in (1.0, 2.0):
        with torch.no_grad():
            fast = teacher_x0(teacher, sched, x_t, t, (states, mask), empty, w, steps, solver)
            slow = torch.zeros_like(x_t)
            for k in steps.unique().tolist():
                m = steps == k
                slow[m] = teacher_x0(teacher, sched, x_t[m], t[m], (states[m], mask[m]),
                                     tuple(a[m] for a in empty), w, k, solver)
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
        assert steps.unique().tolist() == [1, 2, 4, 5, 6, 8]


class _GaussianData(torch.nn.Module):
    """The exact v-prediction denoiser of data x0 ~ N(0, s^2) per pixel: E[x0 | x_t] = alpha s^2 x_t / (alpha^2 s^2
    + sigma^2). Its probability-flow ODE is solved in closed form: x_t = sqrt(alpha_t^2 s^2 + sigma_t^2) z."""

    def __init__(self, schedule, s: float):
        super().__init__()
        self.schedule, self.s = schedule, s

    def x0(self, x, t):
        a, sg = self.schedule.alpha(t, x), self.schedule.sigma(t, x)
        return a * self.s ** 2 * x / (a ** 2 * self.s ** 2 + sg ** 2)

    def forward(self, x, t, encoder_hidden_states=None, encoder_attention_mask=None):
        a, sg = self.schedule.alpha(t, x), self.schedule.sigma(t, x)
        return types.SimpleNamespace(sample=(a * x - self.x0(x, t)) / sg)  # x0 = alpha x - sigma v


def test_dpm_solver_solve_is_diffusers_dpm_solver_and_beats_ddim(smoke_params):
    # The c_img / ODE solve with DPM-Solver++(2M) (issue 37: fewer teacher calls for the same accuracy), on data
    # whose exact denoiser and ODE solution are known (x0 ~ N(0, 0.25) per pixel)
    sched = NoiseSchedule(smoke_params.teacher.schedule)   # zero terminal SNR, v-prediction
    model = _GaussianData(sched, 0.5).double()
    z = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cond = (torch.zeros(64, 1, 1, dtype=torch.float64), torch.ones(64, 1, dtype=torch.float64))

    def exact_x(t0):
        t = torch.full((64,), t0)
        return z * (sched.alpha(t, z) ** 2 * 0.25 + sched.sigma(t, z) ** 2).sqrt()

    def solve(solver, n, t0=999):
        return teacher_x0(model, sched, exact_x(t0), torch.full((64,), t0), cond, cond, 1.0, n, solver)

    # 1. The same steps as diffusers' DPMSolverMultistepScheduler (2M, data prediction, first order at the end)
    # on the same timesteps; from pure noise diffusers keeps alpha_bar_T = 2^-24 instead of 0
    for n, t0, tol in [(3, 600, 1e-5), (6, 600, 1e-5), (8, 999, 1e-3)]:
        ts = [int(torch.tensor(t0 * (n - j) / n).round()) for j in range(n)]
        ref = sched.diffusers_scheduler("dpmsolver++")
        ref.set_timesteps(timesteps=ts)
        x = exact_x(t0)
        for tt in ref.timesteps:
            x = ref.step(model(x, tt.expand(64)).sample, tt, x).prev_sample
        torch.testing.assert_close(solve("dpmsolver++", n, t0), x, rtol=0, atol=tol * float(x.abs().max()))

    # 2. From pure noise its first two steps are DDIM's (no previous step, then one infinite in log-SNR)
    torch.testing.assert_close(solve("dpmsolver++", 2), solve("ddim", 2), rtol=1e-12, atol=1e-12)

    # 3. Closer to the exact solution than DDIM with as many steps, and at 8 steps than DDIM at 16: the solve's
    # last x0 estimate, at the last timestep t_n it visits, against E[x0 | x_{t_n}] on the exact trajectory
    def error(solver, n, t0=999):
        t_n = torch.full((64,), int(torch.tensor(t0 / n).round()))
        exact = model.x0(exact_x(int(t_n[0])), t_n)
        return float((solve(solver, n, t0) - exact).abs().max() / exact.abs().max())

    ddim = {n: error("ddim", n) for n in (4, 8, 16)}
    dpm = {n: error("dpmsolver++", n) for n in (4, 8, 16)}
    assert all(dpm[n] < 0.8 * ddim[n] for n in dpm) and dpm[8] < ddim[16], (ddim, dpm)
    assert error("dpmsolver++", 3, t0=600) < 0.8 * error("ddim", 3, t0=600)


def test_the_students_solves_use_the_configured_solver(smoke_params, tiny_data):
    # StudentLoss's teacher solve (c_img of the fakes, the ODE term) takes add.discriminator.ode_solver
    from addlib.objective import StudentLoss

    solves = {}
    for solver in ("ddim", "dpmsolver++"):
        dc = dataclasses.replace(smoke_params.add.discriminator, ode_solver=solver, ode_steps=8)
        add, ds, cache, teacher, disc = _setup(smoke_params, tiny_data, discriminator=dc)
        sched = NoiseSchedule(smoke_params.teacher.schedule)
        empty = tuple(a for a in cache[torch.tensor([0])][:2])
        loss = StudentLoss(add, teacher.eval(), sched, sched, PixelSpace(), disc, empty, empty)
        g = torch.Generator().manual_seed(0)
        z_x0, z_s, eps = (torch.randn(4, 1, 8, 8, generator=g) for _ in range(3))
        s, rows = torch.tensor([999, 999, 749, 499]), torch.ones(4, dtype=torch.bool)
        states, mask, _ = cache[torch.arange(4)]
        solves[solver] = loss.teacher_solve(z_x0, z_s, eps, s, rows, states, mask)
        z_in = torch.cat([z_s[:2], sched.add_noise(z_x0[2:], eps[2:], s[2:])])
        with torch.no_grad():
            direct = teacher_x0(teacher, sched, z_in, s, (states, mask), tuple(a.expand(4, *a.shape[1:]) for a in empty),
                                dc.ode_guidance, torch.tensor([8, 8, 6, 4]), solver)
        torch.testing.assert_close(solves[solver], direct)
    assert not torch.allclose(solves["ddim"], solves["dpmsolver++"])


@pytest.mark.parametrize("augment", [[], ["color", "translation", "cutout"]])
def test_d_step_reuses_the_students_f_taps_only_where_it_would_compute_the_same(smoke_params, tiny_data, augment):
    # F runs once on x0 and once on x_hat per step (issue 37): D's loss from the shared taps must equal D's loss
    # from taps computed afresh, and with augmentation D must compute its own (the shared ones are unaugmented)
    from addlib.data import to_float
    from addlib.objective import DiscriminatorLoss, StudentLoss, draw_step

    dc = dataclasses.replace(smoke_params.add.discriminator, augment=augment)
    add, ds, cache, teacher, disc = _setup(smoke_params, tiny_data, discriminator=dc)
    sched = NoiseSchedule(smoke_params.teacher.schedule)
    empty = tuple(a for a in cache[torch.tensor([0])][:2])
    student_loss = StudentLoss(add, teacher.eval(), sched, sched, PixelSpace(), disc, empty, empty)
    d_loss = DiscriminatorLoss(disc, 0.5)
    n = 8
    x0 = to_float(ds.images[:n])
    text = cache[cache.rows(ds.captions[:n])]
    draws = draw_step(add, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1), n, (1, 8, 8),
                      (1, 8, 8), sched.T)
    out = student_loss(copy.deepcopy(teacher).train(), x0, text, draws)
    assert (out.f_real is None) == bool(augment) and (out.f_fake is None) == bool(augment)
    args = (x0, out.x_hat.detach(), out.c_real, out.c_fake, draws.aug_real, draws.aug_fake)
    shared, shared_parts = d_loss(*args, out.f_real, out.f_fake)
    fresh, fresh_parts = d_loss(*args)
    torch.testing.assert_close(shared, fresh)
    for k in ("logits_real", "logits_fake", "r1"):
        torch.testing.assert_close(shared_parts[k], fresh_parts[k])
