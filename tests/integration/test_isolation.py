"""A run that was killed leaves its vhosts and databases behind; the next run drops them
before it starts (their quorum queues hold the broker's file handles), and leaves those of a
run still going alone."""

from __future__ import annotations

import pytest

from support.isolation import (
    add_vhost,
    create_database,
    delete_vhost,
    drop_abandoned_environments,
    drop_database,
    list_test_databases,
    list_vhosts,
    unique_name,
)

pytestmark = pytest.mark.integration

DEAD_PID = 4_194_303  # above any pid the kernel hands out by default (pid_max 4194304)


async def test_what_a_killed_run_left_is_dropped_and_a_live_run_keeps_its_own() -> None:
    killed = f"civicline_test_killed_{DEAD_PID}_abc123"
    live = unique_name("live")  # made by this process: a running pytest
    for name in (killed, live):
        add_vhost(name)
        await create_database(name, migrated=False)
    try:
        dropped = await drop_abandoned_environments()
        assert killed in dropped
        assert live not in dropped
        assert killed not in list_vhosts()
        assert killed not in await list_test_databases()
        assert live in list_vhosts()
        assert live in await list_test_databases()
    finally:
        left = list_vhosts()
        for name in (killed, live):
            if name in left:
                delete_vhost(name)
            await drop_database(name)
