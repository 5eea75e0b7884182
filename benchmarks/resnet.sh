#!/usr/bin/env bash
# The ResNet example (examples/resnet, installed by scripts/setup.sh test) under every method: ResNet-8 with batch
# norm on Fashion-MNIST, 10 clients, 5 rounds, 1 local epoch, IID and Dirichlet(0.5). About 1 hour on 2 cores;
# finished runs are reused. Results: benchmarks/results/resnet/, narrative: docs/benchmarks/resnet.md.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-5}
model="resnet(depth=8,width=16)"
for partition in iid "dirichlet(alpha=0.5)"; do
  name=resnet8_$( [[ $partition == iid ]] && echo iid || echo dirichlet )
  .venv/bin/python benchmarks/compare.py --out benchmarks/results/resnet --name "$name" --clients 10 \
    --rounds "$rounds" --partition "$partition" -- \
    "FedAvg=--model $model" \
    "FedCompress=--model $model --method fedcompress(kd_epochs=2)" \
    "AE=--model $model --method ae(warmup=2)" \
    "REFT=--model $model --method reft --budgets 1,1,0.6,0.3,0.1"
done
