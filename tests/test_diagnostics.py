"""The refinement diagnostics: the trace is one trajectory of the ADD sampler, cut after each step, and the
one-call denoiser noises real images as the schedule says."""
import pytest
import torch

from addlib import config
from addlib.config.teacher import ScheduleConfig
from addlib.diagnostics import denoise_from_data, refinement_trace, tone
from addlib.pipeline.diagnose import main
from addlib.diffusion import NoiseSchedule
from addlib.sampling import sample_student

from tiny_models import DeltaDenoiser


def schedule():
    return NoiseSchedule(config.from_dict(ScheduleConfig, dict(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
        prediction_type="v_prediction", rescale_zero_terminal_snr=True), "s"))


class Shrink(torch.nn.Module):
    """v = 0.5 x + mean of the text states: an x-dependent output, so the trajectory matters."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, encoder_hidden_states=None, encoder_attention_mask=None):
        return type("Out", (), {"sample": 0.5 * x + encoder_hidden_states.mean((1, 2)).view(-1, 1, 1, 1)})


def test_trace_is_one_trajectory_cut_after_each_step():
    s, net, ts = schedule(), Shrink(), [999, 749, 499, 249]
    noise = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    states, mask = torch.randn(3, 2, 5), torch.ones(3, 2)
    trace = refinement_trace(net, s, states, mask, noise, ts, seed=7)
    assert len(trace) == 4
    assert torch.equal(trace[-1], sample_student(net, s, states, mask, noise, ts, seed=7))
    assert torch.equal(trace[0], sample_student(net, s, states, mask, noise, ts[:1], seed=7))
    # Step 2 by hand: predict at 999, re-noise with the re-noising stream's first draw to 749, predict again.
    from addlib.sampling import renoise_generator
    t = lambda v: torch.full((3,), v, dtype=torch.long)  # noqa: E731
    x0 = s.x0_from_output(noise, net(noise, t(999), states).sample, t(999))
    x = s.add_noise(x0, torch.randn(x0.shape, generator=renoise_generator(7)), t(749))
    torch.testing.assert_close(trace[1], s.x0_from_output(x, net(x, t(749), states).sample, t(749)).clamp(-1, 1))


def test_trace_of_an_exact_denoiser_lands_on_the_data_at_every_step():
    s = schedule()
    target = torch.linspace(-0.8, 0.8, 16).view(1, 1, 4, 4)
    trace = refinement_trace(DeltaDenoiser(s, target), s, torch.zeros(2, 2, 8), torch.ones(2, 2),
                             torch.randn(2, 1, 4, 4), [999, 499], seed=0)
    for images in trace:
        torch.testing.assert_close(images, target.expand(2, -1, -1, -1), atol=1e-4, rtol=0)


@pytest.mark.parametrize("t", [249, 749])
def test_denoise_from_data_noises_by_the_schedule(t):
    s = schedule()
    target = torch.linspace(-0.8, 0.8, 16).view(1, 1, 4, 4)
    x0 = target.expand(5, -1, -1, -1).clone()
    noisy, pred = denoise_from_data(DeltaDenoiser(s, target), s, x0, torch.zeros(5, 2, 8), torch.ones(5, 2), t,
                                    seed=3, batch_size=2)
    eps = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))  # the first batch's draw
    tt = torch.full((2,), t)
    torch.testing.assert_close(noisy[:2], s.add_noise(x0[:2], eps, tt).clamp(-1, 1))
    torch.testing.assert_close(pred, x0, atol=1e-4, rtol=0)  # the exact denoiser recovers the data


def test_cli_rejects_a_missing_student_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--student", str(tmp_path / "nowhere")])
    assert "config.json missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--samples", "1"])
    assert "at least 2" in capsys.readouterr().err


def test_tone_by_hand():
    """Two 2x2 images: [1, 1, -1, -1] (ink 1/2, solid 1/2) and [0.5, 0, -1, -1] (mid-grey 0 is not ink: 1/4)."""
    x = torch.tensor([[1.0, 1.0, -1.0, -1.0], [0.5, 0.0, -1.0, -1.0]]).view(2, 1, 2, 2)
    t = tone(x)
    assert t["ink"] == pytest.approx(3 / 8)
    assert t["solid"] == pytest.approx(2 / 8)
    assert t["ink_spread"] == pytest.approx(torch.tensor([0.5, 0.25]).std().item())
    v = x.flatten()
    assert t["contrast"] == pytest.approx(((v - v.mean()) ** 2).sum().div(7).sqrt().item())
