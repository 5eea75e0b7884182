"""Cap glibc's malloc arenas for a process whose threads hand buffers to each other.

glibc gives each new thread an arena of its own while fewer than 8 per core
exist. The server's threads (gRPC's, the decode workers, the folding thread,
torch's) allocate an update's transient arrays in one thread and free them in
another, so freed blocks sit in arenas other threads do not reuse and the
process keeps them: ~140 MiB of the server's peak RSS at 1,000 clients (see
docs/benchmarks/index.md, "The server at scale"). Two arenas keep the same throughput.

glibc reads ``MALLOC_ARENA_MAX`` from the environment itself; ``mallopt`` is
the only way to set it from inside a running process, and no maintained
package wraps it, hence ``ctypes``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # from glibc's <malloc.h>


def limit_malloc_arenas(arenas: int) -> bool:
    """Let glibc create at most ``arenas`` malloc arenas; True if it took effect.

    ``0`` leaves glibc's default. An explicit ``MALLOC_ARENA_MAX`` in the
    environment wins (glibc has applied it already). Off glibc (musl, macOS)
    this does nothing and says so at debug level. Call it before the process
    starts its threads: arenas already created stay.
    """
    if arenas < 0:
        raise ValueError(f"malloc arenas must be 0 (glibc's default) or more, not {arenas}")
    if arenas == 0 or "MALLOC_ARENA_MAX" in os.environ:
        return False
    libc_name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(libc_name).mallopt if libc_name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.debug("no mallopt in this C library; malloc arenas left as they are")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_ARENA_MAX, arenas) == 1
