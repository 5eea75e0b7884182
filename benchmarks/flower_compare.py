"""fedsqueeze against Flower (issue 8), measured alike from outside: bytes on the network, time, memory, accuracy.

Every row runs the same task (model, initial weights, data partition, rounds, local epochs, seed) with each
client process in its own network namespace (``netlab.py``): the bytes are the kernel's counters of the
clients' links (headers and framing included), wall time per round is each server's own round clock (from
handing out the round to the evaluated global model), the server's peak RSS is ``ru_maxrss`` of the reaped
process. With ``--up-kbit/--down-kbit`` every link is rate-limited by tbf (slow edge links).

Rows: Flower FedAvg (its own venv, ``benchmarks/flower/setup.sh``), fedsqueeze FedAvg, FedCompress, AE, REFT.
Root only (network namespaces).

    .venv/bin/python benchmarks/flower_compare.py --name flower_fmnist [--clients 10 --rounds 30 --epochs 2]
        [--up-kbit 1000 --down-kbit 5000] [--rows flower,fedavg,...] [--logs DIR]

Writes ``benchmarks/results/<name>.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netlab import LinkLimits, NetLab, why_unavailable
from scale import reap

from fedsqueeze.apps.plotting import plot_systems
from fedsqueeze.apps.simulate import config_flags
from fedsqueeze.config import LOSSLESS_CODEC, ClientConfig, ServerConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FLOWER_PYTHON = ROOT / ".venv-flower" / "bin" / "python"
FLOWER_APP = ROOT / "benchmarks" / "flower" / "fedavg.py"
PORT = 50071
CORRECTION = "correction=sparse(ratio=0.005)|dense(dtype=float16)|zstd"


@dataclass(frozen=True)
class Row:
    label: str
    method: str              # fedsqueeze --method, or "flower"
    budgets: tuple[float, ...] = (1.0,)
    downlink: str = LOSSLESS_CODEC   # the autoencoder codes updates only; its row stacks a clustered downlink


ROWS = {
    "flower": Row("Flower FedAvg", "flower"),
    "fedavg": Row("fedsqueeze FedAvg", "fedavg"),
    # FedAvg's local epochs, delta uploads (the default) and no clustered fine-tuning: every row does the same
    # local work; at 10 rounds the fine-tuning epoch added nothing (0.8900 with it, 0.8906 without;
    # benchmarks/results/HISTORY.md).
    "fedcompress": Row("fedsqueeze FedCompress", "fedcompress(kd_epochs=2,cluster_epochs=0)"),
    # Served model at K = 16, uplink deltas still at 8: the clustered downlink is where FedCompress loses accuracy
    # (fc_where_seed*: 8-valued downlink alone -0.64 / -1.35 points, clustered deltas alone -0.09 / -0.04).
    "fedcompress_k16": Row("fedsqueeze FedCompress, K=16 down", "fedcompress(kd_epochs=2,k0=16,delta_k=8)"),
    "ae": Row("fedsqueeze AE + clustered downlink", f"ae(warmup=2,{CORRECTION})",   # short runs reach latents
              downlink="cluster(k=16)|zstd"),
    "reft": Row("fedsqueeze REFT", "reft", budgets=(1, 1, 1, 1, 0.3, 0.3, 0.3, 0.1, 0.1, 0.1)),
}


def wait_listening(port: int, server: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s")


def commands(row: Row, args: argparse.Namespace, lab: NetLab, out: Path) -> tuple[list[str], list[list[str]]]:
    """The server's command and each client's (inside its namespace) for one row."""
    common = {"data": args.data, "seed": args.seed, "log_level": "INFO" if args.logs else "WARNING"}
    if row.method == "flower":
        task = ["--data", args.data, "--model", args.model, "--seed", str(args.seed), "--epochs", str(args.epochs),
                "--partition", args.partition, "--partitions", str(args.clients)]
        server = [str(FLOWER_PYTHON), str(FLOWER_APP), "server", "--listen", f"0.0.0.0:{PORT}", "--clients",
                  str(args.clients), "--rounds", str(args.rounds), "--out", str(out / "report.json"), *task]
        clients = [[*lab.prefix_command(i), str(FLOWER_PYTHON), str(FLOWER_APP), "client", "--server",
                    lab.server_address(i, PORT), "--client-id", f"client-{i}", "--index", str(i), *task]
                   for i in range(args.clients)]
        return server, clients
    # Every client's upload is read at once (the default of 8 would make 2 of 10 wait a whole upload on slow links).
    server_config = ServerConfig(listen=f"0.0.0.0:{PORT}", insecure=True, model=args.model, method=row.method,
                                 rounds=args.rounds, min_clients=args.clients, concurrent_uploads=args.clients,
                                 epochs=args.epochs, out=str(out),
                                 downlink=row.downlink, **common)
    server = [sys.executable, "-m", "fedsqueeze.apps", "server", *config_flags(server_config)]
    clients = []
    for i in range(args.clients):
        client_config = ClientConfig(server=lab.server_address(i, PORT), insecure=True, client_id=f"client-{i}",
                                     partition=args.partition, num_partitions=args.clients, partition_index=i,
                                     threads=1, compute_budget=row.budgets[i % len(row.budgets)],
                                     **common)
        clients.append([*lab.prefix_command(i), sys.executable, "-m", "fedsqueeze.apps", "client",
                        *config_flags(client_config)])
    return server, clients


def run_row(row: Row, args: argparse.Namespace, limits: LinkLimits, folder: Path) -> dict[str, Any]:
    out = folder / re.sub(r"\W+", "_", row.label)   # one folder per row, even for two rows of one method
    out.mkdir(parents=True, exist_ok=True)
    with NetLab(args.clients, limits) as lab:
        server_cmd, client_cmds = commands(row, args, lab, out)
        processes = []
        try:
            server = subprocess.Popen(server_cmd, stdout=(out / "server.log").open("wb"),
                                      stderr=subprocess.STDOUT, cwd=ROOT)
            processes.append(server)
            wait_listening(PORT, server)
            before = lab.counters()
            started = time.monotonic()
            for i, command in enumerate(client_cmds):
                processes.append(subprocess.Popen(command, stdout=(out / f"client-{i}.log").open("wb"),
                                                  stderr=subprocess.STDOUT, cwd=ROOT))
            peak_rss = reap(server, args.timeout).peak_rss
            wall = time.monotonic() - started
            for client in processes[1:]:
                client.wait(60)
            traffic = lab.counters() - before
        finally:
            for p in processes:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    if server.returncode:
        raise RuntimeError(f"{row.label}: the server exited with {server.returncode}; see {out / 'server.log'}")
    report = json.loads((out / "report.json").read_text())
    seconds = [r["seconds"] for r in report["rounds"]]
    payload_kinds: dict[str, float] = {}   # a strategy's uplink split, e.g. the autoencoder's latents and corrections
    for record in report["rounds"]:
        for key, value in record.get("metrics", {}).items():   # Flower's report has none
            if key.startswith("payload_bytes_"):
                kind = key.removeprefix("payload_bytes_")
                payload_kinds[kind] = payload_kinds.get(kind, 0) + value
    return {"label": row.label, "link": limits.describe(), "final_accuracy": report["final_accuracy"],
            "accuracy": [r["accuracy"] for r in report["rounds"]], "round_seconds": seconds,
            "seconds_per_round": sum(seconds) / len(seconds), "wall_seconds": wall,
            "bytes_up": traffic.bytes_up, "bytes_down": traffic.bytes_down,
            "packets_up": traffic.packets_up, "packets_down": traffic.packets_down,
            "retransmitted_up": traffic.retransmitted_up, "retransmitted_down": traffic.retransmitted_down,
            "server_peak_rss": peak_rss, "uplink_payload_bytes_by_kind": payload_kinds}


def seconds_to(row: dict[str, Any], target: float) -> float | None:
    """Cumulative round seconds until accuracy first reached ``target``."""
    total = 0.0
    for accuracy, seconds in zip(row["accuracy"], row["round_seconds"], strict=True):
        total += seconds
        if accuracy >= target:
            return total
    return None


def table(rows: list[dict[str, Any]]) -> str:
    base = rows[0]
    target = 0.95 * base["final_accuracy"]
    lines = [f"Link: {base['link']}. Bytes: kernel counters of the clients' links (frames, headers on); resent: "
             f"TCP segments retransmitted up / down, included in the bytes. Target accuracy for 'time to target': "
             f"{target:.4f} (95% of {base['label']}'s final). Wall: from launching the clients to the server's exit "
             f"(start-up included; the round clocks start once every client is there).", "",
             "| row | final acc. | bytes up | bytes down | resent | total vs first | s/round | vs first "
             "| time to target s | wall s | server peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        reached = seconds_to(r, target)
        lines.append(
            f"| {r['label']} | {r['final_accuracy']:.4f} | {r['bytes_up']:,} | {r['bytes_down']:,} | "
            f"{r['retransmitted_up']} / {r['retransmitted_down']} | "
            f"{(base['bytes_up'] + base['bytes_down']) / (r['bytes_up'] + r['bytes_down']):.2f}x | "
            f"{r['seconds_per_round']:.1f} | {base['seconds_per_round'] / r['seconds_per_round']:.2f}x | "
            f"{'-' if reached is None else f'{reached:.0f}'} | {r['wall_seconds']:.0f} | "
            f"{r['server_peak_rss'] / 2**20:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="flower_compare")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--up-kbit", type=int, help="each client's uplink rate (tbf); unlimited if not given")
    parser.add_argument("--down-kbit", type=int, help="each client's downlink rate (tbf)")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds one row may take")
    parser.add_argument("--logs", type=Path, help="keep each row's logs and report in this folder (INFO logs: "
                        "the clients' download/training/encoding/upload seconds, the server's aggregation)")
    args = parser.parse_args()
    reason = why_unavailable()
    if reason:
        print(f"skipped: {reason}; this benchmark puts each client in its own network namespace", file=sys.stderr)
        return 0
    if "flower" in args.rows and not FLOWER_PYTHON.exists():
        raise SystemExit("no Flower virtualenv: run bash benchmarks/flower/setup.sh first")
    limits = LinkLimits(args.up_kbit, args.down_kbit)
    results = []
    with tempfile.TemporaryDirectory(prefix="fedsqueeze-flower-") as tmp:
        for key in args.rows.split(","):
            row = ROWS[key.strip()]
            print(f"=== {row.label} ({limits.describe()})", flush=True)
            results.append(run_row(row, args, limits, args.logs or Path(tmp)))
            r = results[-1]
            print(f"final accuracy {r['final_accuracy']:.4f}, up {r['bytes_up']:,} B, down {r['bytes_down']:,} B, "
                  f"{r['seconds_per_round']:.1f} s/round, server peak RSS {r['server_peak_rss'] / 2**20:.0f} MiB",
                  flush=True)
    text = table(results)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("name", "timeout", "logs")}
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"settings": settings, "rows": results}, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(text)
    plot_systems(results, RESULTS / f"{args.name}.png", f"{args.model}, {args.clients} clients, "
                 f"{args.rounds} rounds, {args.data}, {limits.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
