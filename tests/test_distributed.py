"""ADD under ``accelerate launch`` with two CPU processes (gloo) against one process with the same global
batch and seeds: the same losses step for step (to floating point), checkpoints that resume across world
sizes, and evaluation sampling split over processes that gathers the same images."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("distributed_worker.py")
KEYS = ["loss_G", "loss_distill", "loss_student", "loss_D", "r1", "logits_real", "logits_fake"]


def _launch(processes: int, out: Path, ckpt: Path, max_steps: int | None = None) -> dict:
    args = [str(WORKER), "--out", str(out), "--ckpt", str(ckpt)] + (["--max-steps", str(max_steps)] if max_steps else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        cmd = [sys.executable] + args
    else:  # accelerate's multi-process launcher (torchrun); ACCELERATE_USE_CPU makes it gloo on CPUs
        env["ACCELERATE_USE_CPU"] = "true"
        cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes",
               str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "29517"] + args
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def _losses(run: dict) -> list[list[float]]:
    return [[r[k] for k in KEYS] for r in run["history"]]


def _close(a: list[list[float]], b: list[list[float]]) -> None:
    for ra, rb in zip(a, b, strict=True):
        assert ra == pytest.approx(rb, rel=1e-5, abs=1e-7)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    d = tmp_path_factory.mktemp("one")
    return _launch(1, d / "run.json", d / "ckpt")


def test_two_processes_give_the_single_process_losses_and_images(single, tmp_path):
    two = _launch(2, tmp_path / "run.json", tmp_path / "ckpt")
    assert single["processes"] == 1 and two["processes"] == 2
    assert len(two["history"]) == 3
    _close(_losses(two), _losses(single))
    # split sampling: 10 images in 4 batches over 2 processes, gathered in order
    assert two["n_images"] == single["n_images"] == 10
    assert two["images"] == pytest.approx(single["images"], abs=1e-5)


@pytest.mark.parametrize("first,second", [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_in_the_other_world_size(single, tmp_path, first, second):
    _launch(first, tmp_path / "part.json", tmp_path / "ckpt", max_steps=2)
    resumed = _launch(second, tmp_path / "rest.json", tmp_path / "ckpt")
    assert resumed["resumed_from"] == 2 and resumed["processes"] == second
    _close(_losses(resumed), _losses(single))
