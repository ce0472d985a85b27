"""Bug hunt 3: the Redis directory through an outage (a LagProxy in front of
our redis-server stands for the network between them)."""

from __future__ import annotations

import pytest

from peng3dnet.ext.rooms import Room
from peng3dnet.ext.rooms.redispresence import RedisPresence
from peng3dnet.tools.lagproxy import LagProxy
from tests.rooms import room_server


def _proxied(redis_url):
    host_port = redis_url.split("//", 1)[1].rsplit("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = LagProxy(("127.0.0.1", 0), (host, int(port))).start()
    return proxy, f"redis://127.0.0.1:{proxy.addr[1]}/0"


@pytest.mark.timeout(60)
def test_stop_during_a_redis_outage_with_a_subscribed_channel_completes(redis_ns, net):
    url, ns = redis_ns
    proxy, purl = _proxied(url)
    presence = RedisPresence(purl, ns)
    try:
        rooms = room_server(net, presence, Room)
        rooms.subscribe("chat")
        proxy.stop()  # Redis unreachable from now on
        from tests.helpers import wait_for

        # the outage is noticed (the subscription's connection dropped), as
        # it is in any outage longer than a moment
        wait_for(lambda: presence._pubsub.connection._sock is None, timeout=10, what="the subscription lost")
        rooms.stop()  # documented: Redis errors are logged; stopping must still finish
        assert rooms._channels == set()
    finally:
        presence.close()
