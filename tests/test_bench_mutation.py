"""bench.mutation's sampling helpers, value by value (the tool itself runs
by hand, out of CI)."""

from __future__ import annotations

from bench.mutation import choose_sample, wilson


def test_a_sample_is_the_same_for_the_same_seed_and_in_name_order():
    names = [f"m{i:03d}" for i in range(200)]
    a = choose_sample(list(reversed(names)), 10, 1)
    assert a == choose_sample(names, 10, 1) and a == sorted(a) and len(set(a)) == 10 and set(a) <= set(names)
    assert choose_sample(names, 10, 2) != a
    assert choose_sample(names[:5], 10, 1) == names[:5]  # never more than there are


def test_the_wilson_interval_matches_its_textbook_values():
    low, high = wilson(94, 120)
    assert (round(100 * low), round(100 * high)) == (70, 85)
    low, high = wilson(112, 120)
    assert (round(100 * low), round(100 * high)) == (87, 97)
    assert wilson(0, 0) == (0.0, 1.0)
    low, high = wilson(10, 10)
    assert high == 1.0 and 0.69 < low < 0.73
