"""Shared fixtures: a small synthetic dataset in the course layout, one-thread torch, the checkout's paths.

The checkout's root is importable through pyproject.toml's pytest settings (``pythonpath``)."""
import os
from pathlib import Path

import pytest
import torch

from coco import synthetic

ROOT = Path(__file__).resolve().parents[1]

COCO_MINI = ROOT.parent / "shared" / "coco-mini"

# A tiny, fast recipe for the mechanics tests (resume, checkpoints, freezing, caching): what they check does not
# need a model that learns well, only one that runs the same code paths.
TINY = dict(model="shufflenet_v2_x0_5", pretrained=False, image_size=32, batch_size=16, epochs=3, lr=3e-3,
            max_train_images=96, val_fraction=0.25, num_workers=0, progress=False, deterministic=True,
            head_dropout=0.1)


def cli_env(**extra):
    """Environment of a command-line subprocess: this checkout importable, one thread (see one_thread)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A small synthetic dataset (course layout), generated once per test session."""

    return synthetic.make_demo_dataset(tmp_path_factory.mktemp("demo") / "ms-coco", n_train=240, n_test=60,
                                       seed=0, long_side=96)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: its tensors are tiny, and on a shared 2-core machine two processes
    with two OpenMP threads each oversubscribe the cores and stall (measured ~7x slower). Restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
