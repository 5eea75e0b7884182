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
# the suite faster; tests are dealt one at a time, those marked xdist_group (the Ray tests) to one worker.
.venv/bin/python -m coverage run -m pytest --numprocesses auto --dist loadgroup "$@"
.venv/bin/python -m coverage combine --quiet
exec .venv/bin/python -m coverage report
