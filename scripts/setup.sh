#!/usr/bin/env bash
# Set up a fresh Debian machine for fedsqueeze: system packages, a virtualenv in .venv, the project.
#   scripts/setup.sh run    what a federated run needs
#   scripts/setup.sh test   that, plus the test tools
# Idempotent: a second call only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
purpose=${1:-run}

packages=(dataset-fashion-mnist)               # Fashion-MNIST IDX files, /usr/share/datasets/fashion-mnist
[[ $purpose == test ]] && packages+=(docker-compose iproute2)   # compose: validates docker-compose.yml without an engine; iproute2: ip netns, tc (tests/test_netlab.py)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  sudo=""; [[ $(id -u) == 0 ]] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first and pinned: 2.13.0 resolves to the CPU build on these machines; a looser
# requirement may pull a multi-GB CUDA build.
"${pip[@]}" -c constraints.txt torch==2.13.0
extras=""; [[ $purpose == test ]] && extras="[test]"
"${pip[@]}" -c constraints.txt -e ".${extras}"
# The example projects, each installed from its own folder as a user would (tests/test_examples.py uses them).
[[ $purpose == test ]] && "${pip[@]}" --no-deps ./examples/resnet ./examples/tabular ./examples/fedprox
exit 0
