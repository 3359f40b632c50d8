from __future__ import annotations

import os
from pathlib import Path

import pytest

from pathoseg.data.synthetic import SyntheticConfig, write_synthetic

ROOT = Path(__file__).resolve().parents[1]
GLAS = Path(os.environ.get("PATHOSEG_GLAS", ROOT / ".." / "shared" / "data" / "glas")).resolve()


@pytest.fixture(scope="session")
def glas_dir() -> Path:
    if not (GLAS / "Grade.csv").is_file():
        pytest.skip("GlaS not present at ../shared/data/glas")
    return GLAS


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small synthetic images/ + masks/ folder shared by several tests."""
    return write_synthetic(tmp_path_factory.mktemp("synth"), n=12, seed=3, cfg=SyntheticConfig(size=(96, 128)))
