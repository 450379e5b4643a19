from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from node.config import config_from_dict

JUDGES = ("dciodvfy", "dcm2niix", "dcmdump")


def pytest_configure(config):
    missing = [tool for tool in JUDGES if shutil.which(tool) is None]
    if missing:
        raise pytest.UsageError(
            f"missing judge tools {missing}: run ./scripts/test, which installs them"
        )


@pytest.fixture
def config():
    """Built-in defaults, as with no config file."""
    return config_from_dict({})


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "out"
