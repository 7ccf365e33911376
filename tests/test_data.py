"""Data: the embedded MNIST task and user image folders."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from addlib import config
from addlib.config.data import DataConfig
from addlib import data as D


def _cfg(**kw):
    base = dict(source="mnist", folder=None, resolution=16, channels=1, holdout_fraction=0.1, split_seed=0)
    base.update(kw)
    return config.from_dict(DataConfig, base, "data")


@pytest.fixture(scope="module")
def mnist():
    return D.load_mnist(_cfg())


def test_mnist_shapes_range_and_counts(mnist):
    assert mnist.images.shape == (5000, 1, 16, 16) and mnist.images.dtype == torch.uint8
    x = mnist.pixels()
    assert x.min() >= -1 and x.max() <= 1
    assert x.min() == -1  # MNIST background is exactly black
    assert torch.bincount(mnist.labels).tolist() == [500] * 10


def test_split_is_deterministic_and_stratified(mnist):
    again = D.load_mnist(_cfg())
    assert torch.equal(mnist.split, again.split)
    assert mnist.captions == again.captions
    hold = mnist.labels[mnist.split == D.HOLDOUT]
    assert torch.bincount(hold).tolist() == [50] * 10
    other = D.load_mnist(_cfg(split_seed=1))
    assert not torch.equal(mnist.split, other.split)


def test_captions_name_the_right_digit(mnist):
    words = D.DIGIT_WORDS
    for lab, cap in zip(mnist.labels.tolist()[::37], mnist.captions[::37]):
        assert words[lab] in cap.split() or str(lab) in cap.split()
    for lab in range(10):
        caps = {c for c, l in zip(mnist.captions, mnist.labels.tolist()) if l == lab}
        assert len(caps) == len(D.CAPTION_TEMPLATES)  # several templates per class are in use


@pytest.mark.parametrize("h,w", [(20, 40), (40, 20), (28, 28), (5, 9)])
def test_resize_center_crop_matches_torchvision(h, w):
    from torchvision.transforms import functional as TF

    img = torch.rand(3, h, w) * 255
    ref = TF.center_crop(TF.resize(img, 8, antialias=True), [8, 8])
    torch.testing.assert_close(D.resize_center_crop(img, 8), ref, atol=1e-3, rtol=0)


def _write_folder(folder, entries):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.jsonl", "w") as f:
        for e in entries:
            f.write(json.dumps(e) + "\n")


def test_user_folder_mixed_modes_and_sizes(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.full((30, 20), 200, np.uint8), "L").save(folder / "grey.png")
    Image.fromarray(np.full((12, 40, 3), (255, 0, 0), np.uint8), "RGB").save(folder / "rgb.jpg")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent -> composited on white
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    _write_folder(folder, [{"file_name": "grey.png", "text": "grey"},
                           {"file_name": "rgb.jpg", "text": "red", "label": 1},
                           {"file_name": "rgba.png", "text": "clear"}])
    ds = D.load_folder(_cfg(source="folder", folder=str(folder), resolution=8, channels=3, holdout_fraction=0.3))
    assert ds.images.shape == (3, 3, 8, 8)
    assert ds.captions == ["grey", "red", "clear"]
    assert ds.labels.tolist() == [-1, 1, -1]
    assert ds.images[0].float().mean() == pytest.approx(200, abs=1)
    assert ds.images[1, 0].float().mean() > 250 and ds.images[1, 1].float().mean() < 5
    assert ds.images[2].min() == 255


def test_corrupt_image_error_names_the_file(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not a png at all")
    _write_folder(folder, [{"file_name": "broken.png", "text": "x"}])
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        D.load_folder(_cfg(source="folder", folder=str(folder)))


def test_missing_folder_is_a_config_error(tmp_path):
    cfg = _cfg(source="folder", folder=str(tmp_path / "nowhere"))
    with pytest.raises(config.ConfigError, match="image folder not found"):
        cfg.check_inputs(tmp_path)


def test_dataset_roundtrip(tmp_path, mnist):
    small = mnist.subset(D.HOLDOUT)
    small.save(tmp_path)
    back = D.Dataset.load(tmp_path)
    assert torch.equal(back.images, small.images) and back.captions == small.captions


@pytest.mark.parametrize("line,match", [
    (b'{"file_name": "a.png", "text": "caf\xe9"}', r"metadata\.jsonl:2: not UTF-8"),
    (b'{"file_name": "a.png", "text": "four", "label": "four"}', r"metadata\.jsonl:2: label must be an integer >= 0"),
    (b'{"file_name": "a.png", "text": "x", "label": -2}', r"metadata\.jsonl:2: label must be an integer >= 0"),
    (b'{"file_name": "a.png", "text": 12345}', r"metadata\.jsonl:2: text must be a string"),
    (b'{"file_name": "../elsewhere.png", "text": "x"}', r"metadata\.jsonl:2: file_name '\.\./elsewhere\.png' points outside"),
    (b'{"file_name": "/etc/hostname", "text": "x"}', r"metadata\.jsonl:2: file_name '/etc/hostname' points outside"),
    (b'{"file_name": "missing.png", "text": "x"}', r"metadata\.jsonl:2: image not found"),
    (b'{"file_name": "a.png"', r"metadata\.jsonl:2: not valid JSON"),
    (b'["a.png", "x"]', r"metadata\.jsonl:2: needs an object with 'file_name' and 'text'"),
])
def test_bad_metadata_lines_are_one_line_errors_naming_file_and_line(tmp_path, line, match):
    """Checked before the prepare stage runs (DataConfig.check_inputs) and again when it loads."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(folder / "a.png")
    (tmp_path / "elsewhere.png").write_bytes((folder / "a.png").read_bytes())  # exists, but outside
    (folder / "metadata.jsonl").write_bytes(b'{"file_name": "a.png", "text": "fine", "label": 0}\n' + line + b"\n")
    cfg = DataConfig("folder", str(folder), 8, 1, 0.2, 0)
    for check in (lambda: cfg.check_inputs(tmp_path), lambda: D.load_folder(cfg)):
        with pytest.raises(config.ConfigError, match=match) as e:
            check()
        assert "\n" not in str(e.value)


def test_zero_shot_prompts_name_the_digit_and_no_training_caption_uses_them():
    train = {c for k in range(10) for c in D.digit_captions(k)}
    labels = torch.arange(10).repeat(5)
    zs = D.zero_shot_captions(labels, seed=1)
    assert len(zs) == 50 and not set(zs) & train
    assert all(D.DIGIT_WORDS[int(k)] in c or str(int(k)) in c for k, c in zip(labels, zs))
    assert len({c for c in zs}) > 10  # several templates drawn
    assert zs == D.zero_shot_captions(labels, seed=1)
