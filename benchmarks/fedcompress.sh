#!/usr/bin/env bash
# FedCompress evaluation (issue 4): Fashion-MNIST, 10 clients, 30 rounds, IID and Dirichlet(0.5).
# FedAvg gets the same local work as FedCompress (2 epochs = 1 epoch + 1 clustered fine-tuning epoch),
# as in the authors' code. About 3 hours on a 2-core machine; finished runs are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
for partition in iid "dirichlet(alpha=0.5)"; do
  name=fedcompress_$( [[ $partition == iid ]] && echo iid || echo dirichlet )
  .venv/bin/python benchmarks/compare.py --name "$name" --clients 10 --rounds 30 --partition "$partition" -- \
    "FedAvg=--epochs 2" \
    "FedCompress=--epochs 1 --method fedcompress(kd_epochs=2)" \
    "FedCompress, no server distillation=--epochs 1 --method fedcompress(distill=false)"
done
# The client's recipe at 10 rounds with 1 local epoch, the setting of the Flower comparison (about 35 min):
# K = 8 or 10 with the clustered fine-tuning epoch, and no fine-tuning after 1 or 2 local epochs.
.venv/bin/python benchmarks/compare.py --name fc_k --clients 10 --rounds 10 --partition iid -- \
  "K8=--epochs 1 --method fedcompress(kd_epochs=2)" \
  "K10=--epochs 1 --method fedcompress(kd_epochs=2,k0=10)" \
  "E2C0=--epochs 2 --method fedcompress(kd_epochs=2,cluster_epochs=0)" \
  "E1C0=--epochs 1 --method fedcompress(kd_epochs=2,cluster_epochs=0)"
