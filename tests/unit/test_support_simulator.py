"""The simulator that stands in for Meta runs ahead of the pipeline in the CPU's queue, so the
arrival times it records are not its own wait for a core (support.pipeline.start_simulator)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from support.pipeline import SIMULATOR_NICENESS, start_simulator


async def test_the_simulator_runs_ahead_of_the_tests_or_says_it_cannot(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        process, _ = await start_simulator(tmp_path)
    caught = [w for w in caught if "CAP_SYS_NICE" in str(w.message)]
    try:
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        theirs = os.getpriority(os.PRIO_PROCESS, process.pid)
        if caught:
            # Without CAP_SYS_NICE: as before, and the run's warnings say so.
            assert theirs == ours
        else:
            assert theirs == SIMULATOR_NICENESS < ours
    finally:
        process.terminate()
        process.wait(timeout=10)
