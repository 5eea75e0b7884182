"""A federation started from your own script with fedsqueeze's Python API: one server, two clients, FedProx
training and a scaled-sign uplink, each end in its own process as on separate machines.

    pip install ./examples/fedprox
    python examples/fedprox/run_federation.py --out /tmp/fedprox
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from pathlib import Path

from fedsqueeze.client import run_client
from fedsqueeze.config import ClientConfig, ServerConfig
from fedsqueeze.logs import setup_logging
from fedsqueeze.server import run_server


def server(out: Path, rounds: int) -> None:
    setup_logging("INFO", "text")
    run_server(ServerConfig(insecure=True, listen="127.0.0.1:0", port_file=str(out / "port"), out=str(out),
                            data="digits", model="mlp(hidden=64)", rounds=rounds, min_clients=2, linger=2.0,
                            trainer="fedprox(mu=0.01)", uplink="scaledsign|zstd"))


def client(port: int, index: int) -> None:
    setup_logging("INFO", "text")
    code = run_client(ClientConfig(server=f"127.0.0.1:{port}", insecure=True, client_id=f"edge-{index}",
                                   data="digits", partition="dirichlet(alpha=0.5)", num_partitions=2,
                                   partition_index=index, threads=1))
    raise SystemExit(code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/fedprox"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "port").unlink(missing_ok=True)
    serving = multiprocessing.Process(target=server, args=(args.out, args.rounds))
    serving.start()
    port_file = args.out / "port"
    while not (port_file.exists() and port_file.read_text().strip()):
        serving.join(0.1)
        if not serving.is_alive():
            raise SystemExit(f"the server exited with code {serving.exitcode}")
    port = int(port_file.read_text())
    clients = [multiprocessing.Process(target=client, args=(port, i)) for i in range(2)]
    for c in clients:
        c.start()
    for process in (*clients, serving):
        process.join()
    report = json.loads((args.out / "report.json").read_text())
    print(f"final accuracy {report['final_accuracy']:.4f} after {len(report['rounds'])} rounds, "
          f"{report['bytes_up']:,} bytes up")
    raise SystemExit(max(p.exitcode or 0 for p in (*clients, serving)))


if __name__ == "__main__":
    main()
