#!/usr/bin/env bash
# Autoencoder evaluation (issue 5): Fashion-MNIST, 10 clients, 30 rounds (as the FedCompress benchmark).
# IID: FedAvg vs AE at two latent sizes, and with and without error feedback. Dirichlet(0.5): FedAvg vs
# the IID run's best setting (each 30-round run is ~28 min on 2 cores, so the sweep runs once).
# Every AE variant sends top-k corrections (0.05% of weights, float16) beside its latents. The FedAvg
# baselines are the FedCompress benchmark's runs, reused when present, as is every finished run.
#   bash benchmarks/ae.sh [iid] [dirichlet]     (both when none given)
set -euo pipefail
cd "$(dirname "$0")/.."
correction="correction=sparse(ratio=0.0005)|dense(dtype=float16)|zstd"
best="AE chunk 3136 latent 16, EF=--epochs 2 --method ae($correction)"
for part in ${@:-iid dirichlet}; do
  case $part in
    iid) .venv/bin/python benchmarks/compare.py --name ae_iid --clients 10 --rounds 30 --partition iid -- \
           "FedAvg=--epochs 2" "$best" \
           "AE chunk 3136 latent 16, no EF=--epochs 2 --method ae($correction) --no-error-feedback" \
           "AE chunk 3136 latent 64, EF=--epochs 2 --method ae(latent=64,$correction)" ;;
    dirichlet) .venv/bin/python benchmarks/compare.py --name ae_dirichlet --clients 10 --rounds 30 \
           --partition "dirichlet(alpha=0.5)" -- "FedAvg=--epochs 2" "$best" ;;
    *) echo "unknown partition $part (iid or dirichlet)" >&2; exit 2 ;;
  esac
done
# Control for the Flower table's AE row (10 rounds, 1 epoch, seed 0): its 0.5% top-k correction and clustered
# downlink on plain FedAvg, with neither autoencoder nor warm-up (about 5 min).
.venv/bin/python benchmarks/compare.py --name ae_correction_only --clients 10 --rounds 10 --partition iid --seed 0 -- \
  "FedAvg, 0.5% top-k up, 16 clusters down=--epochs 1 --uplink sparse(ratio=0.005)|dense(dtype=float16)|zstd --downlink cluster(k=16)|zstd"
# The whole run (issue 29): what the latents ride on made cheaper. Warm-up updates clustered to 4 values
# instead of 16 (error feedback carries the rest), decoders with 16 hidden units instead of 64 (a linear
# autoencoder with 16 latents has rank 16 either way) sent clustered to 16 values (the client codes
# against the decoder as the server decodes it). Seed 0, the first tables' FedAvg runs.
lean="warmup_codec=cluster(k=4)|zstd,hidden=16,decoder_codec=cluster(k=16)|zstd"
for part in iid "dirichlet(alpha=0.5)"; do
  .venv/bin/python benchmarks/compare.py --name "ae_whole_run_$( [[ $part == iid ]] && echo iid || echo dirichlet )" \
    --clients 10 --rounds 30 --partition "$part" -- \
    "FedAvg=--epochs 2" "$best" "AE lean warm-up and decoders, EF=--epochs 2 --method ae($correction,$lean)"
done
