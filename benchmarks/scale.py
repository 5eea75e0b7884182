"""The server at scale (issue 8): 10, 100 and 1,000 concurrent lightweight clients against one server.

For each client count, a fresh ``fedsqueeze server`` process (a >= 1 M-parameter model, Fashion-MNIST for
its evaluation) and ``fedsqueeze loadgen`` (pre-made updates, no training, one connection per client) run
a few rounds. Reported: updates ingested per second, submit latency p50/p99, errors, and the server's peak
RSS (``ru_maxrss`` of the reaped process: the kernel's high-water mark, nothing sampled), and the CPU time
the server and the load generator each spent per update (they share this machine's cores).

    .venv/bin/python benchmarks/scale.py [--clients 10 100 1000] [--rounds 3] [--uplink 'cluster(k=16)|zstd']
                                         [--malloc-arenas 2]

Writes ``benchmarks/results/scale.json`` and ``scale.md`` and prints the table.
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
from typing import Any, NamedTuple

from fedsqueeze.limits import DEFAULT_CHUNK_BYTES

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def wait_for_port(port_file: Path, server: subprocess.Popen[bytes], timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode} before listening")
        text = port_file.read_text().strip() if port_file.exists() else ""
        if text:
            return int(text)
        time.sleep(0.2)
    raise SystemExit("the server did not listen within 120 s")


class Reaped(NamedTuple):
    """What the kernel kept of a finished process."""

    returncode: int
    peak_rss: int          # bytes (Linux reports ru_maxrss in KiB)
    cpu_seconds: float     # user + system


def reap(process: subprocess.Popen[bytes], timeout: float = 120) -> Reaped:
    """Wait for ``process`` to exit; its exit status, peak RSS and CPU time from its rusage."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return Reaped(process.returncode, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime)
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{process.args[0]} was still running after {timeout:.0f} s")


def run_level(clients: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One fresh server and one load generator with ``clients`` clients; what both measured."""
    port_file, out = folder / f"server-{clients}.port", folder / f"load-{clients}.json"
    server_log = (folder / f"server-{clients}.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "fedsqueeze.apps", "server", "--insecure", "--listen", "127.0.0.1:0",
         "--port-file", str(port_file), "--data", "fashion-mnist", "--model", args.model,
         "--min-clients", str(clients), "--rounds", str(args.rounds), "--uplink", args.uplink,
         "--chunk-bytes", str(args.chunk_bytes), "--malloc-arenas", str(args.malloc_arenas),
         "--linger", "10", "--log-level", "WARNING"], stdout=server_log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        port = wait_for_port(port_file, server)
        loadgen = subprocess.Popen([sys.executable, "-m", "fedsqueeze.apps", "loadgen", "--server", f"127.0.0.1:{port}",
                                    "--clients", str(clients), "--chunk-bytes", str(args.chunk_bytes),
                                    "--out", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL)
        load = reap(loadgen, timeout=3600)
        served = reap(server)
    finally:
        for process in (server, loadgen):
            if process.poll() is None:
                process.kill()
    result = json.loads(out.read_text())
    result.update(loadgen_exit=load.returncode, server_exit=served.returncode, server_peak_rss=served.peak_rss,
                  server_cpu_seconds=served.cpu_seconds, loadgen_cpu_seconds=load.cpu_seconds)
    return result


def table(levels: list[dict[str, Any]], args: argparse.Namespace) -> str:
    base_rss = levels[0]["server_peak_rss"]
    lines = [f"Model `{args.model}`, uplink `{args.uplink}`, {levels[0]['update_payload_bytes']:,} payload bytes per "
             f"update in chunks of {args.chunk_bytes:,} B, {args.rounds} rounds per level, server malloc arenas "
             f"{args.malloc_arenas or 'glibc default'}, {os.cpu_count()} CPUs.",
             "",
             "| clients | updates | errors | updates/s | submit p50 s | submit p99 s | server peak RSS MiB "
             "| RSS vs first | server CPU ms / update | load generator CPU ms / update |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in levels:
        lines.append(f"| {r['clients']:,} | {r['updates']:,} | {sum(r['errors'].values())} | "
                     f"{r['updates_per_second']:.1f} | {r['submit_latency_p50']:.2f} | {r['submit_latency_p99']:.2f} | "
                     f"{r['server_peak_rss'] / 2**20:.0f} | {r['server_peak_rss'] / base_rss:.2f}x | "
                     f"{1000 * r['server_cpu_seconds'] / r['updates']:.1f} | "
                     f"{1000 * r['loadgen_cpu_seconds'] / r['updates']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="mlp(hidden=1024)", help="1,863,690 parameters on Fashion-MNIST")
    parser.add_argument("--uplink", default="cluster(k=16)|zstd")
    parser.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES, help="payload bytes per chunk")
    parser.add_argument("--malloc-arenas", type=int, default=2, help="the server's glibc malloc arenas (0: glibc's "
                        "default, 8 per core)")
    parser.add_argument("--name", default="scale", help="results/<name>.json and .md")
    args = parser.parse_args()
    levels = []
    with tempfile.TemporaryDirectory(prefix="fedsqueeze-scale-") as tmp:
        for clients in args.clients:
            print(f"=== {clients} clients", flush=True)
            levels.append(run_level(clients, args, Path(tmp)))
            r = levels[-1]
            print(f"{r['updates']} updates, errors {r['errors']}, {r['updates_per_second']:.1f} updates/s, "
                  f"p50 {r['submit_latency_p50']:.2f} s, p99 {r['submit_latency_p99']:.2f} s, "
                  f"server peak RSS {r['server_peak_rss'] / 2**20:.0f} MiB", flush=True)
    text = table(levels, args)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"model": args.model, "uplink": args.uplink, "rounds": args.rounds, "chunk_bytes": args.chunk_bytes,
         "malloc_arenas": args.malloc_arenas, "cpus": os.cpu_count(),
         "levels": levels}, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(text)
    failed = [r["clients"] for r in levels if r["errors"] or r["server_exit"] or r["loadgen_exit"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
