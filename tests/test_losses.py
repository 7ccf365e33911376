"""ADD losses against hand computations and closed forms."""
import math

import pytest
import torch

from addlib import losses as L
from addlib.pretrain import nt_xent


def test_hinge_by_hand():
    # two heads, batch of 2, 2 and 3 tokens
    h1 = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    h2 = torch.tensor([[0.0, 3.0, -2.0], [1.0, 1.0, 1.0]])
    # real: relu(1 - l) token-mean per head, summed over heads
    assert torch.allclose(L.hinge_d_real([h1, h2]), torch.tensor([(0 + 2) / 2 + (1 + 0 + 3) / 3,
                                                                  (0.5 + 1) / 2 + 0.0]))
    # fake: relu(1 + l)
    assert torch.allclose(L.hinge_d_fake([h1, h2]), torch.tensor([(3 + 0) / 2 + (1 + 4 + 0) / 3,
                                                                  (1.5 + 1) / 2 + 2.0]))
    assert torch.allclose(L.hinge_g([h1, h2]), torch.tensor([-(0.5 + 1 / 3), -(0.25 + 1.0)]))


def test_r1_on_a_linear_head_by_hand():
    """Head D(f)_n = w . f[:, :, n] + b over (B, C, N) input: d(sum_n D_n)/df[:, c, n] = w_c, so
    ||grad||^2 = N ||w||^2, and divided by the N tokens: ||w||^2, the same for every sample."""
    torch.manual_seed(0)
    B, C, N = 3, 4, 5
    w, b = torch.randn(C), torch.randn(())
    f = torch.randn(B, C, N, requires_grad=True)
    logits = torch.einsum("c,bcn->bn", w, f) + b
    r1 = L.r1_penalty([logits], [f])
    assert torch.allclose(r1, torch.full((B,), float(w.pow(2).sum())), atol=1e-5)
    # two heads add; and the penalty is differentiable w.r.t. the head weights (create_graph)
    w2 = torch.randn(C, requires_grad=True)
    g = torch.randn(B, C, 2, requires_grad=True)
    r1 = L.r1_penalty([logits, torch.einsum("c,bcn->bn", w2, g)], [f, g])
    assert torch.allclose(r1, torch.full((B,), float(w.pow(2).sum() + w2.pow(2).sum())), atol=1e-5)
    (dw2,) = torch.autograd.grad(r1.sum(), [w2])
    assert torch.allclose(dw2, B * 2 * w2.detach(), atol=1e-5)  # d/dw2 of B ||w2||^2


@pytest.mark.parametrize("copies", [2, 7])
def test_r1_does_not_change_when_every_token_is_duplicated(copies):
    """gamma must mean the same at 16 tokens and at 256 (ADD_NOTES): duplicating the tokens of a linear head
    leaves R1 unchanged (the token-mean logit's penalty would shrink by 1/copies, the token-sum's grow)."""
    torch.manual_seed(1)
    B, C, N = 2, 3, 4
    w = torch.randn(C)
    head = lambda f: torch.einsum("c,bcn->bn", w, f) + 0.3  # noqa: E731
    f = torch.randn(B, C, N, requires_grad=True)
    f_dup = f.detach().repeat(1, 1, copies).requires_grad_(True)
    r1, r1_dup = L.r1_penalty([head(f)], [f]), L.r1_penalty([head(f_dup)], [f_dup])
    torch.testing.assert_close(r1_dup, r1)
    # and a nonlinear head (tanh) on duplicated tokens: the same per-token gradients, so again unchanged
    nl = lambda f: torch.tanh(torch.einsum("c,bcn->bn", w, f))  # noqa: E731
    torch.testing.assert_close(L.r1_penalty([nl(f_dup)], [f_dup]), L.r1_penalty([nl(f)], [f]))


def test_weightings_match_formulas():
    a, s = torch.tensor([0.6, 0.8]), torch.tensor([0.8, 0.6])
    assert torch.equal(L.weight_exponential(a, s), a)
    assert torch.allclose(L.weight_sds(a, s), a / (2 * s) * s ** 2)
    assert torch.allclose(L.weight_sds(a, s, w=torch.ones(2)), a / (2 * s))


def test_distances_closed_forms():
    x = torch.tensor([[[[1.0, -2.0], [0.0, 3.0]]]])
    y = torch.zeros_like(x)
    assert L.distance_mse(x, y).item() == 14.0 / 4
    assert L.distance_l1(x, y).item() == 6.0 / 4
    c = 0.5
    assert L.distance_pseudo_huber(x, y, c).item() == pytest.approx(math.sqrt(14 / 4 + 0.25) - 0.5)
    # iCT's form on the unnormalised norm, with c_iCT = 0.00054 sqrt(dim), divided by sqrt(dim)
    d = 4
    c_ict = 0.00054 * math.sqrt(d)
    assert L.distance_pseudo_huber(x, y).item() == pytest.approx((math.sqrt(14 + c_ict ** 2) - c_ict) / math.sqrt(d))


def test_pseudo_huber_limits():
    x = torch.randn(4, 1, 3, 3)
    y = torch.randn(4, 1, 3, 3)
    small = 1e-3 * (x - y)
    c = 1.0
    # small errors: ~ mse / (2c) (the L2 regime)
    assert torch.allclose(L.distance_pseudo_huber(small, torch.zeros_like(small), c),
                          L.distance_mse(small, torch.zeros_like(small)) / (2 * c), rtol=1e-3)
    # c -> 0: the RMS error ||x - y|| / sqrt(dim) (L1-like growth)
    assert torch.allclose(L.distance_pseudo_huber(x, y, 1e-8), L.distance_mse(x, y).sqrt(), rtol=1e-5)


def test_perceptual_distance_is_zero_on_identical_and_scale_invariant():
    proj = torch.randn(5, 1)
    feats = lambda im: [proj @ im.flatten(2)]  # noqa: E731  (B, 5, N)
    x, y = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    assert torch.allclose(L.distance_perceptual(x, x, feats), torch.zeros(2))
    assert (L.distance_perceptual(x, y, feats) > 0).all()
    # channel normalisation: features scaled per token by a positive factor are at distance 0
    assert torch.allclose(L.distance_perceptual(x, 3.0 * x, feats), torch.zeros(2), atol=1e-6)
    scale = torch.rand(2, 1, 4, 4) + 0.5  # per pixel = per token here
    assert torch.allclose(L.distance_perceptual(x, scale * x, feats), torch.zeros(2), atol=1e-6)


def test_perceptual_distance_by_hand():
    """One layer, 2 channels, 2 tokens: sum over channels of the squared difference of unit vectors, averaged
    over tokens; layers add."""
    a = torch.tensor([[[3.0, 0.0], [4.0, 2.0]]])   # tokens (3, 4) and (0, 2): unit (0.6, 0.8) and (0, 1)
    b = torch.tensor([[[0.0, 1.0], [5.0, 0.0]]])   # tokens (0, 5) and (1, 0): unit (0, 1) and (1, 0)
    feats = {id(x): f for x, f in ((torch.zeros(1), a), (torch.ones(1), b))}
    xa, xb = torch.zeros(1), torch.ones(1)
    feats = {id(xa): [a, 2 * a], id(xb): [b, b]}
    d = L.distance_perceptual(xa, xb, lambda x: feats[id(x)])
    tok0 = 0.6 ** 2 + (0.8 - 1) ** 2
    tok1 = 1 + 1
    torch.testing.assert_close(d, torch.tensor([2 * (tok0 + tok1) / 2]))


def test_distillation_target_carries_no_gradient():
    x_hat = torch.randn(2, 1, 3, 3, requires_grad=True)
    target = (x_hat * 2).detach().requires_grad_(True)
    loss = L.distillation_loss(x_hat, target, torch.ones(2), L.distance_mse).sum()
    loss.backward()
    assert target.grad is None or torch.all(target.grad == 0)
    assert torch.allclose(x_hat.grad, 2 * (x_hat - target).detach() / 9)


def test_sds_weighting_gives_the_sds_gradient():
    """Appendix A: with d = squared L2 and c(t) = alpha/(2 sigma) w(t), grad_x_hat L = w(t) (eps_hat - eps),
    where the teacher target is x_psi = (x_t - sigma eps_hat) / alpha. Checked on a toy teacher; our
    distances are means over the 16 pixels, hence the factor 16."""
    torch.manual_seed(0)
    x_hat = torch.randn(4, 1, 4, 4, requires_grad=True)
    alpha = torch.tensor([0.9, 0.7, 0.5, 0.3]).view(-1, 1, 1, 1)
    sigma = (1 - alpha ** 2).sqrt()
    w = torch.tensor([0.3, 1.0, 2.0, 0.5]).view(-1, 1, 1, 1)
    eps = torch.randn_like(x_hat)
    x_t = alpha * x_hat + sigma * eps
    teacher = lambda z: torch.tanh(z) * 0.7 + 0.1 * z  # noqa: E731  (a toy eps-predictor)
    eps_hat = teacher(x_t)
    x_psi = (x_t - sigma * eps_hat) / alpha
    c = L.weight_sds(alpha, sigma, w)
    L.distillation_loss(x_hat, x_psi, c, L.distance_mse).sum().backward()
    torch.testing.assert_close(x_hat.grad * 16, (w * (eps_hat - eps)).detach(), atol=1e-5, rtol=1e-5)


def test_nt_xent_by_hand():
    """Explicit loop over anchors: -log( exp(s_ip/T) / sum_{k != i} exp(s_ik/T) )."""
    torch.manual_seed(0)
    z1, z2, T = torch.randn(3, 4), torch.randn(3, 4), 0.5
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    expected = []
    for i in range(6):
        p = (i + 3) % 6
        num = math.exp(float(z[i] @ z[p]) / T)
        den = sum(math.exp(float(z[i] @ z[k]) / T) for k in range(6) if k != i)
        expected.append(-math.log(num / den))
    torch.testing.assert_close(nt_xent(z1, z2, T), torch.tensor(expected), atol=1e-5, rtol=1e-5)
    # identical views of well-separated embeddings: near-zero loss at a small temperature
    e = torch.eye(4)
    assert nt_xent(e, e, 0.05).max() < 1e-6
