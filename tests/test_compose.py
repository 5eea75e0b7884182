"""docker-compose.yml brings up a working federation: its own commands and environments, run as processes.

No Docker engine runs here, so the test does what compose would: it takes the
file as `docker-compose config` resolves it (schema-checked, anchors merged),
maps the service host names to loopback, the container port to a free one and
the `/out` volume to a temporary folder, waits for the declared health check,
starts the clients, and checks the cluster trains. The overrides, to keep
the suite short: a single round instead of the file's five, and in the
`edges` profile a sixteenth of the data per client instead of a quarter.

As in the image, the processes run without privileges: run as root, the
suite drops every capability (``setpriv``), so like the image's
``fedsqueeze`` user they may write only to folders they own, which the
mounted folders are, as the Dockerfile's ``install -d -o fedsqueeze`` makes
them. A control shows the point: with the credentials folder owned by
another user, ``certs`` fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedsqueeze.server.strategies.reft import parse_tiers, tier_for

from conftest import Cluster, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
CONTAINER_PORT = "50051"


def resolved_compose() -> dict[str, Any]:
    docker_compose = shutil.which("docker-compose")
    assert docker_compose, "docker-compose (Debian's package) is needed to validate the file; run the set-up"
    result = subprocess.run([docker_compose, "-f", str(ROOT / "docker-compose.yml"), "config"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"docker-compose rejects the file:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def localize(value: str, ports: dict[str, int], mounts: dict[str, Path]) -> str:
    """A compose value as a plain process sees it: each service host on loopback at its own port (``ports``: host
    name -> port), volume paths in folders."""
    if ports:
        pattern = rf"\b({'|'.join(map(re.escape, sorted(ports)))}):{CONTAINER_PORT}\b"
        value = re.sub(pattern, lambda m: f"127.0.0.1:{ports[m.group(1)]}", value)
    for target, folder in mounts.items():
        if value == target or value.startswith(target + "/"):
            return str(folder) + value[len(target):]
    return value


# Root without capabilities: file permissions bind it as they bind the image's unprivileged user.
UNPRIVILEGED = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"] if os.geteuid() == 0 else []


def command(argv: list[str]) -> list[str]:
    assert argv[0] == "fedsqueeze", argv
    return [*UNPRIVILEGED, str(Path(sys.executable).with_name("fedsqueeze")), *argv[1:]]


def test_compose_file_declares_a_sound_cluster() -> None:
    services = resolved_compose()["services"]
    server, clients = services["server"], {n: s for n, s in services.items() if n.startswith("client")}
    assert not any("profiles" in c for c in [server, *clients.values()])   # what a plain `up` starts
    assert len(clients) == 3
    assert server["environment"]["FEDSQUEEZE_MIN_CLIENTS"] == str(len(clients))
    indexes = sorted(int(c["environment"]["FEDSQUEEZE_PARTITION_INDEX"]) for c in clients.values())
    assert indexes == list(range(len(clients)))    # each client its own partition
    assert {c["environment"]["FEDSQUEEZE_NUM_PARTITIONS"] for c in clients.values()} == {str(len(clients))}
    assert len({c["cpus"] for c in clients.values()}) == 3   # three capabilities
    widths = parse_tiers("1/0.75/0.5/0.25")                  # REFT's default tiers
    assert len({tier_for(float(c["environment"]["FEDSQUEEZE_COMPUTE_BUDGET"]), widths)
                for c in clients.values()}) == 3              # three tiers under --method reft
    assert all(c["depends_on"]["server"]["condition"] == "service_healthy" for c in clients.values())
    enrolled = services["certs"]["command"][services["certs"]["command"].index("--clients") + 1].split(",")
    for c in clients.values():   # each client presents its own token, and the certs service makes it
        client_id = c["environment"]["FEDSQUEEZE_CLIENT_ID"]
        assert client_id in enrolled and c["environment"]["FEDSQUEEZE_TOKEN_FILE"] == f"/certs/{client_id}.token"
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = [name for line in re.findall(r"^COPY (.+)$", dockerfile, re.M) for name in line.split()[:-1]]
    for source in copied:
        assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert set(package_dirs.values()) <= set(copied), \
        f"the image installs the project, so it must copy every package folder: {sorted(package_dirs.values())}"
    assert "constraints.txt" in copied and re.search(r"pip install [^\n]*-c constraints\.txt \"?\.", dockerfile), \
        "the image must install the project with the same pins as scripts/setup.sh"
    assert re.findall(r"^USER (\S+)", dockerfile, re.M)[-1] == "fedsqueeze"
    made = re.search(r"install -d -o fedsqueeze -g fedsqueeze ([^\n]+)", dockerfile)
    assert made, "the image must create the folders the volumes mount, owned by its user"
    targets = {volume.get("target") if isinstance(volume, dict) else volume.split(":")[1]
               for service in services.values() for volume in service.get("volumes", [])}
    assert targets <= set(made.group(1).split()), f"volumes mount {targets}, the image makes {made.group(1)}"


class ComposeAsProcesses:
    """Runs services of the compose file as compose would, as processes: host names on loopback, each service
    at its own port, volumes in folders of ``cluster.root``; ``FEDSQUEEZE_ROUNDS`` is 1 to keep the suite short."""

    def __init__(self, cluster: Cluster, services: dict[str, Any]) -> None:
        self.cluster = cluster
        self.services = services
        self.ports = {name: free_port() for name in services}
        self.mounts = {target: cluster.root / target.strip("/") for target in ("/out", "/state", "/certs")}
        for folder in self.mounts.values():
            folder.mkdir(exist_ok=True)   # ours, as the image's folders are its user's

    def local(self, name: str, value: str, mounts: dict[str, Path] | None = None) -> str:
        """A value of service ``name``: its own host names (localhost, 0.0.0.0) at its own port."""
        own = self.ports[name]
        return localize(value, {**self.ports, "localhost": own, "0.0.0.0": own}, mounts or self.mounts)

    def env(self, name: str) -> dict[str, str]:
        env = {k: self.local(name, str(v)) for k, v in self.services[name].get("environment", {}).items()}
        return {**env, "FEDSQUEEZE_ROUNDS": "1"} if "FEDSQUEEZE_ROUNDS" in env else env

    def command(self, name: str, mounts: dict[str, Path] | None = None) -> list[str]:
        return command([self.local(name, a, mounts) for a in self.services[name]["command"]])

    def start(self, name: str) -> None:
        """Start a service once what it depends on is in the state compose waits for; wait for its health."""
        for dependency, condition in self.services[name].get("depends_on", {}).items():
            assert condition["condition"] in ("service_healthy", "service_completed_successfully"), condition
            assert dependency in self.cluster.processes, f"{name} depends on {dependency}, not started yet"
            if condition["condition"] == "service_completed_successfully":
                assert self.cluster.processes[dependency].poll() == 0, self.cluster.log(dependency)
        self.cluster.spawn(name, self.command(name), self.env(name))
        check = self.services[name].get("healthcheck")
        if check is None:
            return
        health = command([self.local(name, a) for a in check["test"][1:]])

        def healthy() -> bool:
            if self.cluster.processes[name].poll() is not None:
                self.cluster.fail(f"{name} exited before it was healthy")
            return subprocess.run(health, capture_output=True, timeout=30).returncode == 0
        wait_for(healthy, 120, f"{name}'s health check", interval=1.0)

    def certs(self) -> None:
        self.start("certs")
        assert self.cluster.wait("certs", 60) == 0, self.cluster.log("certs")


@pytest.mark.slow
def test_compose_cluster_trains_as_plain_processes(cluster: Cluster) -> None:
    services = resolved_compose()["services"]
    compose = ComposeAsProcesses(cluster, services)
    if UNPRIVILEGED:   # the control: a mounted folder the process does not own cannot be written
        foreign = {**compose.mounts, "/certs": cluster.root / "foreign"}
        foreign["/certs"].mkdir()
        os.chown(foreign["/certs"], 65534, 65534)
        denied = subprocess.run(compose.command("certs", foreign), capture_output=True, text=True, timeout=60)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied.stderr
    compose.certs()
    server = services["server"]
    assert "FEDSQUEEZE_INSECURE" not in server["environment"], "the compose cluster must run with TLS"
    compose.start("server")
    clients = sorted(n for n in services if n.startswith("client"))
    for name in clients:
        compose.start(name)
    assert cluster.wait("server", 300) == 0
    for name in clients:
        assert cluster.wait(name, 60) == 0

    report = compose.mounts["/out"] / "report.json"
    assert report.exists(), cluster.logs()
    (first,) = json.loads(report.read_text())["rounds"]
    assert first["updates"] == first["selected"] == 3
    assert first["accuracy"] > 0.7, first
    for name in clients:
        assert f"client {name} joined" in cluster.log("server")
    assert (compose.mounts["/state"] / "checkpoint.json").exists()
    assert "SERVING PLAINTEXT" not in cluster.log("server") and "no --tokens" not in cluster.log("server")


@pytest.mark.slow
def test_the_compose_edges_profile_trains_through_two_edges(cluster: Cluster) -> None:
    services = resolved_compose()["services"]
    edges = sorted(n for n, s in services.items() if s["command"][1:] == ["edge"])
    clients = sorted(n for n, s in services.items() if "edges" in s.get("profiles", ()) and s["command"][1:] ==
                     ["client"])
    assert edges == ["edge-a", "edge-b"] and len(clients) == 4
    assert all("edges" in services[n]["profiles"] for n in ["root", *edges])
    assert services["root"]["environment"]["FEDSQUEEZE_MIN_CLIENTS"] == str(len(edges))
    for name in clients:   # each client behind the edge it waits for, on its own partition
        (edge,) = services[name]["depends_on"]
        assert services[name]["environment"]["FEDSQUEEZE_SERVER"] == f"{edge}:{CONTAINER_PORT}"
    assert sorted(services[n]["environment"]["FEDSQUEEZE_PARTITION_INDEX"] for n in clients) == ["0", "1", "2", "3"]
    for name in clients:   # a quarter of each client's partition keeps the suite short
        services[name]["environment"]["FEDSQUEEZE_NUM_PARTITIONS"] = "16"
    compose = ComposeAsProcesses(cluster, services)
    compose.certs()
    for name in ["root", *edges, *clients]:   # compose's start order: each after what it depends on is healthy
        compose.start(name)
    assert cluster.wait("root", 300) == 0, cluster.logs()
    for name in [*edges, *clients]:
        assert cluster.wait(name, 60) == 0, cluster.logs()
    (first,) = json.loads((compose.mounts["/out"] / "root" / "report.json").read_text())["rounds"]
    assert (first["updates"], first["selected"], first["edges"]) == (4, 4, 2)
    assert first["accuracy"] > 0.6, first
    assert first["edge_bytes_up"] > first["bytes_up"] / 2   # four client updates below, two sums above
    for edge in edges:
        (round_at_edge,) = json.loads((compose.mounts["/out"] / edge / "report.json").read_text())["rounds"]
        assert round_at_edge["updates"] == 2
        assert f"edge aggregator {edge} joined" in cluster.log("root")
        assert "SERVING PLAINTEXT" not in cluster.log(edge) and "no --tokens" not in cluster.log(edge)


def _megabytes(size: str | int) -> float:
    """A compose size (``1gb``, ``512m``, or bytes as docker-compose config writes it) in MiB."""
    match = re.fullmatch(r"(\d+)\s*([kmg]?)b?", str(size).lower())
    assert match, f"unreadable size {size!r}"
    return int(match.group(1)) * {"": 2**-20, "k": 2**-10, "m": 1, "g": 2**10}[match.group(2)]


@pytest.mark.slow
def test_the_compose_simulation_runs_as_a_process_within_its_shared_memory(tmp_path: Path) -> None:
    simulate = resolved_compose()["services"]["simulate"]
    env = simulate["environment"]
    assert simulate["build"]["args"]["EXTRAS"] == "[ray]" and "simulate" in simulate["profiles"]
    assert _megabytes(simulate["shm_size"]) >= int(env["FEDSQUEEZE_OBJECT_STORE_MB"]), \
        "Ray's object store must fit the container's /dev/shm"
    out = tmp_path / "out"
    out.mkdir()
    # The file's command and settings; a smaller population and one round keep the suite short.
    run_env = {**{k: v for k, v in os.environ.items() if not k.startswith("FEDSQUEEZE_")},
               **{k: localize(str(v), {}, {"/out": out}) for k, v in env.items()},
               "FEDSQUEEZE_POPULATION": "40", "FEDSQUEEZE_CLIENTS_PER_ROUND": "5", "FEDSQUEEZE_ROUNDS": "1"}
    result = subprocess.run(command(simulate["command"]), env=run_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((out / "simulate" / "report.json").read_text())
    assert [r["updates"] for r in report["rounds"]] == [5]
