"""Teacher samplers: on a model whose optimal denoiser is known in closed form, every solver must land
on the data; guidance follows its formula."""
import pytest
import torch

from addlib import config
from addlib.config.teacher import ScheduleConfig
from addlib.diffusion import NoiseSchedule
from addlib.sampling import guided_v, initial_noise, sample_teacher

from tiny_models import DeltaDenoiser


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++", "euler"])
@pytest.mark.parametrize("steps", [1, 2, 8])
def test_solvers_recover_a_point_mass(sampler, steps):
    s = NoiseSchedule(config.from_dict(ScheduleConfig, dict(num_train_timesteps=1000,
                      beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                      prediction_type="v_prediction", rescale_zero_terminal_snr=True), "s"))
    target = torch.linspace(-0.8, 0.8, 16).view(1, 1, 4, 4)
    net = DeltaDenoiser(s, target)
    noise = initial_noise(3, (1, 4, 4), seed=0)
    states, mask = torch.zeros(3, 2, 8), torch.ones(3, 2)
    x = sample_teacher(net, s, states, mask, (states[:1], mask[:1]), noise, sampler, steps, 1.0)
    assert net.calls == steps  # guidance 1: one network evaluation per step
    torch.testing.assert_close(x, target.expand(3, -1, -1, -1), atol=0.03, rtol=0)


def test_guidance_formula():
    class Lin(torch.nn.Module):
        def forward(self, x, t, encoder_hidden_states, encoder_attention_mask):
            return type("Out", (), {"sample": x * 0 + encoder_hidden_states.mean((1, 2)).view(-1, 1, 1, 1)})

    x, t = torch.zeros(2, 1, 2, 2), torch.tensor([5, 5])
    cond = (torch.full((2, 3, 4), 2.0), torch.ones(2, 3))
    uncond = (torch.full((2, 3, 4), 0.5), torch.ones(2, 3))
    v = guided_v(Lin(), x, t, cond, uncond, 3.0)
    assert torch.allclose(v, torch.full_like(v, 0.5 + 3.0 * (2.0 - 0.5)))
    assert torch.allclose(guided_v(Lin(), x, t, cond, uncond, 1.0), torch.full_like(v, 2.0))


def test_initial_noise_is_fixed_by_seed():
    assert torch.equal(initial_noise(2, (1, 3, 3), 7), initial_noise(2, (1, 3, 3), 7))
    assert not torch.equal(initial_noise(2, (1, 3, 3), 7), initial_noise(2, (1, 3, 3), 8))


def _schedule():
    return NoiseSchedule(config.from_dict(ScheduleConfig, dict(num_train_timesteps=1000,
                         beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                      prediction_type="v_prediction", rescale_zero_terminal_snr=True), "s"))


def test_trailing_timesteps():
    from addlib.sampling import trailing_timesteps
    assert trailing_timesteps(1) == [999]
    assert trailing_timesteps(2) == [999, 499]
    assert trailing_timesteps(4) == [999, 749, 499, 249]


def test_student_one_step_is_one_call_at_t_max_on_pure_noise():
    from addlib.sampling import sample_student
    s = _schedule()
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    calls = []

    class Unet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, t, encoder_hidden_states=None, encoder_attention_mask=None):
            calls.append(t.tolist())
            return type("Out", (), {"sample": self.net(x) * (1 + t.float().view(-1, 1, 1, 1) / 1000)})

    noise = initial_noise(3, (1, 4, 4), seed=1)
    states, mask = torch.zeros(3, 2, 8), torch.ones(3, 2)
    x = sample_student(Unet(), s, states, mask, noise, [999])
    assert calls == [[999, 999, 999]]
    # at t = 999, alpha = 0 and sigma = 1, so x0 = -v(noise, 999)
    expected = (-(net(noise) * 1.999)).clamp(-1, 1)
    torch.testing.assert_close(x, expected.detach())


def test_student_k_steps_visit_exactly_the_timesteps():
    from addlib.sampling import sample_student
    s = _schedule()
    seen = []

    class Rec(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, encoder_hidden_states=None, encoder_attention_mask=None):
            seen.append(sorted(set(t.tolist())))
            return type("Out", (), {"sample": torch.zeros_like(x)})

    sample_student(Rec(), s, torch.zeros(5, 2, 8), torch.ones(5, 2), initial_noise(5, (1, 4, 4), 0),
                   [999, 749, 499, 249])
    assert seen == [[999], [749], [499], [249]]


class EpsDeltaDenoiser(DeltaDenoiser):
    """The exact epsilon-prediction for the same point mass: eps = (x_t - alpha_t x*) / sigma_t."""

    def forward(self, x, t, encoder_hidden_states=None, encoder_attention_mask=None):
        self.calls += 1
        t = t.long().clamp(0, self.s.T - 1)
        return type("Out", (), {"sample": (x - self.s.alpha(t, x) * self.target) / self.s.sigma(t, x)})


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++", "euler"])
def test_solvers_recover_a_point_mass_with_an_epsilon_teacher(sampler):
    """An SD 1.5-class teacher (epsilon, original scaled-linear schedule) through the same sampler code."""
    s = NoiseSchedule(config.from_dict(ScheduleConfig, dict(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        prediction_type="epsilon", rescale_zero_terminal_snr=False), "s"))
    target = torch.linspace(-0.8, 0.8, 16).view(1, 1, 4, 4)
    noise = initial_noise(3, (1, 4, 4), seed=0)
    states, mask = torch.zeros(3, 2, 8), torch.ones(3, 2)
    x = sample_teacher(EpsDeltaDenoiser(s, target), s, states, mask, (states[:1], mask[:1]), noise, sampler, 8, 1.0)
    # The solvers stop at t = 0, where this schedule keeps sigma_0 = 0.029 of noise (as SD's own pipelines do).
    torch.testing.assert_close(x, target.expand(3, -1, -1, -1), atol=0.12, rtol=0)
    assert (x - target).abs().mean() < 0.04


def test_student_renoises_with_fresh_noise_to_the_next_timestep():
    """Step 2's input is alpha_499 x0_hat + sigma_499 eps' with eps' from the re-noising stream: not x_T (a shared
    seed made it x_T for the first batch), not re-noised to the current timestep, independent of x_T."""
    from addlib.sampling import renoise_generator, sample_student
    s = _schedule()
    target = torch.linspace(-0.8, 0.8, 256).view(1, 1, 16, 16)
    net = DeltaDenoiser(s, target)  # x0 = target exactly, whatever its input
    inputs = []
    net.register_forward_pre_hook(lambda m, args: inputs.append((args[0].clone(), args[1].clone())))
    noise = initial_noise(4, (1, 16, 16), seed=3)
    sample_student(net, s, torch.zeros(4, 2, 8), torch.ones(4, 2), noise, [999, 499], seed=3)
    (x1, t1), (x2, t2) = inputs
    assert torch.equal(x1, noise) and t1.tolist() == [999] * 4 and t2.tolist() == [499] * 4
    eps_prime = torch.randn(noise.shape, generator=renoise_generator(3))
    t = torch.full((4,), 499)
    torch.testing.assert_close(x2, s.alpha(t, x2) * target + s.sigma(t, x2) * eps_prime)
    recovered = (x2 - s.alpha(t, x2) * target) / s.sigma(t, x2)
    assert not torch.allclose(recovered, noise, atol=1e-3)
    corr = torch.corrcoef(torch.stack([recovered.flatten(), noise.flatten()]))[0, 1]
    assert abs(float(corr)) < 0.1  # 1,024 pairs: independent draws give |r| ~ 0.03


@pytest.mark.parametrize("steps", [0, -1, 3, 5, 2.0, True])
def test_student_step_counts_it_was_not_trained_for_are_one_line_errors(steps):
    from addlib.sampling import student_step_counts, student_timesteps
    trained = [999, 749, 499, 249]
    assert student_step_counts(trained) == [1, 2, 4]
    assert student_timesteps(1, trained) == [999] and student_timesteps(2, trained) == [999, 499]
    assert student_timesteps(4, trained) == trained
    with pytest.raises(ValueError, match=r"samples with 1, 2, 4 steps") as e:
        student_timesteps(steps, trained)
    assert "\n" not in str(e.value)
    assert student_step_counts([999, 666, 333]) == [1, 3]  # 2 steps would need t = 499
