"""A population study on the Ray backend: FedAvg, FedCompress and the autoencoder on 10,000 non-IID clients.

Each method runs ``fedsqueeze simulate --backend ray`` on the same task and seed: the Fashion-MNIST CNN,
``--population`` clients holding ``dirichlet(alpha=A,by=client)`` shares of the train split (each client
draws its class mix; the by-class split cannot give 10,000 clients an example each), ``--per-round``
sampled per round, ``--epochs`` local epochs (default 5: with six examples a client, one epoch is one
step, and FedAvg sat near 13% after six rounds against 47% with five), every device on a ``fixed``
profile (this machine's speed, ``--up-mbps`` up, ``--down-mbps`` down). The server evaluates on the test
split every round.

Figures per method: final and best accuracy, bytes up and down (metering rule) and their ratio to
FedAvg's, the simulated time of the whole run and to each ``--targets`` accuracy (the sum of simulated
round times up to the first round that reaches it; ``null`` when no round does), and real seconds.

    .venv/bin/python benchmarks/ray_study.py [--population 10000 --per-round 100 --rounds 30]

Writes ``benchmarks/results/<name>.json``, ``.md`` and ``.png`` (accuracy against simulated time).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402
from ray_simulation import simulate_on_ray  # noqa: E402  (this folder, as the script runs)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def run(method: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One method's simulation; returns its figures and per-round curve."""
    started = time.monotonic()
    figures, report = simulate_on_ray(
        work / method, "--population", str(args.population), "--clients-per-round", str(args.per_round),
        "--rounds", str(args.rounds), "--method", method, "--partition", f"dirichlet(alpha={args.alpha},by=client)",
        "--epochs", str(args.epochs), "--seed", str(args.seed), "--device-profiles",
        f"fixed(speed=1,up_mbps={args.up_mbps},down_mbps={args.down_mbps})")
    curve = [{"round": r["round"], "accuracy": r["accuracy"], "simulated_seconds": r["simulated_seconds"]}
             for r in figures["rounds"]]
    return {"method": method, "final_accuracy": report["final_accuracy"],
            "best_accuracy": max(r["accuracy"] for r in curve), "bytes_up": report["bytes_up"],
            "bytes_down": report["bytes_down"], "simulated_seconds": figures["simulated_seconds"],
            "time_to": {str(t): time_to(curve, t) for t in args.targets}, "real_seconds": time.monotonic() - started,
            "client_state_bytes": figures["client_state_bytes"], "stopped_because": figures["stopped_because"],
            "curve": curve}


def time_to(curve: list[dict[str, Any]], target: float) -> float | None:
    """Simulated seconds until the first round whose model reaches ``target`` accuracy."""
    elapsed = 0.0
    for point in curve:
        elapsed += point["simulated_seconds"]
        if point["accuracy"] >= target:
            return elapsed
    return None


def table(rows: list[dict[str, Any]], targets: list[float]) -> str:
    base = next(r for r in rows if r["method"] == "fedavg")
    heads = " | ".join(f"simulated time to {t:.0%}" for t in targets)
    lines = [f"| method | final accuracy | best | bytes up | up vs FedAvg | bytes down | down vs FedAvg | "
             f"simulated run | {heads} |", "|---" * (7 + 1 + len(targets)) + "|"]
    for r in rows:
        reached = " | ".join("not reached" if r["time_to"][str(t)] is None else f"{r['time_to'][str(t)]:,.0f} s"
                             for t in targets)
        lines.append(f"| {r['method']} | {r['final_accuracy']:.4f} | {r['best_accuracy']:.4f} | "
                     f"{r['bytes_up'] / 1e6:,.1f} MB | {base['bytes_up'] / r['bytes_up']:.1f}x | "
                     f"{r['bytes_down'] / 1e6:,.1f} MB | {base['bytes_down'] / r['bytes_down']:.1f}x | "
                     f"{r['simulated_seconds']:,.0f} s | {reached} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(7, 4))
    for r in rows:
        elapsed, points = 0.0, []
        for point in r["curve"]:
            elapsed += point["simulated_seconds"]
            points.append((elapsed / 60, point["accuracy"]))
        axis.plot(*zip(*points), marker=".", label=r["method"])
    axis.set_xlabel(f"simulated minutes ({args.up_mbps} Mbit/s up, {args.down_mbps} Mbit/s down)")
    axis.set_ylabel("test accuracy")
    axis.set_title(f"{args.population:,} clients, {args.per_round} per round, Dirichlet({args.alpha}) by client")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=10000)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--up-mbps", type=float, default=1.0)
    parser.add_argument("--down-mbps", type=float, default=10.0)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.7, 0.85])
    parser.add_argument("--methods", default="fedavg,fedcompress,ae")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="ray_study")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fsq-study-") as folder:
        for method in args.methods.split(","):
            rows.append(run(method, args, Path(folder)))
            print({k: v for k, v in rows[-1].items() if k != "curve"}, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(table(rows, args.targets))
    plot(rows, args, RESULTS / f"{args.name}.png")
    print(table(rows, args.targets))


if __name__ == "__main__":
    main()
