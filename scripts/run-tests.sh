#!/usr/bin/env bash
# `make test`'s pytest runs: every test, in two phases.
#
#  1. Every test that needs only its own vhost and database (tests/support/isolation.py), on
#     CIVICLINE_TEST_WORKERS pytest-xdist workers (default 2), a module per worker at a time
#     so that a module's pipeline is started once.
#  2. The tests marked `alone`, one at a time with nothing else running: they stop and start
#     the machine's RabbitMQ or Postgres, or sweep up environments that look abandoned.
#
# usage: scripts/run-tests.sh [pytest arguments...]   (make test PYTEST_ARGS="...")
# The arguments go to both phases, so they may not choose markers or workers (-m, -n): the
# phases are made of those. pytest's exit status 5 means a phase selected no test (the
# arguments chose only the other kind); the run fails only when neither phase ran a test, or
# when one failed.
set -uo pipefail

pytest=${PYTEST:-.venv/bin/pytest}
workers=${CIVICLINE_TEST_WORKERS:-2}

for arg in "$@"; do
	case $arg in
	-m* | -n* | --numprocesses* | --dist*)
		echo "run-tests: '$arg': make test chooses the markers and workers of its two phases;" \
			"run .venv/bin/pytest directly to choose your own" >&2
		exit 2
		;;
	esac
done

"$pytest" -n "$workers" --dist loadfile -m "not alone" "$@"
shared=$?
if [ "$shared" -ne 0 ] && [ "$shared" -ne 5 ]; then
	echo "run-tests: the first phase failed (pytest exit $shared); the tests marked 'alone'" \
		"were not run" >&2
	exit "$shared"
fi
"$pytest" -m alone "$@"
alone=$?
if [ "$alone" -eq 5 ] && [ "$shared" -eq 5 ]; then
	echo "run-tests: no test was selected (PYTEST_ARGS: $*)" >&2
	exit 5
fi
if [ "$alone" -eq 5 ]; then
	exit 0
fi
exit "$alone"
