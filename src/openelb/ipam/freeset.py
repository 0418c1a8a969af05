"""Free addresses of one range as sorted, disjoint intervals.

Lowest-free is O(1) and taking or returning a given address is O(log n) to find (plus a list
splice), whatever the range size: a /64 starts as a single interval, not 2**64 bits. This is what
lets a pool of any size allocate without scanning (Go OpenELB and MetalLB walk addresses).
"""

from __future__ import annotations

from bisect import bisect_right


class FreeSet:
    def __init__(self, first: int, last: int) -> None:
        if last < first:
            raise ValueError("empty range")
        self.first = first
        self.last = last
        self._starts: list[int] = [first]
        self._ends: list[int] = [last]
        self.free = last - first + 1

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def _find(self, value: int) -> int:
        """Index of the interval holding `value`, or -1."""
        i = bisect_right(self._starts, value) - 1
        if i >= 0 and self._ends[i] >= value:
            return i
        return -1

    def is_free(self, value: int) -> bool:
        return self._find(value) >= 0

    def lowest(self) -> int | None:
        return self._starts[0] if self._starts else None

    def lowest_from(self, value: int) -> int | None:
        """The lowest free address >= value."""
        i = self._find(value)
        if i >= 0:
            return value
        i = bisect_right(self._starts, value)
        return self._starts[i] if i < len(self._starts) else None

    def take(self, value: int) -> bool:
        """Mark `value` used; False if it was not free (or outside the range)."""
        i = self._find(value)
        if i < 0:
            return False
        s, e = self._starts[i], self._ends[i]
        if s == e:
            del self._starts[i]
            del self._ends[i]
        elif value == s:
            self._starts[i] = s + 1
        elif value == e:
            self._ends[i] = e - 1
        else:
            self._ends[i] = value - 1
            self._starts.insert(i + 1, value + 1)
            self._ends.insert(i + 1, e)
        self.free -= 1
        return True

    def give(self, value: int) -> bool:
        """Return `value` to the free set; False if it was already free or outside the range."""
        if not self.first <= value <= self.last or self._find(value) >= 0:
            return False
        i = bisect_right(self._starts, value)  # intervals [0, i) start before value
        joins_left = i > 0 and self._ends[i - 1] == value - 1
        joins_right = i < len(self._starts) and self._starts[i] == value + 1
        if joins_left and joins_right:
            self._ends[i - 1] = self._ends[i]
            del self._starts[i]
            del self._ends[i]
        elif joins_left:
            self._ends[i - 1] = value
        elif joins_right:
            self._starts[i] = value
        else:
            self._starts.insert(i, value)
            self._ends.insert(i, value)
        self.free += 1
        return True

    def intervals(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))
