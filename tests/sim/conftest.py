"""Fixtures shared by the simulator's tests."""

import pytest
from tiny_scenario import write_tiny


@pytest.fixture
def tiny(tmp_path):
    """The tiny scenario's TOML file."""
    return write_tiny(tmp_path)
