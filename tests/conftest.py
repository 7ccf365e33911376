"""Shared fixtures: the smoke profile's config (params.yaml + profiles/smoke.yaml, the same code path as a
real run) and tiny random data, so unit tests run in seconds on a CPU, offline."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

# `make test` runs two pytest-xdist workers: each, and every stage, launcher and worker process its tests start,
# gets its share of the cores (OMP_NUM_THREADS is read when torch starts), so two torch jobs never oversubscribe
# the CPU (a training step slows down several-fold when they do). Run alone, pytest leaves torch's default.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if WORKERS:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ["OMP_NUM_THREADS"] = str(max(1, cores // WORKERS))

import torch  # noqa: E402  (after the thread count is set)

if WORKERS:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _keep_the_workers_share():
    """A test whose config sets torch's thread count (params.yaml's num_threads: 2) does not keep it for the
    worker's later tests."""
    yield
    if WORKERS and torch.get_num_threads() != int(os.environ["OMP_NUM_THREADS"]):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(items):
    """The slow end-to-end tests first (stable order otherwise): under `make test`'s two workers each starts on
    one of them at once, and the short tests fill the other worker's time."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture()
def smoke_params():
    from addlib.config import checks

    return checks.load(ROOT / "params.yaml", ROOT / "profiles" / "smoke.yaml")


@pytest.fixture()
def tiny_data():
    from tiny_models import tiny_digits

    return tiny_digits(16)
