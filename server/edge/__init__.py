"""Edge aggregators: a server to their own clients, one participant of the root federation above them.

An edge runs each of the root's train tasks among its clients and sends the
root one exact partial sum (``relay``), so a root holds one connection per
edge rather than per device, and the global model is bit for bit the one a
single server would reach with the same clients. From a script:
``run_edge(EdgeConfig(...))``, what ``fedsqueeze edge`` runs.
"""

from __future__ import annotations

from fedsqueeze.config import EdgeConfig


def run_edge(config: EdgeConfig) -> None:
    """Serve as an edge until the root finishes the federation (or SIGTERM/SIGINT), in the main thread."""
    import asyncio

    from fedsqueeze.malloc_arenas import limit_malloc_arenas
    from fedsqueeze.server.edge.app import serve_edge

    try:
        limit_malloc_arenas(config.malloc_arenas)
    except ValueError as exc:
        raise SystemExit(f"--malloc-arenas: {exc}") from None
    asyncio.run(serve_edge(config))


__all__ = ["EdgeConfig", "run_edge"]
