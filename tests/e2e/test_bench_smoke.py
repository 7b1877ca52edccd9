"""`make bench` works from a clone: a few seconds of the surge drill (issue 6) at a low rate,
so a change that breaks the drill fails here, not on the night someone needs its numbers.
Its figures are not asserted: performance is measured by the drill, never by a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_surge_drill_runs_and_reports_every_message_accounted_for(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "surge.py"), "--rates", "20",
         "--step-seconds", "2", "--ceiling-seconds", "0.5", "--drain-seconds", "60",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "surge.json").read_text())
    (step,) = report["steps"]
    assert step["citizen_messages"] > 0
    assert (step["lost"], step["pending_after_drain"], step["duplicates"]) == (0, 0, 0)
    assert step["unanswered"] == 0
    assert set(report["ceilings"]) == {
        "publish_confirm",
        "publish_confirm_ingress_route",
        "consume_ack",
        "insert",
    }
    # Ingress alone, as one replica and as two: every post answered 200 by a replica.
    for alone, replicas in (
        (report["ingress_alone"], 1),
        (report["ingress_alone_two_replicas"], 2),
    ):
        assert alone["replicas"] == replicas
        assert alone["accepted_per_s"] > 0
        assert alone["failed"] == 0
    assert report["final_line"].startswith("surge: ")
    assert report["final_line"] in result.stdout
    assert (tmp_path / "surge.md").read_text().count("| offered/s |") >= 1
