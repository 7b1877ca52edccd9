"""Counting events in time windows, as Meta counts messages per second."""

from __future__ import annotations


def busiest_second(times: list[float]) -> int:
    """The most events in any half-open one-second window."""
    ordered = sorted(times)
    busiest, start = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= 1.0:
            start += 1
        busiest = max(busiest, end - start + 1)
    return busiest
