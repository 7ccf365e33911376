"""The evaluation's networks: the CLIP loss by hand, training + resume of the classifier and image tower,
zero-shot readout, and the loaders of the standard networks (clean-fid Inception, transformers CLIP) on
stand-ins built here with the same file formats."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from addlib import evaluators as E


def test_clip_loss_with_distinct_captions_is_clips_symmetric_cross_entropy():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    scale = torch.tensor(math.log(10.0))
    logits = 10.0 * img @ txt.t()
    expected = 0.5 * (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.t(), torch.arange(5)))
    assert E.clip_loss(img, txt, torch.arange(5), scale).item() == pytest.approx(expected.item(), rel=1e-6)


def test_clip_loss_duplicate_captions_are_shared_positives_by_hand():
    # Two images with the same caption (text rows identical) and one with another caption; scale 1.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    ids = torch.tensor([7, 7, 3])
    # logits = img @ txt.T: row0 [1,1,0], row1 [0,0,1], row2 [1,1,0]; targets rows 0,1: [.5,.5,0], row 2 [0,0,1]
    ls = lambda row: [v - math.log(sum(math.exp(u) for u in row)) for v in row]  # noqa: E731
    r0, r1, r2 = ls([1, 1, 0]), ls([0, 0, 1]), ls([1, 1, 0])
    i2t = (-(0.5 * r0[0] + 0.5 * r0[1]) - (0.5 * r1[0] + 0.5 * r1[1]) - r2[2]) / 3
    c0, c1, c2 = ls([1, 0, 1]), ls([1, 0, 1]), ls([0, 1, 0])  # columns of the logits
    t2i = (-(0.5 * c0[0] + 0.5 * c0[1]) - (0.5 * c1[0] + 0.5 * c1[1]) - c2[2]) / 3
    assert E.clip_loss(img, txt, ids, torch.tensor(0.0)).item() == pytest.approx(0.5 * (i2t + t2i), rel=1e-6)


def _data(n=24):
    g = torch.Generator().manual_seed(0)
    pattern = torch.randn(3, 1, 8, 8, generator=g).clamp(-1, 1)
    y = torch.arange(n) % 3
    return pattern[y], y


@pytest.mark.parametrize("kind", ["classifier", "clip", "detail"])
def test_two_steps_then_resume_equals_uninterrupted_and_loads_back(tmp_path, smoke_params, kind):
    cfg = getattr(smoke_params.evaluators, kind)
    x, y = _data()
    text = torch.randn(3, 16, generator=torch.Generator().manual_seed(1)) if kind == "clip" else None
    run = lambda out, ck, **kw: E.train_evaluator(kind, cfg, 0, x, y, text, out, ck, progress=False, **kw)  # noqa: E731
    full = run(tmp_path / "a", tmp_path / "ck_a")
    run(tmp_path / "b", tmp_path / "ck_b", max_steps=2)
    assert not (tmp_path / "b" / f"{kind}.safetensors").exists()  # unfinished run saves no weights
    resumed = run(tmp_path / "b", tmp_path / "ck_b")
    assert [r["loss"] for r in resumed["history"]] == pytest.approx([r["loss"] for r in full["history"]])
    for p, q in zip(full["model"].state_dict().values(), resumed["model"].state_dict().values()):
        assert torch.equal(p, q)
    out_dim = {"classifier": 3, "clip": 16, "detail": None}[kind]
    loaded = E.load_evaluator(kind, cfg, 1, out_dim, tmp_path / "a")
    assert not loaded.training
    assert torch.allclose(loaded(x[:4]), full["model"].eval()(x[:4]))


def test_classifier_learns_three_patterns(smoke_params, tmp_path):
    cfg = smoke_params.evaluators.classifier
    cfg.steps, cfg.lr, cfg.checkpoint_every = 40, 1e-2, 100
    x, y = _data()
    m = E.train_evaluator("classifier", cfg, 0, x, y, None, tmp_path, tmp_path / "ck", progress=False)["model"]
    assert float((m(x).argmax(1) == y).float().mean()) == 1.0


def test_the_detail_autoencoder_denoises_and_its_code_sees_blur(smoke_params, tmp_path):
    """Trained on three patterns, the autoencoder removes most of the input noise, its code is channels x
    (H / 2^levels)^2 wide, and a blurred pattern lands far from the sharp one in code space (the point of the
    detail space), while a second noisy copy of the sharp pattern stays close."""
    import dataclasses

    cfg = dataclasses.replace(smoke_params.evaluators.detail, channels=[8, 16], code_channels=16, steps=200, lr=5e-3,
                              checkpoint_every=1000, noise=0.2)
    x, _ = _data()
    run = E.train_evaluator("detail", cfg, 0, x, None, None, tmp_path, tmp_path / "ck", progress=False)
    ae = run["model"]
    # the objective, by hand: the first step's loss is the initial network's MSE to x from x + noise * eps
    from addlib.training import batch_indices, step_generator
    stream = 0 * 31 + 3
    torch.manual_seed(stream)
    ae0 = E.DenoisingAE(1, cfg.channels, cfg.code_channels)
    xb = x[batch_indices(0, len(x), cfg.batch_size, stream)]
    eps = torch.randn(xb.shape, generator=step_generator(stream, 0))
    with torch.no_grad():
        assert run["history"][0]["loss"] == pytest.approx(
            float(torch.nn.functional.mse_loss(ae0(xb + cfg.noise * eps), xb)), rel=1e-5)
    g = torch.Generator().manual_seed(3)
    noisy = x + 0.2 * torch.randn(x.shape, generator=g)
    with torch.no_grad():
        assert torch.nn.functional.mse_loss(ae(noisy), x) < 0.5 * torch.nn.functional.mse_loss(noisy, x)
        code = ae.embed(x[:3])
        assert code.shape == (3, cfg.code_channels * (8 // 2 ** len(cfg.channels)) ** 2)
        blurred = torch.nn.functional.avg_pool2d(x[:3], 3, stride=1, padding=1, count_include_pad=False)
        other_noise = ae.embed(x[:3] + 0.05 * torch.randn(x[:3].shape, generator=g))
        assert ((ae.embed(blurred) - code).norm(dim=1) > 2 * (other_noise - code).norm(dim=1)).all()


def test_zero_shot_accuracy_reads_the_nearest_class_text():
    class Fixed(nn.Module):  # stands in for the tower: returns the first two pixels as the embedding
        def forward(self, x):
            return F.normalize(x.flatten(1)[:, :2], dim=-1)

    x = torch.tensor([[1.0, 0.1], [0.1, 1.0], [0.9, 0.0]]).view(3, 1, 1, 2)
    class_text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert E.zero_shot_accuracy(Fixed(), x, torch.tensor([0, 1, 0]), class_text) == 1.0
    assert E.zero_shot_accuracy(Fixed(), x, torch.tensor([1, 1, 0]), class_text) == pytest.approx(2 / 3)


class _FakeInceptionLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 2048, 1)

    def forward(self, x):
        return self.proj(x).mean((2, 3), keepdim=True)


class _FakeInception(nn.Module):
    """clean-fid's torchscript file has a ``layers`` module that maps normalised 299x299 RGB to 2048-d."""

    def __init__(self):
        super().__init__()
        self.layers = _FakeInceptionLayers()

    def forward(self, x, return_features: bool = False):
        return self.layers(x)


def test_inception_features_load_clean_fids_file_format(tmp_path):
    torch.manual_seed(0)
    net = torch.jit.script(_FakeInception())
    net.save(str(tmp_path / "inception-2015-12-05.pt"))
    fn = E.inception_features(tmp_path)
    black = -torch.ones(2, 1, 16, 16)  # grey, [-1, 1] -> RGB pixels 0 -> clean-fid's (x - 128) / 128 = -1
    feats = fn(black)
    w, b = net.layers.proj.weight.view(2048, 3), net.layers.proj.bias
    assert feats.shape == (2, 2048)
    assert torch.allclose(feats[0], -w.sum(1) + b, atol=1e-4)
    with pytest.raises(FileNotFoundError):
        E.inception_features(tmp_path / "missing")


def _tiny_clip_folder(path):
    from transformers import CLIPConfig, CLIPModel

    from tiny_models import clip_tokenizer

    vocab = clip_tokenizer(path).get_vocab()
    cfg = CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=32, bos_token_id=0,
                                      eos_token_id=1, pad_token_id=1),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=16, patch_size=8),
                     projection_dim=8)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(str(path))


def test_real_clip_towers_load_from_a_local_transformers_folder(tmp_path):
    from addlib.metrics import clip_score

    _tiny_clip_folder(tmp_path / "clip")
    image_fn, text_fn = E.clip_model_towers(tmp_path / "clip")
    img = image_fn(torch.zeros(3, 1, 16, 16))
    txt = text_fn(["a digit 3", "seven", "the number 1"])
    assert img.shape == (3, 8) and txt.shape == (3, 8)
    cos = F.cosine_similarity(img, txt, dim=-1)
    assert clip_score(img, txt) == pytest.approx(float((100 * cos.clamp_min(0)).mean()), rel=1e-5)


def test_clip_loader_never_asks_the_network(monkeypatch):
    """clip_model_towers passes local_files_only to both from_pretrained calls: a path that does not exist but
    looks like a hub id fails here instead of downloading."""
    import transformers

    seen = []

    def record(name):
        def fake(cls, path, *a, **kw):
            seen.append((name, kw.get("local_files_only")))
            if name == "clip":
                return transformers.CLIPModel(transformers.CLIPConfig(
                    text_config=dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2),
                    vision_config=dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=16, patch_size=8), projection_dim=4))
            raise OSError("stop")
        return classmethod(fake)

    monkeypatch.setattr(transformers.CLIPModel, "from_pretrained", record("clip"))
    monkeypatch.setattr(transformers.CLIPTokenizer, "from_pretrained", record("tokenizer"))
    with pytest.raises(OSError, match="stop"):
        E.clip_model_towers("openai/clip-vit-base-patch32")
    assert seen == [("clip", True), ("tokenizer", True)]
