"""peng3dnet.ext.sync.algebra, value by value (pure): distance() and the
interest filter away from the origin, interpolate() exactly at sample
times, lerp_view() with new entities first."""

from __future__ import annotations

import math

import pytest

from peng3dnet.ext.sync.algebra import distance, distance_interest, interpolate, lerp_view


@pytest.mark.parametrize(
    "a,b,d",
    [
        ({"x": 4.0, "y": 6.0}, {"x": 1.0, "y": 2.0}, 5.0),
        ({"x": 1.0, "y": 2.0}, {"x": 4.0, "y": 6.0}, 5.0),
        ({"x": 3.0}, {}, 3.0),
        ({}, {"x": 3.0}, 3.0),
        ({"y": 4.0}, {}, 4.0),
        ({}, {"y": 4.0}, 4.0),
        ({}, {}, 0.0),
        ({"x": 2, "y": "5"}, {"x": "-1", "y": 1}, 5.0),  # numbers as float() reads them
        ({"x": None}, {}, 0.0),
        ({"x": 1.0, "y": [1]}, {}, 0.0),
        ({}, {"y": "north"}, 0.0),
    ],
)
def test_distance(a, b, d):
    assert distance(a, b) == d


def test_interest_measures_from_the_own_entity_wherever_it_is():
    f = distance_interest(5.0)
    ents = {
        "me": {"x": 10.0, "y": 20.0},
        "in": {"x": 13.0, "y": 24.0},  # exactly 5 away
        "out": {"x": 13.0, "y": 24.5},
        "mirror": {"x": -10.0, "y": -20.0},  # where a sum instead of a difference would put it
        "no_y": {"x": 10.0},  # y is 0: 20 away
    }
    assert [eid for eid, st in ents.items() if f(1, eid, st, ents, "me")] == ["me", "in"]
    flat = {"me": {"x": 10.0}, "near": {"x": 12.0}, "up": {"x": 10.0, "y": 6.0}, "down": {"x": 10.0, "y": -4.0}}
    assert [eid for eid, st in flat.items() if f(1, eid, st, flat, "me")] == ["me", "near", "down"]
    low = {"me": {"x": 0.0, "y": -3.0}, "edge": {"x": 4.0}, "beyond": {"x": 4.1}}  # no y: y = 0, 5 away
    assert [eid for eid, st in low.items() if f(1, eid, st, low, "me")] == ["me", "edge"]


def test_interest_with_other_coordinate_keys():
    f = distance_interest(1.0, x="a", y="b")
    ents = {"me": {"a": 5.0, "b": 5.0, "x": 100.0}, "near": {"a": 5.5, "b": 5.5}, "far": {"a": 5.0, "b": 7.0, "x": 100.0}}
    assert [eid for eid, st in ents.items() if f(1, eid, st, ents, "me")] == ["me", "near"]


def test_everything_is_visible_while_the_own_entity_is_not_in_the_entities():
    f = distance_interest(1.0)
    ents = {"far": {"x": 1000.0, "y": 0.0}}
    assert f(1, "far", ents["far"], ents, "me")
    assert f(1, "far", ents["far"], ents, None)


def test_the_own_entity_is_visible_whatever_its_position():
    f = distance_interest(1.0)
    for me in ({"x": None}, {"x": math.nan, "y": 0.0}, {"x": 0.0, "y": "high"}):
        ents = {"me": me}
        assert f(1, "me", me, ents, "me")


def test_interpolate_exactly_at_the_first_and_last_times():
    v0 = {"e": {"x": 1e16, "s": "a"}, "old": {"x": 0.0}}
    v1 = {"e": {"x": 1.0, "s": "b"}, "new": {"x": 0.0}}
    buf = [(1.0, v0), (2.0, v1)]
    assert interpolate(buf, 1.0) == v0  # not a blend at a = 0 (which would drop "old", take "s": "b")
    assert interpolate(buf, 2.0) == v1  # not a blend at a = 1 (1e16 + (1 - 1e16) rounds to 0.0)
    assert interpolate([(1.0, v0)], 5.0) == v0 and interpolate([(1.0, v0)], 0.0) == v0


def test_interpolate_at_an_inner_sample_time_blends_toward_the_next_one():
    buf = [
        (0.0, {"e": {"x": 0.0, "s": "a"}}),
        (1.0, {"e": {"x": 10.0, "s": "b"}}),
        (2.0, {"e": {"x": 20.0, "s": "c"}}),
    ]
    assert interpolate(buf, 1.0) == {"e": {"x": 10.0, "s": "c"}}  # lerp(v1, v2, 0): v1's numbers, v2's other values
    assert interpolate(buf, 1.5) == {"e": {"x": 15.0, "s": "c"}}
    assert interpolate(buf, 0.25) == {"e": {"x": 2.5, "s": "b"}}


def test_interpolate_after_the_last_time_of_three_is_the_last_view():
    buf = [(0.0, {"e": {"x": 0.0}}), (1.0, {"e": {"x": 1.0}}), (2.0, {"e": {"x": 2.0}})]
    assert interpolate(buf, 2.0) == {"e": {"x": 2.0}} and interpolate(buf, 7.0) == {"e": {"x": 2.0}}


def test_interpolate_at_a_nan_time_is_empty():
    # (times out of order still have a pair around any t between the first and the last)
    assert interpolate([(0.0, {"e": {}}), (3.0, {"e": {}}), (1.0, {"e": {}}), (4.0, {"e": {}})], 2.0) == {"e": {}}
    assert interpolate([(0.0, {"e": {}}), (1.0, {"e": {}})], math.nan) == {}


def test_lerp_view_keeps_every_new_entity_in_any_order():
    v0 = {"b": {"x": 0.0}}
    v1 = {"a": {"x": 5.0}, "b": {"x": 10.0}, "c": {"x": 1.0}}
    assert lerp_view(v0, v1, 0.5) == {"a": {"x": 5.0}, "b": {"x": 5.0}, "c": {"x": 1.0}}


def test_lerp_view_blends_only_floats_from_numbers():
    v0 = {"e": {"f": 2, "g": True, "h": "1", "i": 1.0, "j": 4.0}}
    v1 = {"e": {"f": 4.0, "g": 3.0, "h": 3.0, "i": 3, "k": 9.0}}
    assert lerp_view(v0, v1, 0.5) == {"e": {"f": 3.0, "g": 3.0, "h": 3.0, "i": 3, "k": 9.0}}
