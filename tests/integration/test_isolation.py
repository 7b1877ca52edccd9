"""A run that was killed leaves its vhosts and databases behind; the next run drops them
before it makes its own (their quorum queues hold the broker's file handles), and leaves
alone those of a run still going and those another machine made."""

from __future__ import annotations

import subprocess

import aio_pika
import asyncpg
import pytest

from support.isolation import (
    HOST_TAG,
    add_vhost,
    create_database,
    create_environment,
    delete_vhost,
    drop_abandoned_environments,
    drop_database,
    drop_environment,
    list_test_databases,
    list_vhosts,
    unique_name,
)

pytestmark = pytest.mark.integration


def ended_pid() -> int:
    """The pid of a process that has ended, as a killed run's has."""
    process = subprocess.Popen(["sleep", "0"])
    process.wait()
    return process.pid


# Alone: a sweep elsewhere in the run (another worker's first, or the surge drill's) would
# take the killed run's leftovers first.
@pytest.mark.alone
async def test_what_a_killed_run_left_is_dropped_and_nothing_else() -> None:
    killed = f"civicline_test_killed_{HOST_TAG}_{ended_pid()}_abc123"
    live = unique_name("live")  # made by this process: a running pytest
    elsewhere = f"civicline_test_elsewhere_{'0' * 6}_{ended_pid()}_abc123"  # another machine's
    names = (killed, live, elsewhere)
    for name in names:
        add_vhost(name)
        await create_database(name, migrated=False)
    try:
        dropped = await drop_abandoned_environments()
        assert killed in dropped
        assert killed not in list_vhosts()
        assert killed not in await list_test_databases()
        for kept in (live, elsewhere):
            assert kept not in dropped
            assert kept in list_vhosts()
            assert kept in await list_test_databases()
    finally:
        left = list_vhosts()
        for name in names:
            if name in left:
                delete_vhost(name)
            await drop_database(name)


async def test_a_new_environment_is_usable_as_soon_as_it_is_made() -> None:
    """add_vhost imports the vhost and its permissions in one rabbitmqctl call; the broker
    must have applied both when that call returns, since every test connects right after."""
    environment = await create_environment("usable")
    try:
        connection = await aio_pika.connect(environment.amqp_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue("isolation.probe", exclusive=True)
            await channel.default_exchange.publish(aio_pika.Message(b"here"), queue.name)
            message = await queue.get(timeout=5)
            assert message.body == b"here"
        database = await asyncpg.connect(environment.database_url)
        try:
            assert await database.fetchval("SELECT count(*) FROM schema_migrations") > 0
        finally:
            await database.close()
    finally:
        await drop_environment(environment)
    assert environment.name not in list_vhosts()
