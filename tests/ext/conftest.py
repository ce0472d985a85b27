"""Fixtures of the ext tests (``net`` and the others come from tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.ext.sync_world import World


@pytest.fixture
def world():
    """A :class:`~tests.ext.sync_world.World`, closed after the test."""
    w = World()
    yield w
    w.close()
