"""Feature-network pretraining and loading: timm weights from a local file, SimCLR steps, linear probe."""
import dataclasses

import pytest
import timm
import torch
from safetensors.torch import save_file

from addlib import config
from addlib import pretrain
from addlib.pretrain import (embed, linear_probe, load_backbone, pretrain_features, random_affine, simclr_view)


def test_load_real_timm_weights_from_a_local_file(tmp_path, smoke_params):
    """The path a user with DINOv2 weights takes: timm architecture + local safetensors, no network."""
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=0)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    cfg = dataclasses.replace(smoke_params.features, source="timm", timm_name="vit_tiny_patch16_224",
                              weights=str(tmp_path / "vit.safetensors"), img_size=32)
    cfg.validate("features")
    loaded = load_backbone(cfg, in_chans=1)
    sd = loaded.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ref.state_dict().items())
    # grey inputs are repeated to the backbone's 3 channels and resized to its resolution
    z = embed(loaded.eval(), torch.rand(2, 1, 16, 16) * 2 - 1, 32)
    assert z.shape == (2, 192)


def test_missing_weights_file_is_a_config_error(tmp_path, smoke_params):
    cfg = dataclasses.replace(smoke_params.features, source="timm", weights="nope.safetensors")
    with pytest.raises(config.ConfigError, match="weights file not found"):
        cfg.check_inputs(tmp_path)


def test_random_affine_identity_and_background():
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    g = torch.Generator().manual_seed(0)
    y = random_affine(x, g, max_rot=0.0, scale=(1.0, 1.0), translate=0.0)
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)
    bg = -torch.ones(2, 1, 8, 8)
    assert torch.allclose(random_affine(bg, g), bg)  # the background stays black (-1)


def test_views_without_colour_jitter_keep_the_intensities():
    """color_jitter: false leaves a view's pixel values to the affine jitter alone (F can then see contrast)."""
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    plain = simclr_view(x, torch.Generator().manual_seed(3), color=False)
    torch.testing.assert_close(plain, random_affine(x, torch.Generator().manual_seed(3)))
    jittered = simclr_view(x, torch.Generator().manual_seed(3), color=True)
    assert not torch.allclose(jittered, plain, atol=1e-3)


@pytest.mark.parametrize("jitter", [False, True])
def test_pretraining_draws_its_views_as_configured(tmp_path, smoke_params, tiny_data, monkeypatch, jitter):
    seen = []
    monkeypatch.setattr(pretrain, "simclr_view", lambda x, g, color=True: seen.append(color) or simclr_view(x, g, color))
    ds, _ = tiny_data
    cfg = smoke_params.features
    cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, steps=1, batch_size=4, color_jitter=jitter))
    pretrain_features(cfg, 0, ds.pixels(), tmp_path / "f", tmp_path / "ckpt", progress=False)
    assert seen == [jitter, jitter]


def test_linear_probe_separable_and_chance():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 4
    z = torch.nn.functional.one_hot(y, 4).float() * 5 + 0.1 * torch.randn(200, 4, generator=g)
    assert linear_probe(z[:150], y[:150], z[150:], y[150:], steps=100) == 1.0
    noise = torch.randn(200, 4, generator=g)
    assert linear_probe(noise[:150], y[:150], noise[150:], y[150:], steps=100) < 0.6


def test_pretrain_two_steps_saves_a_loadable_backbone(tmp_path, smoke_params, tiny_data):
    ds, _ = tiny_data
    cfg = smoke_params.features
    cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, steps=2, batch_size=8))
    run = pretrain_features(cfg, 0, ds.pixels(), tmp_path / "f", tmp_path / "ckpt", progress=False)
    assert run["steps"] == 2 and len(run["history"]) == 2
    back = load_backbone(cfg, 1, tmp_path / "f")
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), run["backbone"].state_dict().values()))
    random_f = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, objective="none"))
    r = load_backbone(random_f, 1, None, seed=0)
    assert not all(torch.equal(a, b) for a, b in zip(r.state_dict().values(), back.state_dict().values()))
