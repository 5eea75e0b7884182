#!/usr/bin/env bash
# Issue 8 in one command: fedsqueeze against Flower on the same task, on unlimited and on slow links, and the
# server at 10 / 100 / 1,000 concurrent clients. Root only for the link runs (network namespaces).
#   bash benchmarks/flower.sh [rounds] [slow-link rounds]
# Tables and plots: benchmarks/results/flower_{fast,slow,slow_mlp}.{md,json,png}, scale{,_1m,_64k}.{md,json}.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}
slow_rounds=${2:-5}
bash benchmarks/flower/setup.sh
task=(--clients 10 --epochs 1 --data fashion-mnist --partition iid)
.venv/bin/python benchmarks/flower_compare.py --name flower_fast --rounds "$rounds" "${task[@]}"
slow_rows=flower,fedavg,fedcompress,ae,reft   # the rows the recorded slow-link tables ran
.venv/bin/python benchmarks/flower_compare.py --name flower_slow --rounds "$slow_rounds" "${task[@]}" \
  --rows "$slow_rows" --up-kbit 1000 --down-kbit 5000
# Slow links where bytes, not the 2 shared cores, bound the round: a 1.86 M-parameter MLP trains in 2 s per
# client-epoch (the CNN in 6.5 s) and its float32 update takes 60 s on the 1 Mbit/s uplink.
.venv/bin/python benchmarks/flower_compare.py --name flower_slow_mlp --rounds "$slow_rounds" "${task[@]}" \
  --rows "$slow_rows" --model "mlp(hidden=1024)" --up-kbit 1000 --down-kbit 5000
.venv/bin/python benchmarks/scale.py
.venv/bin/python benchmarks/scale.py --clients 10 1000 --chunk-bytes 1048576 --name scale_1m
.venv/bin/python benchmarks/scale.py --clients 10 1000 --chunk-bytes 65536 --name scale_64k
