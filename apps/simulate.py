"""``fedsqueeze simulate``: a whole federation on one machine.

The process backend (the default) starts a real server process and N real
client processes on loopback: everything crosses real gRPC connections,
exactly as between machines, and simulate follows progress through the
Operator API. The Ray backend (``apps/ray_backend.py``) runs a population of
virtual clients on a pool of Ray actors against the server side in-process.
Either way the server writes ``OUT/report.json`` after each round and simulate
draws ``OUT/report.png``; logs go to ``OUT/logs``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from fedsqueeze.apps.plotting import plot_accuracy_vs_bytes
from fedsqueeze.config import ClientConfig, ServerConfig, SimulateConfig
from fedsqueeze.data.datasets import load_split
from fedsqueeze.server.history import metrics_dict
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.v1 import federation_pb2_grpc as pb_grpc

STARTUP_TIMEOUT = 120.0


def config_flags(config: Any) -> list[str]:
    """The command-line flags that reproduce a config dataclass (None fields left out)."""
    flags = []
    for f in fields(config):
        value = getattr(config, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            flags += [flag, str(value)]
    return flags


def _spawn(command: str, config: Any, log_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSQUEEZE_")}
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "fedsqueeze.apps", command, *config_flags(config)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)


def _wait_for_port(port_file: Path, server: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode} before serving")
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text())
        time.sleep(0.1)
    raise RuntimeError(f"the server did not start serving within {STARTUP_TIMEOUT:.0f} s")


def last_error(log_path: Path) -> str:
    """The last ERROR line of a process's text log (its one-line reason for exiting), or its last line."""
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if " ERROR " in line or line.startswith("SystemExit")]
    return (errors or lines or ["(empty log)"])[-1][:500]


def _number(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.4f}"


def _round_line(r: dict[str, Any]) -> str:
    return (f"round {r['round']:>3}: accuracy {_number(r['accuracy'])}  loss {_number(r['loss'])}  "
            f"up {r['bytes_up'] / 1e6:8.3f} MB  down {r['bytes_down'] / 1e6:8.3f} MB  "
            f"{r['updates']}/{r['selected']} updates  {r['seconds']:5.1f} s")


def _follow(target: str, server: subprocess.Popen[bytes], clients: list[subprocess.Popen[bytes]],
            config: SimulateConfig, console: Console, logs: Path) -> tuple[int, list[str]]:
    """Show progress until the server exits (stop it if every client has died).

    Returns the rounds shown and one line per client that exited with an error (printed as it happens).
    """
    columns = (TextColumn("round {task.completed}/{task.total}"), BarColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn())
    shown = 0
    failures: dict[int, str] = {}
    clients_gone_since: float | None = None
    with grpc.insecure_channel(target) as channel, Progress(*columns, console=console) as progress:
        stub = pb_grpc.OperatorStub(channel)
        bar = progress.add_task("rounds", total=config.rounds, info="starting")
        while server.poll() is None:
            try:
                status = stub.GetStatus(pb.StatusRequest(include_history=True), timeout=5)
            except grpc.RpcError:
                time.sleep(0.5)
                continue
            for r in status.history[shown:]:
                progress.console.print(_round_line(metrics_dict(r)))
            shown = len(status.history)
            state = pb.FederationState.Name(status.state).lower().replace("_", " ")
            progress.update(bar, completed=shown, info=f"{state}, {status.connected_clients} clients, "
                            f"up {status.bytes_up / 1e6:.2f} MB, down {status.bytes_down / 1e6:.2f} MB")
            for i, c in enumerate(clients):
                if c.poll() not in (None, 0) and i not in failures:
                    failures[i] = f"client-{i} exited with code {c.returncode}: {last_error(logs / f'client-{i}.log')}"
                    progress.console.print(f"[red]{failures[i]}[/red]")
            if all(c.poll() is not None for c in clients):
                clients_gone_since = clients_gone_since or time.monotonic()
                if time.monotonic() - clients_gone_since > config.linger + 15:
                    console.print("[red]every client has exited; stopping the server[/red]")
                    server.terminate()
            time.sleep(0.5)
    return shown, [failures[i] for i in sorted(failures)]


def _stop_all(processes: list[subprocess.Popen[bytes]], grace: float) -> None:
    for p in processes:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in processes:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


BACKENDS = ("process", "ray")


def compute_budgets(config: SimulateConfig) -> list[float]:
    """``--budgets`` as numbers, client i taking entry i mod their count (ValueError if not numbers)."""
    try:
        return [float(b) for b in config.budgets.split(",")] if config.budgets else [1.0]
    except ValueError:
        raise ValueError(f"--budgets must be numbers separated by commas, not {config.budgets!r}") from None


def simulate(config: SimulateConfig) -> int:
    """Run the federation; return 0 when every round finished."""
    if config.backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, not {config.backend!r}")
    out = Path(config.out or "runs/latest")
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    report_path, plot_path = out / "report.json", out / "report.png"
    for stale in (report_path, plot_path, out / "server.port", out / "simulation.json"):
        stale.unlink(missing_ok=True)
    console = Console(soft_wrap=True)
    if config.backend == "ray":
        ok, clients = _simulate_on_ray(config, out, console), config.population or config.clients
    else:
        ok, clients = _simulate_processes(config, out, console), config.clients
    if not report_path.exists():
        console.print(f"[red]no report was written; see {logs / 'server.log'}[/red]")
        return 1
    report = json.loads(report_path.read_text())
    plot_accuracy_vs_bytes([(report["method"], report)], plot_path,
                           f"{report['method']} on {config.data}, {clients} clients")
    rounds = report["rounds"]
    if rounds:
        up, down = report["bytes_up"], report["bytes_down"]
        console.print(f"final accuracy {_number(report['final_accuracy'])}, loss {_number(report['final_loss'])} "
                      f"after {len(rounds)} rounds; "
                      f"bytes up {up:,} ({report['dense_bytes_up'] / up:.2f}x below float32), "
                      f"down {down:,} ({report['dense_bytes_down'] / down:.2f}x below float32)")
    console.print(f"wrote {report_path} and {plot_path}")
    return 0 if ok and len(rounds) == config.rounds else 1


def _simulate_on_ray(config: SimulateConfig, out: Path, console: Console) -> bool:
    """The Ray backend, its server log in ``OUT/logs/server.log``; False if the federation stopped early."""
    from fedsqueeze.apps.ray_backend import simulate_on_ray  # only this backend needs Ray

    handler = logging.FileHandler(out / "logs" / "server.log", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package = logging.getLogger("fedsqueeze")
    package.addHandler(handler)
    package.setLevel(config.log_level)
    package.propagate = False
    try:
        figures = simulate_on_ray(config, out, console, lambda r: console.print(_round_line(metrics_dict(r))))
    finally:
        package.removeHandler(handler)
        package.propagate = True
        handler.close()
    simulated = figures["simulated_seconds"]
    console.print(f"{figures['clients_trained']} clients trained, {figures['clients_per_second'] or 0:.1f} per second "
                  f"of rounds; driver peak RSS {figures['driver_peak_rss_bytes'] / 2**20:.0f} MiB, actors "
                  f"{figures['actor_peak_rss_bytes'] / 2**20:.0f} MiB each"
                  + (f"; simulated time {simulated:,.1f} s ({figures['device_profiles']})"
                     if figures["device_profiles"] != "none" else ""))
    if figures["stopped_because"]:
        console.print(f"[red]the federation stopped early: {figures['stopped_because']}[/red]")
    return not figures["stopped_because"]


def _simulate_processes(config: SimulateConfig, out: Path, console: Console) -> bool:
    """The process backend; False when the server or a client failed."""
    partitions = config.partitions or config.clients
    if partitions < config.clients:
        raise ValueError(f"--partitions ({partitions}) must be at least --clients ({config.clients})")
    budgets = compute_budgets(config)
    logs, port_file = out / "logs", out / "server.port"
    server_config = ServerConfig(**{f.name: getattr(config, f.name) for f in fields(ServerConfig)})
    server_config = replace(server_config, min_clients=config.min_clients or config.clients,
                            port_file=str(port_file), out=str(out))
    if config.federated_evaluation:   # the server gets the data's shape only; clients evaluate
        test = load_split(config.data, "test")
        server_config = replace(server_config, data="none", num_classes=test.num_classes,
                                input_shape=",".join(str(d) for d in test.images.shape[1:]))
    host = config.listen.rsplit(":", 1)[0].strip("[]")
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    processes: list[subprocess.Popen[bytes]] = []
    shown, failures = 0, []
    try:
        server = _spawn("server", server_config, logs / "server.log")
        processes.append(server)
        port = _wait_for_port(port_file, server)
        target = f"{host}:{port}"
        console.print(f"server on {target}; starting {config.clients} clients "
                      f"({config.data}, {config.partition}); logs in {logs}")
        clients = []
        for i in range(config.clients):
            client_config = ClientConfig(
                server=target, insecure=config.insecure, client_id=f"client-{i}", data=config.data,
                partition=config.partition, num_partitions=partitions, partition_index=i, seed=config.seed,
                compute_budget=budgets[i % len(budgets)],
                threads=config.client_threads, chunk_bytes=config.chunk_bytes, log_level=config.log_level)
            clients.append(_spawn("client", client_config, logs / f"client-{i}.log"))
        processes += clients
        shown, failures = _follow(target, server, clients, config, console, logs)
        _stop_all(clients, grace=30)
    except RuntimeError as exc:
        console.print(f"[red]{exc}: {last_error(logs / 'server.log')}[/red]; see {logs / 'server.log'}")
        return False
    finally:
        _stop_all(processes, grace=10)

    for r in _report_rounds(out)[shown:]:
        console.print(_round_line(r))
    if server.returncode:
        console.print(f"[red]the server exited with code {server.returncode}: "
                      f"{last_error(logs / 'server.log')}[/red]")
    if failures:
        console.print(f"[red]{len(failures)} client(s) failed; the first: {failures[0]}[/red]")
    return server.returncode == 0 and not failures


def _report_rounds(out: Path) -> list[dict[str, Any]]:
    """The rounds of ``OUT/report.json`` (none if it was not written)."""
    path = out / "report.json"
    return json.loads(path.read_text())["rounds"] if path.exists() else []
