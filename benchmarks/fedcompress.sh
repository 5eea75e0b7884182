#!/usr/bin/env bash
# FedCompress evaluation (issue 4): Fashion-MNIST, 10 clients, 30 rounds, IID and Dirichlet(0.5).
# FedAvg gets the same local work as FedCompress (2 epochs = 1 epoch + 1 clustered fine-tuning epoch),
# as in the authors' code. About 2.5 hours on a 2-core machine; finished runs are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
for partition in iid "dirichlet(alpha=0.5)"; do
  name=fedcompress_$( [[ $partition == iid ]] && echo iid || echo dirichlet )
  .venv/bin/python benchmarks/compare.py --name "$name" --clients 10 --rounds 30 --partition "$partition" -- \
    "FedAvg=--epochs 2" \
    "FedCompress=--epochs 1 --method fedcompress(kd_epochs=2)" \
    "FedCompress, no server distillation=--epochs 1 --method fedcompress(distill=false)"
done
