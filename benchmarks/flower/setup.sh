#!/usr/bin/env bash
# The Flower comparison's own virtualenv, .venv-flower: flwr needs protobuf < 7, fedsqueeze's stubs need 7.
# fedsqueeze goes in without its dependencies, for its protobuf-free model builders, datasets and partitioner.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ -x .venv-flower/bin/python ]] || python3 -m venv .venv-flower
.venv-flower/bin/pip install -q torch==2.13.0          # the CPU build first, so flwr cannot pull a CUDA one
.venv-flower/bin/pip install -q "flwr[simulation]==1.41.0" "torch==2.13.0"   # [simulation]: its Ray backend
.venv-flower/bin/pip install -q --no-deps -e .
.venv-flower/bin/python -c "import flwr, google.protobuf; print('flwr', flwr.__version__, 'protobuf', google.protobuf.__version__)"
