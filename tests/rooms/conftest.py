"""The redis fixtures (redis_url, redis_ns) live in tests/conftest.py;
``rp`` is a RedisPresence in the test's own namespace."""

from __future__ import annotations

import pytest

from peng3dnet.ext.rooms.redispresence import RedisPresence


@pytest.fixture
def rp(redis_ns):
    url, ns = redis_ns
    p = RedisPresence(url, ns)
    yield p
    p.close()
