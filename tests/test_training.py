"""Teacher training: two steps, then a resume that continues at step 3 with identical state."""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from addlib import training
from addlib.teacher import train_teacher
from addlib.training import Checkpointer, batch_indices, lr_at


def _tiny(smoke_params, steps=3):
    t = smoke_params.teacher
    return dataclasses.replace(t, train=dataclasses.replace(t.train, steps=steps, checkpoint_every=10,
                                                            log_every=1, batch_size=4))


def _run(cfg, ds, cache, folder, **kw):
    return train_teacher(cfg, 0, ds, cache, folder / "model", folder / "ckpt", live_dir=folder / "live",
                         progress=False, **kw)


def test_resume_continues_at_step_3_with_identical_state(tmp_path, smoke_params, tiny_data):
    ds, cache = tiny_data
    cfg = _tiny(smoke_params)
    full = _run(cfg, ds, cache, tmp_path / "full")
    part = _run(cfg, ds, cache, tmp_path / "resumed", max_steps=2)  # "killed" after step 2
    assert part["steps"] == 2 and not (tmp_path / "resumed" / "model").exists()
    resumed = _run(cfg, ds, cache, tmp_path / "resumed")
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 3
    assert [r["step"] for r in resumed["history"]] == [1, 2, 3]
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in full["history"]]
    a, b = (next((tmp_path / run / "ckpt").glob("*/checkpoint-3")) for run in ("full", "resumed"))
    for name in ["unet", "ema"]:
        sa, sb = load_file(str(a / f"{name}.safetensors")), load_file(str(b / f"{name}.safetensors"))
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    oa = torch.load(a / "optimizer.pt", weights_only=True)
    ob = torch.load(b / "optimizer.pt", weights_only=True)
    for k in oa["state"]:
        assert torch.equal(oa["state"][k]["exp_avg_sq"], ob["state"][k]["exp_avg_sq"])
    # the saved diffusers model (EMA weights) is the same, and it differs from the raw weights
    ma = load_file(str(tmp_path / "full" / "model" / "diffusion_pytorch_model.safetensors"))
    mb = load_file(str(tmp_path / "resumed" / "model" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    # dvclive saw every step, including the ones before the interruption
    live = json.loads((tmp_path / "resumed" / "live" / "metrics.json").read_text())
    assert live["step"] == 3


def test_training_reduces_the_loss_on_a_fixed_batch(smoke_params, tiny_data, tmp_path):
    ds, cache = tiny_data
    cfg = _tiny(smoke_params, steps=40)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=16, lr=3e-3, warmup_steps=1))
    out = _run(cfg, ds, cache, tmp_path)
    losses = [r["loss"] for r in out["history"]]
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:5]) / 5


def test_checkpoint_of_another_config_is_not_resumed(tmp_path, smoke_params, tiny_data):
    ds, cache = tiny_data
    cfg = _tiny(smoke_params, steps=2)
    _run(cfg, ds, cache, tmp_path)
    other = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=cfg.train.lr * 2))
    out = _run(other, ds, cache, tmp_path)
    assert out["resumed_from_step"] == 0


@pytest.mark.parametrize("change", ["one pixel", "one label", "a caption's text embedding"])
def test_a_checkpoint_on_other_inputs_is_not_resumed(tmp_path, smoke_params, tiny_data, change):
    """The fingerprint covers the inputs by content: after a change to the data or the text encoder's output,
    a half-finished run starts afresh instead of resuming (and a finished one instead of republishing)."""
    ds, cache = tiny_data
    cfg = _tiny(smoke_params)
    assert _run(cfg, ds, cache, tmp_path, max_steps=2)["steps"] == 2
    if change == "one pixel":
        ds.images[0, 0, 0, 0] ^= 1
    elif change == "one label":
        ds.labels[0] = (ds.labels[0] + 1) % 10
    else:
        cache.states[1, 0, 0] += 1e-3
    assert _run(cfg, ds, cache, tmp_path)["resumed_from_step"] == 0


def test_nan_loss_stops_with_a_clear_message(tmp_path, smoke_params, tiny_data):
    ds, cache = tiny_data
    cache.states[1:] = float("nan")
    with pytest.raises(FloatingPointError, match="teacher loss is nan at step 1"):
        _run(_tiny(smoke_params), ds, cache, tmp_path)


def test_batches_cover_each_epoch_once():
    n, b = 10, 4
    seen = torch.cat([batch_indices(s, n, b, seed=3) for s in range(5)])  # 20 = two epochs
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:].tolist()) == list(range(10))
    assert not torch.equal(seen[:10], seen[10:])
    assert torch.equal(batch_indices(2, n, b, 3), batch_indices(2, n, b, 3))


def test_lr_schedule(smoke_params):
    tc = dataclasses.replace(smoke_params.teacher.train, steps=110, warmup_steps=10, lr=1.0)
    assert lr_at(0, tc) == pytest.approx(0.1)
    assert lr_at(9, tc) == pytest.approx(1.0)
    assert lr_at(10, tc) == pytest.approx(1.0)
    assert lr_at(60, tc) == pytest.approx(0.55)
    assert lr_at(110, tc) == pytest.approx(0.1)


def test_checkpointer_ignores_incomplete(tmp_path):
    ck = Checkpointer(tmp_path, "abc")
    (ck.run_dir / "checkpoint-9").mkdir(parents=True)  # a kill during writing leaves no state.json
    assert ck.latest() is None


def _save(ck, step, w):
    m = torch.nn.Linear(2, 1)
    with torch.no_grad():
        m.weight.fill_(w)
    return ck.save(step, {"m": m}, {}, {}, {"history": []})


def test_checkpointer_keeps_each_runs_latest_and_never_another_runs(tmp_path):
    a, b = Checkpointer(tmp_path, "config-a"), Checkpointer(tmp_path, "config-b")
    _save(a, 5, 1.0)
    _save(a, 10, 1.0)
    _save(b, 3, 1.0)  # another configuration's save (the NaN run of the issue deleted a finished run here)
    assert [p.name for p in a.run_dir.glob("checkpoint-*")] == ["checkpoint-10"]
    assert a.latest().name == "checkpoint-10" and b.latest().name == "checkpoint-3"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e6])
def test_checkpointer_never_writes_weights_that_are_not_sane(tmp_path, bad):
    ck = Checkpointer(tmp_path, "abc")
    assert _save(ck, 5, 0.5) is not None
    assert _save(ck, 10, bad) is None  # a diverging run keeps its last sane checkpoint
    assert ck.latest().name == "checkpoint-5"
    assert load_file(str(ck.latest() / "m.safetensors"))["weight"].eq(0.5).all()


def test_divergence_message_says_what_is_kept_and_how_to_restart(tmp_path, smoke_params, tiny_data):
    ds, cache = tiny_data
    cfg = _tiny(smoke_params, steps=4)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, checkpoint_every=1))
    _run(cfg, ds, cache, tmp_path, max_steps=2)  # two good steps, checkpoint-2
    cache.states[1:] = float("nan")  # the loss goes NaN from step 1 (new inputs: a new run, nothing to resume)
    with pytest.raises(FloatingPointError) as e:
        _run(cfg, ds, cache, tmp_path / "other")
    msg = str(e.value)
    assert "teacher loss is nan at step 1" in msg and "no checkpoint with sane weights was written" in msg
    assert "to start this run afresh delete" in msg and "\n" not in msg


def test_shard_splits_global_batch():
    class Acc:
        num_processes, process_index = 2, 1
    assert training.shard(torch.arange(8), Acc()).tolist() == [4, 5, 6, 7]


def test_a_stage_prunes_its_runs_checkpoints_unless_asked_to_keep_them(tmp_path, monkeypatch):
    from addlib.pipeline.common import prune_checkpoints

    mine, other = Checkpointer(tmp_path, "this-run"), Checkpointer(tmp_path, "another-config")
    _save(mine, 3, 1.0)
    _save(other, 2, 1.0)
    monkeypatch.setenv("ADDLIB_KEEP_CHECKPOINTS", "1")
    prune_checkpoints(mine.run_dir)
    assert mine.latest() is not None
    monkeypatch.delenv("ADDLIB_KEEP_CHECKPOINTS")
    prune_checkpoints(mine.run_dir)
    assert not mine.run_dir.exists() and other.latest().name == "checkpoint-2"


def test_ema_warm_up_follows_its_closed_form():
    # decay_k = min(decay, (1 + k) / (10 + k)) at the k-th update: early averages are not dominated by the init
    # (diffusers' EMAModel warm-up); with decay 0.5 the cap binds from k = 8 on, so both regimes are checked
    from addlib.models import EMA

    m = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(3.0)
    ema = EMA(m, 0.5)
    expect = 3.0
    for k, v in enumerate([1.0, -2.0, 5.0, 0.5, 4.0, 2.0, -1.0, 7.0, 3.0, 6.0], start=1):
        with torch.no_grad():
            m.weight.fill_(v)
        ema.update(m)
        d = min(0.5, (1 + k) / (10 + k))
        expect = d * expect + (1 - d) * v
        assert ema.shadow["weight"].item() == pytest.approx(expect, rel=1e-6), k
    assert ema.state_dict()["__updates__"].item() == 10
