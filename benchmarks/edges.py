"""Edge aggregators at scale (issue 28): 1,000 lightweight clients on one server, and the same 1,000 split over
2 and 4 edges in front of one root.

Each level starts a fresh root ``fedsqueeze server`` (a 1.86 M-parameter model, Fashion-MNIST for its
evaluation), the edges (``fedsqueeze edge``, none at level 0), and one ``fedsqueeze loadgen`` per serving
process, its share of the clients on its own connections (pre-made updates, no training). Reported from the
root's report: client updates per second end to end (updates over the rounds' seconds, from the root's round
start to its evaluated model, so an edge's relay, its sum's upload and the merge are inside), the root's
ingest bytes per round; from the kernel (``ru_maxrss`` of each reaped process): the root's and the largest
edge's peak RSS; from the load generators: errors. In process, for the on-paper extrapolation: what one
partial sum of the model costs to encode (an edge) and to decode, check and merge (the root), and its size.

    .venv/bin/python benchmarks/edges.py [--clients 1000] [--edges 0 2 4] [--rounds 3]

Writes ``benchmarks/results/edges.json`` and ``edges.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from scale import reap, wait_for_port  # this folder, as the script runs

from fedsqueeze.models import build_model, make_model_spec
from fedsqueeze.server.aggregation import WeightedSum
from fedsqueeze.server.partial_sums import accept_partial, encode_partial, expected_partial, partial_header
from fedsqueeze.tensors import float_state, model_spec
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import decode_tensor

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FEDSQUEEZE = [sys.executable, "-m", "fedsqueeze.apps"]


def serve(kind: str, name: str, folder: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    """A ``fedsqueeze server`` or ``edge`` on a free loopback port; the process and its port."""
    port_file = folder / f"{name}.port"
    log = (folder / f"{name}.log").open("wb")
    process = subprocess.Popen([*FEDSQUEEZE, kind, "--insecure", "--listen", "127.0.0.1:0", "--port-file",
                                str(port_file), "--linger", "10", "--log-level", "WARNING", *args],
                               stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    return process, wait_for_port(port_file, process)


def run_level(edges: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One root, ``edges`` edges (0: the clients join the root), the clients split evenly; what was measured."""
    folder.mkdir()
    root, root_port = serve("server", "root", folder, "--data", "fashion-mnist", "--model", args.model,
                            "--min-clients", str(edges or args.clients), "--rounds", str(args.rounds),
                            "--uplink", args.uplink, "--round-timeout", "1800", "--out", str(folder))
    processes = [root]
    try:
        targets = [root_port]
        if edges:
            targets = []
            for j in range(edges):
                edge, port = serve("edge", f"edge-{j}", folder, "--root", f"127.0.0.1:{root_port}",
                                   "--root-insecure", "--edge-id", f"edge-{j}",
                                   "--min-clients", str(args.clients // edges))
                processes.append(edge)
                targets.append(port)
        loads = []
        for j, port in enumerate(targets):
            share = args.clients // len(targets)
            loads.append(subprocess.Popen(
                [*FEDSQUEEZE, "loadgen", "--server", f"127.0.0.1:{port}", "--clients", str(share),
                 "--id-prefix", f"load{j}", "--out", str(folder / f"load-{j}.json")],
                cwd=ROOT, stdout=subprocess.DEVNULL))
        processes += loads
        reaped_loads = [reap(load, timeout=3600) for load in loads]
        reaped_edges = [reap(edge) for edge in processes[1:1 + edges]]
        reaped_root = reap(root)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    report = json.loads((folder / "report.json").read_text())
    rounds = report["rounds"]
    load_results = [json.loads((folder / f"load-{j}.json").read_text()) for j in range(len(targets))]
    errors: dict[str, int] = {}
    for result in load_results:
        for key, count in result["errors"].items():
            errors[key] = errors.get(key, 0) + count
    updates = sum(r["updates"] for r in rounds)
    return {
        "edges": edges, "clients": args.clients, "rounds": len(rounds), "updates": updates,
        "updates_per_second": updates / sum(r["seconds"] for r in rounds),
        "round_seconds": [r["seconds"] for r in rounds],
        "root_bytes_up_per_round": sum(r["bytes_up"] for r in rounds) / len(rounds),
        "root_bytes_down_per_round": sum(r["bytes_down"] for r in rounds) / len(rounds),
        "edge_bytes_up_per_round": sum(r["edge_bytes_up"] for r in rounds) / len(rounds),
        "root_peak_rss": reaped_root.peak_rss, "edge_peak_rss": max((e.peak_rss for e in reaped_edges), default=0),
        "root_cpu_seconds": reaped_root.cpu_seconds, "edge_cpu_seconds": sum(e.cpu_seconds for e in reaped_edges),
        "loadgen_cpu_seconds": sum(load.cpu_seconds for load in reaped_loads),
        "errors": errors, "update_payload_bytes": load_results[0]["update_payload_bytes"],
        "exits": [reaped_root.returncode, *(e.returncode for e in reaped_edges),
                  *(load.returncode for load in reaped_loads)],
    }


def partial_sum_cost(args: argparse.Namespace, clients: int = 250, repeats: int = 5) -> dict[str, float]:
    """Seconds an edge spends encoding one partial sum of ``clients`` updates, seconds a root spends decoding,
    checking and merging it (median of ``repeats``), and its encoded bytes; updates of N(0, 0.01) values."""
    model = build_model(make_model_spec(args.model, (1, 28, 28), 10), seed=0)
    specs = model_spec(float_state(model))
    generator = torch.Generator().manual_seed(0)
    edge_sum = WeightedSum()
    for _ in range(clients):
        edge_sum.add({name: torch.randn(spec.shape, generator=generator) * 0.01 for name, spec in specs.items()},
                     600.0)
    num_examples, partial = partial_header(edge_sum)
    partial.selected = clients
    header = pb.UpdateHeader(num_examples=num_examples, partial=partial)
    expected = expected_partial(specs)
    encode_times, merge_times = [], []
    for _ in range(repeats):
        start = time.process_time()
        encoded = encode_partial(edge_sum, specs)
        encode_times.append(time.process_time() - start)
        root_sum = WeightedSum()
        root_sum.merge(edge_sum)   # a root already holding a sum, so the timed merge adds rather than copies
        start = time.process_time()
        tensors = {t.spec.name: decode_tensor(t, expected[t.spec.name]) for t in encoded.tensors}
        root_sum.merge(accept_partial(header, tensors, max_examples=600))
        merge_times.append(time.process_time() - start)
    return {"clients_per_sum": clients, "encode_cpu_seconds": sorted(encode_times)[repeats // 2],
            "root_cpu_seconds_per_sum": sorted(merge_times)[repeats // 2],
            "partial_sum_bytes": sum(len(t.payload) for t in encoded.tensors)}


def table(levels: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"{args.clients:,} load-generator clients, model `{args.model}`, uplink `{args.uplink}` "
             f"({levels[0]['update_payload_bytes']:,} payload bytes per update), {args.rounds} rounds per level, "
             f"every process on one machine of {os.cpu_count()} CPUs.",
             "",
             "| edges | client updates | errors | updates/s end to end | root ingest MB / round "
             "| edge links MB up / round | root peak RSS MiB | largest edge peak RSS MiB "
             "| CPU s root / edges / loadgen |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in levels:
        lines.append(f"| {r['edges'] or 'none'} | {r['updates']:,} | {sum(r['errors'].values())} | "
                     f"{r['updates_per_second']:.1f} | {r['root_bytes_up_per_round'] / 1e6:.1f} | "
                     f"{r['edge_bytes_up_per_round'] / 1e6:.1f} | {r['root_peak_rss'] / 2**20:.0f} | "
                     f"{r['edge_peak_rss'] / 2**20:.0f} | {r['root_cpu_seconds']:.0f} / "
                     f"{r['edge_cpu_seconds']:.0f} / {r['loadgen_cpu_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--edges", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="mlp(hidden=1024)", help="1,863,690 parameters on Fashion-MNIST")
    parser.add_argument("--uplink", default="cluster(k=16)|zstd")
    parser.add_argument("--name", default="edges", help="results/<name>.json and .md")
    args = parser.parse_args()
    levels = []
    with tempfile.TemporaryDirectory(prefix="fedsqueeze-edges-") as tmp:
        for edges in args.edges:
            print(f"=== {edges} edges", flush=True)
            levels.append(run_level(edges, args, Path(tmp) / f"edges-{edges}"))
            r = levels[-1]
            print(f"{r['updates']} updates, errors {r['errors']}, {r['updates_per_second']:.1f} updates/s, root "
                  f"ingest {r['root_bytes_up_per_round'] / 1e6:.1f} MB/round, root peak RSS "
                  f"{r['root_peak_rss'] / 2**20:.0f} MiB", flush=True)
    cost = partial_sum_cost(args)
    text = table(levels, args) + (
        f"\nOne partial sum of {cost['clients_per_sum']} updates (in process, CPU seconds, median of 5): "
        f"{cost['partial_sum_bytes'] / 1e6:.2f} MB encoded, {cost['encode_cpu_seconds']:.3f} s to encode at the "
        f"edge, {cost['root_cpu_seconds_per_sum']:.3f} s for the root to decode, check and merge.\n")
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"clients": args.clients, "model": args.model, "uplink": args.uplink, "rounds": args.rounds,
         "cpus": os.cpu_count(), "levels": levels, "partial_sum": cost}, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(text)
    return 1 if any(r["errors"] or any(r["exits"]) for r in levels) else 0


if __name__ == "__main__":
    sys.exit(main())
