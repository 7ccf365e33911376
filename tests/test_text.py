"""The bundled text encoder loads offline and gives the documented shapes; the cache indexes it."""
import pytest
import torch

from addlib.text import TextCache, TextEncoder, encode_captions


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder("bundled", max_length=16)


def test_shapes_and_empty_prompt(encoder):
    states, mask, pooled = encoder(["a handwritten digit seven", ""])
    assert states.shape == (2, 16, 384) and mask.shape == (2, 16) and pooled.shape == (2, 384)
    assert mask[1].sum() == 2  # [CLS] [SEP]: the empty prompt still has a valid embedding
    assert torch.allclose(pooled.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.isfinite(states).all()


def test_frozen_and_eval(encoder):
    encoder.train()
    assert not encoder.model.training
    assert not any(p.requires_grad for p in encoder.parameters())


def test_embeddings_carry_the_meaning(encoder):
    """A real pretrained model: paraphrases of the same digit are closer than different digits."""
    _, _, p = encoder(["a handwritten digit seven", "the digit seven", "a handwritten digit two"])
    assert (p[0] @ p[1]) > (p[0] @ p[2])
    assert (p[1] @ p[0]) > (p[1] @ p[2])


def test_cache_puts_empty_prompt_first_and_matches_encoder(encoder, tmp_path):
    cache = encode_captions(encoder, ["the number 3", "the number 3", "zero"], batch_size=2)
    assert cache.captions == ["", "the number 3", "zero"]
    states, mask, pooled = encoder(["zero"])
    torch.testing.assert_close(cache[torch.tensor([2])][2], pooled, atol=1e-5, rtol=0)
    cache.save(tmp_path)
    back = TextCache.load(tmp_path)
    assert back.captions == cache.captions and torch.equal(back.states, cache.states)


def test_missing_local_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="text encoder folder not found"):
        TextEncoder(str(tmp_path / "none"))
