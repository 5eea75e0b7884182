"""How long the server's event loop keeps an operator waiting while a method works (issue 24).

A ``fedsqueeze server`` process runs REFT (the method with the heaviest ``configure``: it ranks channels and
cuts one sub-model per tier each round) on Fashion-MNIST with the default CNN, two client daemons train, and
this process calls ``GetStatus`` every 20 ms for the whole run. Every strategy hook runs on the server's
strategy thread, so what is left of the latency is the GIL the hooks share with the loop.

    .venv/bin/python benchmarks/loop_latency.py [--method reft] [--rounds 2] [--name loop_latency]

Writes ``benchmarks/results/<name>.json`` and prints the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.v1 import federation_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import RESULTS, wait_for_port  # noqa: E402  (benchmarks/ is not a package)


def fedsqueeze(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "fedsqueeze.apps", *args], stdout=out, stderr=subprocess.STDOUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="reft")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default="loop_latency")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        port_file = folder / "server.port"
        server = fedsqueeze("server", "--insecure", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
                            "--data", "fashion-mnist", "--model", "cnn", "--method", args.method, "--rounds",
                            str(args.rounds), "--min-clients", "2", "--linger", "1", log=folder / "server.log")
        port = wait_for_port(port_file, server)
        clients = [fedsqueeze("client", "--insecure", "--server", f"127.0.0.1:{port}", "--client-id", f"c{i}",
                              "--data", "fashion-mnist", "--num-partitions", "20", "--partition-index", str(i),
                              "--threads", "1", log=folder / f"c{i}.log") for i in range(2)]
        latencies = []
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            operator = pb_grpc.OperatorStub(channel)
            while server.poll() is None:
                started = time.monotonic()
                try:
                    operator.GetStatus(pb.StatusRequest(), timeout=10)
                except grpc.RpcError:
                    break
                latencies.append(time.monotonic() - started)
                time.sleep(0.02)
        for process in [server, *clients]:
            process.wait(60)
        rounds = (folder / "server.log").read_text().count(" done: accuracy")
    latencies.sort()
    result = {"method": args.method, "rounds": rounds, "calls": len(latencies),
              "median_ms": round(1000 * latencies[len(latencies) // 2], 1),
              "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1),
              "max_ms": round(1000 * latencies[-1], 1)}
    print(json.dumps(result))
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
