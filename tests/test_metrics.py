"""Metrics against closed forms, reference libraries and hand computations."""
import math

import numpy as np
import pytest
import torch

from addlib import metrics as M


def _gauss(n, mean, std, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, len(mean), generator=g, dtype=torch.float64) * torch.tensor(std) + torch.tensor(mean)


def test_fid_of_a_set_against_itself_is_zero():
    x = _gauss(2000, [0.0] * 4, [1.0] * 4, 0)
    assert abs(M.fid_from_features(x, x)) < 1e-6


def test_fid_two_gaussians_matches_closed_form():
    """N(m1, diag(s1^2)) vs N(m2, diag(s2^2)): ||m1 - m2||^2 + sum (s1 - s2)^2."""
    m1, s1 = [0.0, 1.0, -1.0], [1.0, 2.0, 0.5]
    m2, s2 = [1.0, 1.0, 0.0], [1.5, 1.0, 0.5]
    exact = sum((a - b) ** 2 for a, b in zip(m1, m2)) + sum((a - b) ** 2 for a, b in zip(s1, s2))
    from cleanfid.fid import frechet_distance
    assert frechet_distance(np.array(m1), np.diag(np.square(s1)), np.array(m2), np.diag(np.square(s2))) == \
        pytest.approx(exact, abs=1e-6)
    est = M.fid_from_features(_gauss(200_000, m1, s1, 1), _gauss(200_000, m2, s2, 2))
    assert est == pytest.approx(exact, rel=0.02)


def test_torchmetrics_and_cleanfid_agree_on_the_same_features():
    proj = torch.randn(16, 5, generator=torch.Generator().manual_seed(0))
    fn = lambda im: im.flatten(1) @ proj  # noqa: E731  (a fixed "feature network" on 1x4x4 images)
    g = torch.Generator().manual_seed(3)
    real = torch.rand(600, 1, 4, 4, generator=g)
    fake = (torch.rand(600, 1, 4, 4, generator=g) * 0.8 + 0.1) ** 2
    via_tm = M.fid_torchmetrics(fn, 5, real, fake, batch_size=128)
    via_cf = M.fid_from_features(M.extract(fn, real), M.extract(fn, fake))
    assert via_tm == pytest.approx(via_cf, rel=1e-4)
    assert via_tm > 0.01


def test_precision_recall_detects_mode_collapse():
    real = torch.cat([_gauss(300, [c * 10.0, 0.0], [1.0, 1.0], c) for c in range(4)])
    same = torch.cat([_gauss(300, [c * 10.0, 0.0], [1.0, 1.0], 10 + c) for c in range(4)])
    p, r = M.precision_recall(real, same)
    assert p > 0.9 and r > 0.9
    collapsed = _gauss(1200, [0.0, 0.0], [0.05, 0.05], 20)  # every fake on one mode
    p, r = M.precision_recall(real, collapsed)
    assert p > 0.95 and r < 0.3
    far = _gauss(1200, [100.0, 100.0], [1.0, 1.0], 30)
    assert M.precision_recall(real, far) == (0.0, 0.0)


def test_precision_recall_by_hand():
    real = torch.tensor([[0.0], [1.0], [3.0]])
    fake = torch.tensor([[0.5], [10.0]])
    # k = 1: real radii = [1, 1, 2]; fake radii = [9.5, 9.5]
    # precision: 0.5 is within 1 of 0 -> in; 10 is 7 from 3 (> 2) -> out: 1/2
    # recall: every real is within 9.5 of 0.5 -> 3/3
    assert M.precision_recall(real, fake, k=1) == (0.5, 1.0)


def test_clip_score_by_hand():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    # cosines: 1, -1 -> clipped to 0, 1/sqrt(2)
    assert M.clip_score(img, txt) == pytest.approx(100 * (1 + 0 + 1 / math.sqrt(2)) / 3)


def test_split_halves_fid_is_small_for_one_distribution():
    x = _gauss(4000, [0.0] * 3, [1.0] * 3, 5)
    assert 0 <= M.split_halves_fid(x) < 0.02


def test_realism_score_by_hand():
    # reals on a line at 0, 1, 3, 7; k = 1: radii 1, 1, 2, 4; median 1 keeps the reals at 0 and 1 (radius 1)
    real = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    fake = torch.tensor([[0.5], [3.0], [-1.0]])
    r = M.realism_score(real, fake, k=1)
    assert r.tolist() == pytest.approx([2.0, 0.5, 1.0])  # max(1/0.5, 1/0.5); max(1/3, 1/2); max(1/1, 1/2)
    # the real at 7 (largest radius) is dropped: a fake next to it is not called real
    assert M.realism_score(real, torch.tensor([[6.5]]), k=1).item() == pytest.approx(1 / 5.5)
