import os
from pathlib import Path

import pytest

from ci_skips import pytest_sessionfinish, pytest_terminal_summary  # noqa: F401  (skips fail CI)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def embedded_data(tmp_path_factory) -> Path:
    """A small copy of the embedded dataset (real H.264 files), made once per test session."""
    from data.synthetic import ensure_synthetic

    return ensure_synthetic(tmp_path_factory.mktemp("embedded") / "data", num_videos=48, frames=8)
