"""Shared fixtures: the project root on sys.path and a small synthetic dataset in the course layout."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

COCO_MINI = ROOT.parent / "shared" / "coco-mini"


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A small synthetic dataset (course layout), generated once per test session."""
    import synthetic

    return synthetic.make_demo_dataset(tmp_path_factory.mktemp("demo") / "ms-coco", n_train=240, n_test=60,
                                       seed=0, long_side=96)
