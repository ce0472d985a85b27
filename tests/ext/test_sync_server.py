"""peng3dnet.ext.sync.server: interest and snapshots to late joiners."""

from __future__ import annotations

from peng3dnet.ext.sync import distance_interest
from tests.helpers import wait_for


def test_late_join_gets_full_state_and_leave_disappears(world):
    s, game, _ = world.make()
    game.sync.start()
    a, sa = world.join(s)
    b, sb = world.join(s)
    assert sb.stats["full_snapshots"] == 1
    tick_b, view_b = sb.authoritative()
    assert sa.own in view_b and sb.own in view_b and "npc" in view_b
    b_eid = sb.own
    wait_for(lambda: b_eid in sa.view, what="A sees B")
    b.stop()
    b.join(5)
    game.sync.entities.pop(b_eid, None)  # the game removes the entity of a leaver
    wait_for(lambda: b_eid not in sa.view, what="B gone from A's view")


def test_interest_filter_hides_far_entities(world):
    s, game, _ = world.make(interest=distance_interest(50.0))
    game.sync.start()
    a, sa = world.join(s)
    with game.sync.lock:
        game.sync.entities["near"] = {"x": game.sync.entities[sa.own]["x"] + 10, "y": 0.0}
        game.sync.entities["far"] = {"x": 10_000.0, "y": 0.0}
    wait_for(lambda: "near" in sa.view, what="near entity")
    assert "far" not in sa.view
    with game.sync.lock:  # the far entity walks into view, then out again
        game.sync.entities["far"] = {"x": game.sync.entities[sa.own]["x"] + 20, "y": 0.0}
    wait_for(lambda: "far" in sa.view, what="far entity entering")
    with game.sync.lock:
        game.sync.entities["far"] = {"x": 10_000.0, "y": 0.0}
    wait_for(lambda: "far" not in sa.view, what="far entity leaving")
