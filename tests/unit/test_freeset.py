import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from openelb.ipam.freeset import FreeSet


def test_take_lowest_and_give_back_merges() -> None:
    fs = FreeSet(10, 19)
    assert fs.lowest() == 10 and fs.free == 10
    assert fs.take(10) and fs.take(15) and not fs.take(15) and not fs.take(30)
    assert fs.intervals() == [(11, 14), (16, 19)]
    assert fs.lowest() == 11 and fs.lowest_from(15) == 16 and fs.lowest_from(12) == 12
    assert fs.give(15) and not fs.give(15) and not fs.give(9)
    assert fs.intervals() == [(11, 19)]
    assert fs.give(10) and fs.intervals() == [(10, 19)] and fs.free == 10


def test_a_slash_64_is_one_interval() -> None:
    fs = FreeSet(0, 2**64 - 1)
    for _ in range(1000):
        low = fs.lowest()
        assert low is not None
        fs.take(low)
    assert fs.lowest() == 1000 and len(fs.intervals()) == 1 and fs.free == 2**64 - 1000


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 63)), max_size=200))
def test_matches_a_plain_set(ops: list[tuple[bool, int]]) -> None:
    fs = FreeSet(0, 63)
    used: set[int] = set()
    for take, v in ops:
        if take:
            assert fs.take(v) == (v not in used)
            used.add(v)
        else:
            assert fs.give(v) == (v in used)
            used.discard(v)
        free = sorted(set(range(64)) - used)
        assert fs.free == len(free)
        assert fs.lowest() == (free[0] if free else None)
        assert all(fs.is_free(x) == (x not in used) for x in range(64))
        ivs = fs.intervals()
        assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(ivs))  # disjoint and merged
