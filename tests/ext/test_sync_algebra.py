"""peng3dnet.ext.sync.algebra: the delta law, exactness on the wire's terms,
interpolation and the interest filter (pure: no sockets, threads or sleeps)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from peng3dnet.ext.sync import apply_delta, checksum, diff_views, distance_interest
from peng3dnet.ext.sync.algebra import canonical, differs, distance, interpolate, lerp_view
from tests.test_layering import imported_modules

values = st.one_of(st.integers(-1000, 1000), st.floats(allow_nan=False, width=32), st.text(max_size=5), st.booleans())
views = st.dictionaries(st.text(min_size=1, max_size=4), st.dictionaries(st.text(min_size=1, max_size=3), values, max_size=4), max_size=6)


@settings(max_examples=300, deadline=None)
@given(views, views)
def test_delta_roundtrip(a, b):
    assert apply_delta(a, diff_views(a, b)) == b
    assert checksum(apply_delta(a, diff_views(a, b))) == checksum(b)


# Scalars that Python calls equal and msgpack keeps apart, drawn often, plus
# the rest of msgpack's scalars.  Small id and key alphabets make the two
# views overlap, so updates and removals of keys are exercised, not only
# whole entities coming and going.
tricky = st.sampled_from([0, 0.0, -0.0, 1, 1.0, True, False, -1, -1.0, None, "", b""])
scalars = st.one_of(
    tricky,
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.binary(max_size=5),
)
eids = st.sampled_from(["a", "b", "c", "d", "é", ""]) | st.text(max_size=3)
keys = st.sampled_from(["x", "y", "z", "_leave"]) | st.text(max_size=3)
flat_views = st.dictionaries(eids, st.dictionaries(keys, scalars, max_size=4), max_size=5)


def exact(view):
    """A form in which 1, 1.0 and True differ, and 0.0 and -0.0 do."""
    return [[eid, [(k, type(v).__name__, repr(v)) for k, v in items]] for eid, items in canonical(view)]


@settings(max_examples=500, deadline=None)
@given(flat_views, flat_views)
def test_delta_law_is_exact_for_msgpack_scalars(base, new):
    delta = diff_views(base, new)
    got = apply_delta(base, delta)
    assert got == new
    assert exact(got) == exact(new)  # not just ==: types and signs of zero survive
    assert checksum(got) == checksum(new)


@settings(max_examples=200, deadline=None)
@given(flat_views)
def test_diff_of_a_view_with_itself_is_empty(view):
    assert diff_views(view, {eid: dict(st) for eid, st in view.items()}) == {}


@settings(max_examples=200, deadline=None)
@given(flat_views, flat_views)
def test_apply_delta_leaves_its_arguments_alone(base, new):
    before_base, before_new = exact(base), exact(new)
    delta = diff_views(base, new)
    apply_delta(base, delta)
    assert exact(base) == before_base and exact(new) == before_new


def test_delta_keeps_signed_zero_and_int_float():
    a = {"e": {"v": 0.0, "n": 1}}
    b = {"e": {"v": -0.0, "n": 1.0}}
    d = diff_views(a, b)
    assert d == {"u": {"e": {"v": -0.0, "n": 1.0}}}
    assert checksum(apply_delta(a, d)) == checksum(b)


def test_differs_is_about_the_encoding():
    assert differs(1, 1.0) and differs(1, True) and differs(0.0, -0.0)
    assert not differs(2.5, 2.5) and not differs("a", "a") and not differs(-0.0, -0.0)


def test_delta_parts():
    base = {"a": {"x": 1, "y": 2}, "b": {"x": 0}, "c": {}}
    new = {"a": {"x": 1, "z": 3}, "b": {"x": 0}, "d": {"x": 9}}
    assert diff_views(base, new) == {"n": {"d": {"x": 9}}, "u": {"a": {"z": 3}}, "k": {"a": ["y"]}, "d": ["c"]}


def test_lerp_and_interpolate():
    v0 = {"e": {"x": 0.0, "n": 1, "s": "a"}, "gone": {"x": 1.0}}
    v1 = {"e": {"x": 10.0, "n": 3, "s": "b"}, "new": {"x": 5.0}}
    half = lerp_view(v0, v1, 0.5)
    assert half == {"e": {"x": 5.0, "n": 3, "s": "b"}, "new": {"x": 5.0}}  # only floats blend
    buf = [(1.0, v0), (2.0, v1)]
    assert interpolate(buf, 0.0) == v0 and interpolate(buf, 3.0) == v1  # no extrapolation
    assert interpolate(buf, 1.25)["e"]["x"] == 2.5


def test_distance_interest():
    f = distance_interest(10.0)
    ents = {"me": {"x": 0.0, "y": 0.0}, "near": {"x": 6.0, "y": 8.0}, "far": {"x": 6.0, "y": 8.1}, "nopos": {"hp": 1}}
    assert f(1, "near", ents["near"], ents, "me")
    assert not f(1, "far", ents["far"], ents, "me")
    assert f(1, "nopos", ents["nopos"], ents, "me")
    assert f(1, "far", ents["far"], ents, None)  # no own entity: sees everything
    assert math.isclose(math.hypot(6.0, 8.0), 10.0)


def test_a_missing_y_is_zero_for_the_interest_filter_and_for_distance():
    f = distance_interest(1.0)
    ents = {"me": {"x": 0.0}, "flat": {"x": 0.5}, "up": {"x": 0.0, "y": 1.5}}
    assert f(1, "flat", ents["flat"], ents, "me")  # 0.5 away: both y are 0
    assert not f(1, "up", ents["up"], ents, "me")
    assert distance({"x": 3.0}, {"y": 4.0}) == 5.0
    assert distance({"y": -4.0}, {"x": -3.0}) == 5.0
    assert distance({"x": "a"}, {"x": 1.0}) == 0.0  # not a number


def test_interpolation_between_snapshots_half_a_second_apart():
    buffer = [(0.0, {"e": {"x": 0.0}}), (0.5, {"e": {"x": 10.0}}), (1.0, {"e": {"x": 20.0}})]
    assert interpolate(buffer, 0.25) == {"e": {"x": 5.0}}
    assert interpolate(buffer, 0.875) == {"e": {"x": 17.5}}
    assert interpolate(buffer, 0.5) == {"e": {"x": 10.0}}
    assert interpolate(buffer, -1.0) == {"e": {"x": 0.0}} and interpolate(buffer, 9.0) == {"e": {"x": 20.0}}


def test_algebra_is_pure():
    import peng3dnet.ext.sync.algebra as algebra

    assert imported_modules(algebra.__file__) <= {"__future__", "math", "collections", "typing"}
