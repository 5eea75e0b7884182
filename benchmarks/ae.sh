#!/usr/bin/env bash
# Autoencoder evaluation (issue 5): Fashion-MNIST, 10 clients, 30 rounds (as the FedCompress benchmark).
# FedAvg vs AE at chunk/latent settings, with and without error feedback; every AE variant sends
# top-k corrections (0.05% of weights, float16) beside its latents. The FedAvg baseline is the
# FedCompress benchmark's run, reused when present. About 80 minutes per partition on 2 cores.
#   bash benchmarks/ae.sh [iid] [dirichlet]     (both when none given)
set -euo pipefail
cd "$(dirname "$0")/.."
correction="correction=sparse(ratio=0.0005)|dense(dtype=float16)|zstd"
for which in "${@:-iid dirichlet}"; do
  for part in $which; do
    partition=$( [[ $part == iid ]] && echo iid || echo "dirichlet(alpha=0.5)" )
    .venv/bin/python benchmarks/compare.py --name "ae_$part" --clients 10 --rounds 30 --partition "$partition" -- \
      "FedAvg=--epochs 2" \
      "AE chunk 3136 latent 16, EF=--epochs 2 --method ae($correction)" \
      "AE chunk 3136 latent 16, no EF=--epochs 2 --method ae($correction) --no-error-feedback" \
      "AE chunk 3136 latent 64, EF=--epochs 2 --method ae(latent=64,$correction)"
  done
done
