"""A connection's counters (ConnectionStats) and state (Link), value by
value: the clock readings behind ``connected_since`` and ``last_seen``,
``as_dict()``, and what a new Link starts with."""

from __future__ import annotations

import time

from peng3dnet.constants import SSLSEC_NONE, STATE_INIT
from peng3dnet.link import ConnectionStats, Link


def test_new_stats_count_nothing_and_were_seen_when_made():
    before = time.time()
    stats = ConnectionStats()
    after = time.time()
    assert (stats.bytes_in, stats.bytes_out, stats.packets_in, stats.packets_out) == (0, 0, 0, 0)
    assert stats.rtt is None
    assert before - 0.01 <= stats.connected_since <= after + 0.01
    assert stats.last_seen == stats.connected_since


def test_last_seen_follows_the_monotonic_clock_of_the_last_read():
    stats = ConnectionStats()
    stats._seen = stats._since + 12.5  # what the network thread sets on a read
    assert abs(stats.last_seen - (stats.connected_since + 12.5)) < 1e-6


def test_as_dict_holds_every_counter_with_its_value():
    stats = ConnectionStats()
    stats.bytes_in, stats.bytes_out, stats.packets_in, stats.packets_out, stats.rtt = 11, 22, 3, 4, 0.05
    stats._seen = stats._since + 2.0
    assert stats.as_dict() == {
        "bytes_in": 11,
        "bytes_out": 22,
        "packets_in": 3,
        "packets_out": 4,
        "rtt": 0.05,
        "connected_since": stats.connected_since,
        "last_seen": stats.last_seen,
    }


class _Owner:
    def on_receive(self, pid, msg):  # overridden hooks are called per packet
        pass


def test_a_new_link_starts_empty_unlimited_and_at_the_first_state():
    owner = _Owner()
    link = Link("proto", "chan", owner, 5)  # type: ignore[arg-type]
    assert (link.proto, link.chan, link.cid) == ("proto", "chan", 5) and link.owner is owner
    assert link.queued == 0 and (link.n_in, link.n_out, link.resume_at) == (0, 0, 0)
    assert link.strict_keys is True  # until the peer says it takes other map keys (0.1.x does not)
    assert link.lib_state == STATE_INIT and link.sslsec == SSLSEC_NONE
    assert (link.rate_p, link.rate_b, link.rate_t) == (0.0, 0.0, 0.0)
    assert link.infl_t == link.stats._since  # the decompression budget refills from the connection's start
    assert link.session is None and link.auth is None and link.auth_timer is None and link.group is None
    assert not (link.eof or link.local_closed or link.vanished or link.polite or link.app_closed
                or link.plain or link.tls_server or link.hs_pending)
    assert (link.acct, link.infl_counted, link.hb_sent) == (0, 0, 0.0)
    assert link.held_at == 0.0  # never held: silence counts from the last read alone
    assert link.on_recv is not None and link.on_send is None
    link.n_in, link.n_out = 9, 4
    assert link.queued == 5


class _Sender:
    def on_send(self, ptype, data):  # overridden: shown every packet sent
        pass


def test_a_new_link_takes_the_owners_overridden_send_hook():
    owner = _Sender()
    link = Link("proto", "chan", owner, 5)  # type: ignore[arg-type]
    assert link.on_send == owner.on_send and link.on_recv is None


def test_set_type_notes_which_hooks_the_types_class_overrides():
    from peng3dnet.conntypes import ClassicConnectionType, ConnectionType

    class Sends(ConnectionType):
        def send(self, msg, pid, cid=None):
            return True

    class Receives(ConnectionType):
        def receive(self, msg, pid, flags, cid):
            return True

    link = Link("proto", "chan", _Owner(), 5)  # type: ignore[arg-type]
    assert link.ctobj is None and (link.ct_send, link.ct_recv) == (False, False)
    for ct, expected in ((Sends(None), (True, False)), (Receives(None), (False, True)),
                         (ClassicConnectionType(None), (False, False)), (None, (False, False))):
        link.set_type(ct)
        assert link.ctobj is ct and (link.ct_send, link.ct_recv) == expected
    obj = Sends(None)
    obj.receive = lambda *a: False  # an instance attribute is not the class's: not looked at (as before)
    link.set_type(obj)
    assert (link.ct_send, link.ct_recv) == (True, False)
