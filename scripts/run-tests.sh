#!/usr/bin/env bash
# The test suite on a fresh machine: set up, then every test under coverage (pytest exits non-zero if none
# ran), then the coverage floor (fail_under in pyproject.toml). The docs build, the reference drift checks, the
# layer contract and lint are tests in the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export COVERAGE_FILE="$PWD/.coverage"   # one data file wherever a test's processes run
rm -f .coverage .coverage.*
# One worker per core: most end-to-end tests wait on processes and sockets, so two workers on two cores run
# the suite faster. Whole files go to a worker (--dist loadfile): module fixtures are built once, and tests
# that share fixed names (the network-namespace tests) never run at once.
.venv/bin/python -m coverage run -m pytest --numprocesses auto --dist loadfile "$@"
.venv/bin/python -m coverage combine --quiet
exec .venv/bin/python -m coverage report
