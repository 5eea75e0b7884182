"""The server's malloc arena cap: glibc creates no more arenas than asked, and a bad value is refused.

Each probe is a fresh Python process (arenas, once made, stay): it applies the
cap, starts eight threads that each allocate through malloc at the same time,
and has glibc print its per-arena statistics (``malloc_stats``, to stderr).
glibc gives a new thread an arena of its own while fewer than its maximum
exist, so the uncapped probe shows more arenas than the capped ones.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from fedsqueeze.malloc_arenas import limit_malloc_arenas

PROBE = """
import ctypes, ctypes.util, sys, threading
from fedsqueeze.malloc_arenas import limit_malloc_arenas
print(limit_malloc_arenas(int(sys.argv[1])), flush=True)
barrier = threading.Barrier(8)
def allocate():
    barrier.wait()
    kept = [bytearray(64 * 1024) for _ in range(64)]  # above pymalloc's 512 B, below the mmap threshold
    barrier.wait()
threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(ctypes.util.find_library("c")).malloc_stats()
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc arenas are glibc's")


def arenas_after_threads(cap: int, env: dict[str, str] | None = None) -> tuple[str, int]:
    """What ``limit_malloc_arenas(cap)`` returned in a fresh process, and how many arenas glibc then had."""
    environment = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | (env or {})
    done = subprocess.run([sys.executable, "-c", PROBE, str(cap)], capture_output=True, text=True, timeout=60,
                          env=environment, check=True)
    return done.stdout.strip(), len(re.findall(r"^Arena \d+:", done.stderr, re.MULTILINE))


def test_capped_process_uses_at_most_the_arenas_asked_for() -> None:
    applied, uncapped = arenas_after_threads(0)
    assert applied == "False" and uncapped > 2
    for cap in (1, 2):
        applied, arenas = arenas_after_threads(cap)
        assert applied == "True"
        assert 1 <= arenas <= cap


def test_environment_setting_wins_over_the_flag() -> None:
    applied, arenas = arenas_after_threads(1, env={"MALLOC_ARENA_MAX": "3"})
    assert applied == "False"
    assert 1 < arenas <= 3


def test_a_negative_cap_is_refused_in_process_and_by_the_server_command() -> None:
    with pytest.raises(ValueError, match="0 .* or more"):
        limit_malloc_arenas(-1)
    done = subprocess.run([sys.executable, "-m", "fedsqueeze.apps", "server", "--insecure", "--malloc-arenas", "-1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "--malloc-arenas: malloc arenas must be 0" in done.stderr
