"""The discriminator: local batch norm, per-instance taps, frozen F, gradients through F, conditioning."""
import pytest
import timm
import torch
import torch.nn.functional as F

from addlib.discriminator import (Discriminator, DiscHead, FeatureNetwork, LocalBatchNorm, diff_augment)


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=8, patch_size=2, in_chans=1,
                             embed_dim=16, depth=4, num_heads=2, num_classes=0)


def make_d(seed=0, **kw):
    return Discriminator(FeatureNetwork(tiny_vit(seed), taps=[1, 3]), c_text_dim=6, **kw)


@pytest.mark.parametrize("batch", [1, 8, 9, 16, 17, 32, 64])  # 16, 32, 64: the equal-groups path of real batches
def test_local_batch_norm_matches_torch_per_group(batch):
    torch.manual_seed(batch)
    x = torch.randn(batch, 3, 5) * 3 + 1
    bn = LocalBatchNorm(3, group_size=8)
    out = bn(x)
    n_groups = -(-batch // 8)
    sizes = [len(g) for g in torch.tensor_split(torch.arange(batch), n_groups)]
    assert max(sizes) - min(sizes) <= 1 and max(sizes) <= 8
    start = 0
    for s in sizes:
        ref = F.batch_norm(x[start:start + s], None, None, training=True, eps=1e-5)  # stats over (batch, N)
        torch.testing.assert_close(out[start:start + s], ref, atol=1e-5, rtol=1e-5)
        start += s


def test_every_head_conv_is_spectrally_normalised_and_iterates_once_per_step():
    """The power iteration runs in spectral_step only, never in a forward, even with the discriminator in train
    mode; each conv's effective weight then has largest singular value 1."""
    d = make_d().train()
    convs = [m for m in d.heads.modules() if isinstance(m, torch.nn.Conv1d)]
    assert len(convs) == 3 * 3  # three per head (kernel 1, kernel 9, the c-map projection), three heads
    u = lambda: [m.parametrizations.weight[0]._u.clone() for m in convs]  # noqa: E731
    u0 = u()
    d(torch.randn(8, 1, 8, 8), torch.randn(8, 6), torch.randn(8, 16))
    assert all(torch.equal(a, b) for a, b in zip(u0, u()))
    d.spectral_step()
    assert all(not torch.equal(a, b) for a, b in zip(u0, u()))
    for _ in range(300):
        d.spectral_step()
    for m in convs:
        assert torch.nn.utils.parametrize.is_parametrized(m, "weight")
        top = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert float(top) == pytest.approx(1.0, abs=2e-3)


def test_patch_tap_is_after_the_position_embedding():
    """StyleGAN-T taps the tokens after timm's position embedding (CLS prepended, positions added), then folds CLS
    into each patch token like the block taps."""
    fn = FeatureNetwork(tiny_vit(), taps=[1])
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    vit = fn.backbone
    tok = torch.cat([vit.cls_token.expand(2, -1, -1), vit.patch_embed(fn.preprocess(x))], 1) + vit.pos_embed
    torch.testing.assert_close(fn(x)[0][0], (tok[:, 1:] + tok[:, :1]).transpose(1, 2))


def test_two_instances_do_not_share_taps():
    d1, d2 = make_d(0), make_d(1)
    x = torch.randn(2, 1, 8, 8)
    f1_alone = [f.clone() for f in d1.features(x)]
    d2.features(torch.randn(2, 1, 8, 8))  # would clobber a shared hook store
    f1_again = d1.features(x)
    assert all(torch.equal(a, b) for a, b in zip(f1_alone, f1_again))
    assert d1.F._store is not d2.F._store


def test_feature_shapes_and_cls_folding():
    fn = FeatureNetwork(tiny_vit(), taps=[1, 3])
    x = torch.randn(3, 1, 8, 8)
    feats, cls = fn(x)
    assert [tuple(f.shape) for f in feats] == [(3, 16, 16)] * 3  # patch embed + 2 taps, 4x4 = 16 tokens
    assert cls.shape == (3, 16)
    # folding: tap = patch tokens + CLS token of the same block output
    store = {}
    h = fn.backbone.blocks[3].register_forward_hook(lambda m, a, o: store.setdefault("o", o))
    fn(x)
    h.remove()
    o = store["o"]
    torch.testing.assert_close(feats[2], (o[:, 1:] + o[:, :1]).transpose(1, 2))


def test_frozen_F_in_eval_after_train_and_gradients_reach_the_input():
    d = make_d()
    d.train()
    assert d.training and not d.F.backbone.training
    assert all(not p.requires_grad for p in d.F.parameters())
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    logits = d(x, torch.randn(2, 6), torch.randn(2, 16))
    sum(l.sum() for l in logits).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.F.parameters())
    assert all(p.grad is not None for p in d.heads.parameters())


def test_gradients_reach_a_student_through_F():
    d = make_d()
    student = torch.nn.Conv2d(1, 1, 3, padding=1)
    logits = d(student(torch.randn(4, 1, 8, 8)), torch.randn(4, 6), torch.randn(4, 16))
    (-sum(l.mean() for l in logits)).backward()
    assert student.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("text,image,c_dim", [(False, False, 0), (True, False, 6), (False, True, 16), (True, True, 22)])
def test_conditioning_switches(text, image, c_dim):
    d = make_d(use_c_text=text, use_c_img=image)
    assert d.heads[0].c_dim == c_dim
    logits = d(torch.randn(3, 1, 8, 8), torch.randn(3, 6), torch.randn(3, 16))
    assert [tuple(l.shape) for l in logits] == [(3, 16)] * 3


def test_projection_logit_formula():
    head = DiscHead(4, c_dim=3, cmap_dim=8)
    f, c = torch.randn(2, 4, 5), torch.randn(2, 3)
    out = head.cls(head.main(f))
    ref = torch.einsum("bkn,bk->bn", out, head.cmapper(c)) / 8 ** 0.5
    torch.testing.assert_close(head(f, c), ref)


def test_diff_augment_is_differentiable_and_applies():
    x = (torch.rand(4, 1, 8, 8) * 2 - 1).requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    y = diff_augment(x, g)
    assert y.shape == x.shape and not torch.equal(y, x)
    y.sum().backward()
    assert x.grad is not None
    assert torch.equal(diff_augment(x, None, color=False, translation=False, cutout=False), x)
