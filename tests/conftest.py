"""Fixtures that run real fedsqueeze server and client processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.v1 import federation_pb2_grpc as pb_grpc

FAST_SERVER = ["--insecure", "--data", "synthetic", "--model", "cnn(width=8)", "--linger", "5"]
FAST_CLIENT = ["--data", "synthetic"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that runs a live cluster (the ``cluster`` fixture) is ``slow``: ``-m "not slow"`` skips them."""
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def run_simulate(out: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``fedsqueeze simulate --out out ...`` as its own process: a real server and client processes on loopback."""
    return subprocess.run([sys.executable, "-m", "fedsqueeze.apps", "simulate", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=timeout)


def simulate(out: Path, *args: str, timeout: float = 600) -> dict[str, Any]:
    """Run ``fedsqueeze simulate`` to the end and return its report; fail with its output's tail if it fails."""
    result = run_simulate(out, *args, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


class Cluster:
    """Starts fedsqueeze processes, remembers their logs, and kills what is left at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.port: int | None = None

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSQUEEZE_")}
        log = (self.root / f"{name}.log").open("wb")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**base_env, **(env or {})})
        self.processes[name] = proc
        return proc

    def fedsqueeze(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self.spawn(name, [sys.executable, "-m", "fedsqueeze.apps", *args], env)

    def server(self, *args: str, port: int = 0, wait: bool = True, name: str = "server") -> subprocess.Popen[bytes]:
        port_file = self.root / "server.port"
        port_file.unlink(missing_ok=True)
        proc = self.fedsqueeze(name, "server", "--listen", f"127.0.0.1:{port}", "--port-file", str(port_file),
                               "--out", str(self.root), *args)
        def bound_port() -> int | None:
            if proc.poll() is not None:
                self.fail(f"the server exited with code {proc.returncode} before listening")
            text = port_file.read_text().strip() if port_file.exists() else ""
            return int(text) if text else None

        if wait:
            self.port = wait_for(bound_port, 60, "the server to listen")
        return proc

    def edge(self, name: str, *args: str, port: int = 0) -> int:
        """An edge aggregator of this cluster's server (plaintext both ways); returns the port it serves on."""
        port_file = self.root / f"{name}.port"
        port_file.unlink(missing_ok=True)
        proc = self.fedsqueeze(name, "edge", "--root", f"127.0.0.1:{self.port}", "--root-insecure", "--insecure",
                               "--edge-id", name, "--listen", f"127.0.0.1:{port}", "--port-file", str(port_file),
                               "--max-backoff", "1", "--linger", "5", *args)

        def bound_port() -> int | None:
            if proc.poll() is not None:
                self.fail(f"edge {name} exited with code {proc.returncode} before listening")
            text = port_file.read_text().strip() if port_file.exists() else ""
            return int(text) if text else None
        return wait_for(bound_port, 60, f"edge {name} to listen")

    def client(self, name: str, *args: str, port: int | None = None) -> subprocess.Popen[bytes]:
        """A client daemon; on synthetic data unless ``args`` give another --data."""
        return self.fedsqueeze(name, "client", "--server", f"127.0.0.1:{port or self.port}", "--insecure",
                               "--client-id", name, "--threads", "1", *FAST_CLIENT, *args)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"----- {n}.log\n{self.log(n)[-4000:]}" for n in self.processes)

    def fail(self, message: str) -> None:
        raise AssertionError(f"{message}\n{self.logs()}")

    def wait(self, name: str, timeout: float) -> int:
        try:
            return self.processes[name].wait(timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"{name} still running after {timeout:.0f} s")
            raise

    def report(self) -> dict[str, Any]:
        return json.loads((self.root / "report.json").read_text())

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def status(self) -> pb.FederationStatus:
        with self.channel() as channel:
            return pb_grpc.OperatorStub(channel).GetStatus(pb.StatusRequest(include_history=True), timeout=5)

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.stop()
