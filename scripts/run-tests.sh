#!/usr/bin/env bash
# `make test`'s pytest runs: every test, in two phases.
#
#  1. Every test that needs only its own vhost and database (tests/support/isolation.py), on
#     CIVICLINE_TEST_WORKERS pytest-xdist workers (default 2), a module per worker at a time
#     so that a module's pipeline is started once.
#  2. The tests marked `servers`, alone: they stop and start the machine's RabbitMQ or
#     Postgres itself, which no other test may see.
#
# usage: scripts/run-tests.sh [pytest arguments...]   (make test PYTEST_ARGS="...")
# pytest's exit status 5 means a phase selected no test (PYTEST_ARGS chose only the other
# kind); the run fails only when neither phase ran a test, or when one failed.
set -uo pipefail

pytest=${PYTEST:-.venv/bin/pytest}
workers=${CIVICLINE_TEST_WORKERS:-2}

"$pytest" -n "$workers" --dist loadfile -m "not servers" "$@"
shared=$?
if [ "$shared" -ne 0 ] && [ "$shared" -ne 5 ]; then
	exit "$shared"
fi
"$pytest" -m servers "$@"
alone=$?
if [ "$alone" -eq 5 ] && [ "$shared" -eq 5 ]; then
	echo "run-tests: no test was selected (PYTEST_ARGS: $*)" >&2
	exit 5
fi
if [ "$alone" -eq 5 ]; then
	exit 0
fi
exit "$alone"
