"""Counting events in time windows, as Meta counts messages per second."""

from __future__ import annotations

from civicline.simulator.state import busiest_second

__all__ = ["busiest_second"]
