#!/usr/bin/env bash
# REFT evaluation (issue 6): Fashion-MNIST, 10 clients in three tiers, 20 rounds, a skewed split where the
# three weakest devices (budget 0.1 -> width 0.25) hold 90% of classes 7-9, which the four strong ones
# (budget 1 -> width 1) and three medium ones (budget 0.3 -> width 0.5) rarely see.
# Rows: FedAvg if every device could train the full model (upper bound); FedAvg on the strong devices
# only (what you do without REFT); REFT without and with ensemble distillation; REFT with a clustered
# uplink (FedCompress's wire format on the sub-models). About 80 minutes on 2 cores; finished runs are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
budgets="--budgets 1,1,1,1,0.3,0.3,0.3,0.1,0.1,0.1"
.venv/bin/python benchmarks/compare.py --name reft_skewed --clients 10 --rounds 20 \
  --partition "skewed(last=3,classes=3,share=0.9)" -- \
  "FedAvg, all devices full model=--epochs 2" \
  "FedAvg, weak devices dropped=--epochs 2 --clients 4 --partitions 10" \
  "REFT, no distillation=--epochs 2 $budgets --method reft(distill=false)" \
  "REFT=--epochs 2 $budgets --method reft" \
  "REFT, cluster16 uplink=--epochs 2 $budgets --method reft --uplink cluster(k=16)|zstd"
