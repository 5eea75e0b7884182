#!/usr/bin/env bash
# REFT evaluation (issues 6 and 29): Fashion-MNIST, 10 clients in three tiers, 20 rounds, a skewed split where
# the three weakest devices (budget 0.1 -> width 0.25) hold 90% of classes 7-9, which the four strong ones
# (budget 1 -> width 1) and three medium ones (budget 0.3 -> width 0.5) rarely see.
# Rows: FedAvg if every device could train the full model (upper bound); FedAvg on the strong devices only
# (what you do without REFT); REFT with in-place distillation (each wider client also trains the narrowest
# tier's nested sub-network towards its own outputs) at weight 1 with and without server distillation, at
# weight 0.25 (the default since these runs), and off (inplace_kd=0). The two weight-1 rows ran as
# `--method reft` and `reft(distill=false)` when 1 was the default, so this script reruns them.
# About 2.5 hours on 2 cores; finished runs are reused.
# The table before in-place distillation existed (reft_skewed.*) and its commands are in results/HISTORY.md.
set -euo pipefail
cd "$(dirname "$0")/.."
budgets="--budgets 1,1,1,1,0.3,0.3,0.3,0.1,0.1,0.1"
.venv/bin/python benchmarks/compare.py --name reft_inplace --clients 10 --rounds 20 \
  --partition "skewed(last=3,classes=3,share=0.9)" -- \
  "FedAvg, all devices full model=--epochs 2" \
  "FedAvg, weak devices dropped=--epochs 2 --clients 4 --partitions 10" \
  "REFT, in-place distillation=--epochs 2 $budgets --method reft(inplace_kd=1)" \
  "REFT, in-place distillation, no server distillation=--epochs 2 $budgets --method reft(distill=false,inplace_kd=1)" \
  "REFT, in-place distillation 0.25=--epochs 2 $budgets --method reft(inplace_kd=0.25)" \
  "REFT, no in-place distillation=--epochs 2 $budgets --method reft(inplace_kd=0)"
