"""Reading Postgres plans in tests: what an executed plan (EXPLAIN ANALYZE, FORMAT JSON) read."""

from __future__ import annotations

from typing import Any

# Nodes that read no table: a CTE's rows or a function's (unnest) were counted where made.
_NOT_TABLES = ("CTE Scan", "Function Scan")


def rows_read(plan: dict[str, Any]) -> int:
    """Rows the scans of an executed plan took from tables, every loop counted, those a
    filter or an index recheck threw away included: a scan that reads a whole table to keep
    sixteen rows read the whole table."""
    own = 0
    if "Scan" in plan["Node Type"] and plan["Node Type"] not in _NOT_TABLES:
        taken = (
            plan["Actual Rows"]
            + plan.get("Rows Removed by Filter", 0)
            + plan.get("Rows Removed by Index Recheck", 0)
        )
        own = int(taken) * int(plan["Actual Loops"])
    return own + sum(rows_read(child) for child in plan.get("Plans", []))
