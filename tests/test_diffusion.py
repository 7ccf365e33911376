"""The zero-terminal-SNR schedule and the v-prediction algebra, against closed forms and diffusers."""
import pytest
import torch

from addlib import config
from addlib.config.teacher import ScheduleConfig
from addlib.diffusion import NoiseSchedule, base_betas, rescale_zero_terminal_snr


def _sched(kind="linear"):
    return config.from_dict(ScheduleConfig, dict(num_train_timesteps=1000, beta_schedule=kind,
                                                        beta_start=1e-4, beta_end=0.02,
                      prediction_type="v_prediction", rescale_zero_terminal_snr=True), "schedule")


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_terminal_snr_is_exactly_zero(kind):
    s = NoiseSchedule(_sched(kind))
    t = torch.tensor([999])
    assert s.snr(t).item() == 0.0
    x = torch.randn(2, 1, 4, 4)
    assert torch.equal(s.alpha(t, x), torch.zeros(1, 1, 1, 1))
    assert torch.equal(s.sigma(t, x), torch.ones(1, 1, 1, 1))
    # x_T is pure noise: no trace of x0
    eps = torch.randn_like(x)
    assert torch.equal(s.add_noise(x, eps, t.expand(2)), eps)


def test_rescale_keeps_first_alpha_and_matches_diffusers():
    from diffusers import DDPMScheduler

    cfg = _sched()
    betas = base_betas(cfg)
    before = torch.cumprod(1 - betas, 0)
    after = NoiseSchedule(cfg).alphas_cumprod
    assert after[0].item() == pytest.approx(before[0].item(), rel=1e-12)
    assert torch.all(after[1:] < after[:-1])  # still monotone
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                        rescale_betas_zero_snr=True).alphas_cumprod.double()
    torch.testing.assert_close(after, ref, atol=2e-6, rtol=0)
    # Lin et al. Algorithm 1: sqrt(alpha_bar) is an affine map of the original sqrt(alpha_bar)
    a, b = before.sqrt(), rescale_zero_terminal_snr(betas).neg().add(1).cumprod(0).sqrt()
    slope = (b[0] - b[-1]) / (a[0] - a[-1])
    torch.testing.assert_close(b, slope * (a - a[-1]), atol=1e-10, rtol=0)


def test_v_conversions_are_exact_on_random_tensors():
    s = NoiseSchedule(_sched())
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(64, 3, 5, 5, generator=g), torch.randn(64, 3, 5, 5, generator=g)
    t = torch.randint(0, 1000, (64,), generator=g)
    t[0], t[1] = 0, 999
    # closed form with a, s taken straight from alpha_bar (not from the code under test)
    ab = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    a, sg = ab.sqrt(), (1 - ab).sqrt()
    x_t = a * x0.double() + sg * eps.double()
    v = a * eps.double() - sg * x0.double()
    torch.testing.assert_close(s.add_noise(x0, eps, t), x_t.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(s.v_target(x0, eps, t), v.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(s.x0_from_v(x_t.float(), v.float(), t), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(s.eps_from_v(x_t.float(), v.float(), t), eps, atol=1e-5, rtol=0)
    assert torch.allclose(a ** 2 + sg ** 2, torch.ones_like(a))


def test_diffusers_scheduler_uses_the_same_schedule():
    s = NoiseSchedule(_sched())
    for name in ["ddim", "dpmsolver++", "euler"]:
        sch = s.diffusers_scheduler(name)
        assert sch.config.prediction_type == "v_prediction"
        torch.testing.assert_close(sch.alphas_cumprod[:-1].double(), s.alphas_cumprod[:-1], atol=2e-6, rtol=0)
        sch.set_timesteps(4)
        assert [int(t) for t in sch.timesteps] == [999, 749, 499, 249]  # trailing: the first step is pure noise


def test_epsilon_parameterisation_on_the_original_schedule():
    """SD 1.5-class teachers: epsilon-prediction on the unrescaled scaled-linear schedule, against the
    closed form and diffusers' own schedule."""
    from diffusers import DDPMScheduler

    cfg = config.from_dict(ScheduleConfig, dict(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                                       beta_start=0.00085, beta_end=0.012,
                                                       prediction_type="epsilon",
                                                       rescale_zero_terminal_snr=False), "schedule")
    s = NoiseSchedule(cfg)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                        beta_end=0.012).alphas_cumprod.double()
    torch.testing.assert_close(s.alphas_cumprod, ref, atol=1e-6, rtol=0)
    assert s.alphas_cumprod[-1] > 0  # not pure noise: x0 stays recoverable from epsilon
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(8, 4, 3, 3, generator=g), torch.randn(8, 4, 3, 3, generator=g)
    t = torch.tensor([0, 1, 100, 500, 800, 900, 990, 999])
    x_t = s.add_noise(x0, eps, t)
    torch.testing.assert_close(s.target(x0, eps, t), eps)
    torch.testing.assert_close(s.eps_from_output(x_t, eps, t), eps)
    torch.testing.assert_close(s.x0_from_output(x_t, eps, t), x0, atol=2e-4, rtol=0)
    assert s.diffusers_scheduler("ddim").config.prediction_type == "epsilon"


def test_epsilon_at_zero_terminal_snr_is_a_config_error():
    with pytest.raises(config.ConfigError, match="epsilon-prediction"):
        config.from_dict(ScheduleConfig, dict(num_train_timesteps=1000, beta_schedule="linear",
                                                     beta_start=1e-4, beta_end=0.02, prediction_type="epsilon",
                                                     rescale_zero_terminal_snr=True), "schedule")
