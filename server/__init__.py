"""The aggregation server. From a script: ``run_server(ServerConfig(...))`` (what ``fedsqueeze server`` runs).

    from fedsqueeze.config import ServerConfig
    from fedsqueeze.server import run_server

    run_server(ServerConfig(insecure=True, listen="127.0.0.1:50051", model="resnet(depth=8)", rounds=3))
"""

from __future__ import annotations

from fedsqueeze.config import ServerConfig


def run_server(config: ServerConfig) -> None:
    """Serve a federation until its rounds are done (or SIGTERM/SIGINT) in this process's main thread.

    SystemExit with a one-line reason for settings, plug-ins or data that cannot work, as ``fedsqueeze
    server`` exits with it. Logging is the caller's (``fedsqueeze.logs.setup_logging`` sets the CLI's).
    """
    import asyncio

    from fedsqueeze.malloc_arenas import limit_malloc_arenas
    from fedsqueeze.server.app import serve

    try:
        limit_malloc_arenas(config.malloc_arenas)   # before the server starts its threads
    except ValueError as exc:
        raise SystemExit(f"--malloc-arenas: {exc}") from None
    asyncio.run(serve(config))


__all__ = ["ServerConfig", "run_server"]
