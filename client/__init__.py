"""The client daemon. From a script: ``run_client(ClientConfig(...))`` (what ``fedsqueeze client`` runs).

    from fedsqueeze.client import run_client
    from fedsqueeze.config import ClientConfig

    exit_code = run_client(ClientConfig(server="127.0.0.1:50051", insecure=True, client_id="edge-1"))
"""

from __future__ import annotations

from fedsqueeze.config import ClientConfig


def run_client(config: ClientConfig) -> int:
    """Join the server and train until the federation finishes (0), or this client cannot take part (2).

    Run it in a process's main thread: SIGTERM/SIGINT then stop it cleanly.
    """
    from fedsqueeze.client.app import run_client as run

    return run(config)


__all__ = ["ClientConfig", "run_client"]
