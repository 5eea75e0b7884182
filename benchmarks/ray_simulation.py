"""Simulating large populations on Ray: fedsqueeze's Ray backend against Flower's Simulation Engine.

Both run the same task on the same engine (Ray, one actor per core, ``client_resources`` cpus=1): the
Fashion-MNIST CNN, its initial weights, an IID partition into ``--population`` clients, ``--per-round``
clients sampled per round, one local epoch, the server evaluating on the test split every round. Rows:
Flower FedAvg (its own virtualenv, ``benchmarks/flower/setup.sh``) and fedsqueeze FedAvg at each
population, then fedsqueeze FedCompress and the autoencoder at the first population, for their bytes.

Figures: sampled clients trained per second of rounds (from each round's sampling to its evaluated model,
summed over rounds), the driver's peak RSS (``ru_maxrss``: server side and driver together), final
accuracy, and for fedsqueeze the bytes up and down against FedAvg's, counted by the metering rule.

    .venv/bin/python benchmarks/ray_simulation.py [--populations 1000 10000 --per-round 100 --rounds 5]

Writes ``benchmarks/results/<name>.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FLOWER_PYTHON = ROOT / ".venv-flower" / "bin" / "python"
FLOWER_SIMULATION = ROOT / "benchmarks" / "flower" / "simulation.py"
METHODS = {"fedavg": "fedavg", "fedcompress": "fedcompress", "ae": "ae"}


def simulate_on_ray(out: Path, *flags: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``fedsqueeze simulate --backend ray`` (Fashion-MNIST CNN, cpus=1 actors) with ``flags``; return its
    ``simulation.json`` and ``report.json``."""
    command = [sys.executable, "-m", "fedsqueeze.apps", "simulate", "--backend", "ray", "--out", str(out),
               "--data", "fashion-mnist", "--model", "cnn", "--client-resources", "cpus=1", "--log-level", "WARNING",
               *flags]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(flags)}: {result.stdout[-2000:]}{result.stderr[-2000:]}")
    return json.loads((out / "simulation.json").read_text()), json.loads((out / "report.json").read_text())


def run_fedsqueeze(method: str, population: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    started = time.monotonic()
    figures, report = simulate_on_ray(
        work / f"fedsqueeze-{method}-{population}", "--population", str(population), "--clients-per-round",
        str(args.per_round), "--rounds", str(args.rounds), "--method", METHODS[method], "--partition", "iid",
        "--epochs", "1", "--seed", str(args.seed))
    return {"system": "fedsqueeze", "method": method, "population": population,
            "clients_per_second": figures["clients_per_second"], "clients_trained": figures["clients_trained"],
            "round_seconds": figures["round_seconds"], "seconds": time.monotonic() - started,
            "driver_peak_rss_bytes": figures["driver_peak_rss_bytes"],
            "actor_peak_rss_bytes": figures["actor_peak_rss_bytes"],
            "final_accuracy": report["final_accuracy"], "bytes_up": report["bytes_up"],
            "bytes_down": report["bytes_down"]}


def run_flower(population: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / f"flower-{population}.json"
    command = [str(FLOWER_PYTHON), str(FLOWER_SIMULATION), "--population", str(population),
               "--per-round", str(args.per_round), "--rounds", str(args.rounds), "--seed", str(args.seed),
               "--out", str(out)]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, cwd=FLOWER_SIMULATION.parent)
    if result.returncode or not out.exists():
        raise RuntimeError(f"flower at {population}: {result.stdout[-2000:]}{result.stderr[-2000:]}")
    figures = json.loads(out.read_text())
    return {"system": "flower", "method": "fedavg", "population": population,
            "clients_per_second": figures["clients_per_second"], "clients_trained": figures["clients_trained"],
            "round_seconds": figures["round_seconds"], "seconds": time.monotonic() - started,
            "driver_peak_rss_bytes": figures["driver_peak_rss_bytes"], "final_accuracy": figures["final_accuracy"]}


def table(rows: list[dict[str, Any]]) -> str:
    fedavg = {r["population"]: r for r in rows if r["system"] == "fedsqueeze" and r["method"] == "fedavg"}
    lines = ["| system | method | population | clients/s | driver peak RSS | final accuracy | bytes up vs FedAvg "
             "| bytes down vs FedAvg |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = fedavg.get(r["population"])
        up = f"{base['bytes_up'] / r['bytes_up']:.1f}x fewer" if base and "bytes_up" in r else "-"
        down = f"{base['bytes_down'] / r['bytes_down']:.1f}x fewer" if base and "bytes_down" in r else "-"
        lines.append(f"| {r['system']} | {r['method']} | {r['population']:,} | {r['clients_per_second']:.1f} | "
                     f"{r['driver_peak_rss_bytes'] / 2**20:.0f} MiB | {r['final_accuracy']:.4f} | {up} | {down} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    fedavg = [r for r in rows if r["method"] == "fedavg"]
    labels = [f"{r['system']}\n{r['population']:,}" for r in fedavg]
    figure, (speed, memory) = plt.subplots(1, 2, figsize=(10, 4))
    colours = ["tab:orange" if r["system"] == "flower" else "tab:blue" for r in fedavg]
    speed.bar(labels, [r["clients_per_second"] for r in fedavg], color=colours)
    speed.set_ylabel("sampled clients trained per second")
    memory.bar(labels, [r["driver_peak_rss_bytes"] / 2**20 for r in fedavg], color=colours)
    memory.set_ylabel("driver peak RSS (MiB)")
    figure.suptitle("FedAvg on Ray: Fashion-MNIST CNN, 100 clients per round")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--populations", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", default="flower,fedavg,fedcompress,ae")
    parser.add_argument("--name", default="ray_simulation")
    args = parser.parse_args()
    wanted = args.rows.split(",")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fsq-bench-") as folder:
        work = Path(folder)
        for population in args.populations:
            if "flower" in wanted:
                rows.append(run_flower(population, args, work))
                print(rows[-1], flush=True)
            if "fedavg" in wanted:
                rows.append(run_fedsqueeze("fedavg", population, args, work))
                print(rows[-1], flush=True)
        for method in ("fedcompress", "ae"):
            if method in wanted:
                rows.append(run_fedsqueeze(method, args.populations[0], args, work))
                print(rows[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(table(rows))
    plot(rows, RESULTS / f"{args.name}.png")
    print(table(rows))


if __name__ == "__main__":
    main()
