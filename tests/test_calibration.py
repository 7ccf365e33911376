"""The calibration sets: each degradation does what its name says, checked on images built for it."""
import torch

from addlib import calibration as K


def _data(n_per=12, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_per * classes, 1, 8, 8, generator=g) * 2 - 1
    return x, torch.arange(classes).repeat_interleave(n_per)


def test_class_means_and_one_per_class_collapse_each_class():
    x, y = _data()
    m, o = K.class_means(x, y), K.one_per_class(x, y)
    for k in range(3):
        sel = y == k
        assert torch.allclose(m[sel], x[sel].mean(0).expand_as(m[sel]))
        assert (o[sel] == x[sel][0]).all()
    assert m.shape == x.shape == o.shape


def test_blur_keeps_constants_and_the_mean_and_smooths_a_checkerboard():
    const = torch.full((2, 3, 8, 8), 0.3)
    assert torch.allclose(K.gaussian_blur(const, 1.0), const, atol=1e-6)
    checker = (torch.arange(8).view(1, 8) + torch.arange(8).view(8, 1)) % 2 * 2.0 - 1
    c = checker.expand(1, 1, 8, 8)
    b1, b2 = K.gaussian_blur(c, 0.5), K.gaussian_blur(c, 1.0)
    assert b2.abs().max() < b1.abs().max() < 1.0  # stronger blur, less contrast left
    # a 1-D Gaussian's weights by hand: sigma 1, radius 3
    t = torch.arange(-3, 4, dtype=torch.float32)
    w = torch.exp(-t ** 2 / 2) / torch.exp(-t ** 2 / 2).sum()
    impulse = torch.zeros(1, 1, 9, 9)
    impulse[0, 0, 4, 4] = 1
    out = K.gaussian_blur(impulse, 1.0)[0, 0]
    assert torch.allclose(out[4, 1:8], w * w[3], atol=1e-6)


def test_noise_has_its_std_and_down_up_loses_only_fine_detail():
    x = torch.zeros(64, 1, 16, 16)
    assert abs(float(K.add_noise(x, 0.1).std()) - 0.1) < 0.005
    smooth = torch.linspace(-1, 1, 16).view(1, 1, 1, 16).expand(1, 1, 16, 16)
    checker = (torch.arange(16).view(1, 16) + torch.arange(16).view(16, 1)) % 2 * 2.0 - 1
    assert (K.down_up(smooth) - smooth).abs().max() < 0.1
    assert K.down_up(checker.expand(1, 1, 16, 16)).abs().max() < 1e-6  # 2x2 averages of +-1 are 0


def test_dropping_half_the_modes_keeps_real_images_from_half_the_clusters():
    g = torch.Generator().manual_seed(1)
    centres = torch.eye(4).repeat_interleave(16, 0)[:, :4].view(64, 1, 2, 2) * 4 - 2  # 4 separated clusters
    x = centres + 0.01 * torch.randn(64, 1, 2, 2, generator=g)
    y = torch.zeros(64, dtype=torch.long)
    out = K.drop_half_the_modes(x, y, modes=4)
    assert out.shape == x.shape
    assert all(any(torch.equal(o, r) for r in x) for o in out)  # every image is a real one
    kept = {int(torch.argmax(o.flatten())) for o in out}
    assert len(kept) == 2  # two of the four clusters remain


def test_degraded_sets_keep_the_count():
    x, y = _data()
    sets = K.degraded_sets(x, y)
    assert list(sets) == ["class means", "one image per class", "blur 0.5 px", "blur 1 px", "noise 0.1",
                          "down-up 2x", "half the modes"]
    assert all(v.shape == x.shape for v in sets.values())


def test_calibrate_scores_each_set_against_one_half_of_the_reference():
    """With pixels as features: the floor row (real images of the other half) scores best and every degradation
    worse; the sets are cut from the second half; prompts are the images' own captions."""
    from addlib import evaluation as E
    from addlib.metrics import halves

    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat(100)
    x = (torch.randn(4, 1, 4, 4, generator=g)[y] + 0.5 * torch.randn(400, 1, 4, 4, generator=g)).clamp(-1, 1)
    flat = lambda im: im.flatten(1)  # noqa: E731
    scorer = E.Scorer(flat, flat, None, flat(x), pr_k=3)
    captions = [f"digit {int(k)}" for k in y]
    seen = []

    def prompts_of(caps, labels):
        seen.append((caps, labels))
        return E.Prompts(caps, torch.zeros(len(caps), 1, 1), torch.ones(len(caps), 1), torch.ones(len(caps), 16),
                         labels)

    rows = K.calibrate(scorer, x, y, captions, prompts_of, n=150, seed=3)
    a, b = halves(400, 3)
    assert seen[0][0] == [captions[i] for i in b[:150]] and torch.equal(seen[0][1], y[b[:150]])
    fid = {k: r["fid"] for k, r in rows.items()}
    floor = fid.pop("real images (the other half)")
    assert all(v > floor for v in fid.values()), (floor, fid)
    md = K.markdown(rows)
    assert md.count("\n") == 2 + 8 and "| class means |" in md
