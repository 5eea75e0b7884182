"""Log set-up for every command: human-readable lines, or one JSON object per line for log pipelines."""

from __future__ import annotations

import json
import logging
import sys


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any).

    A dozen lines of stdlib; a logging library would add a dependency for no more than this.
    """

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr at ``level`` as ``text`` or ``json`` lines."""
    if fmt not in ("text", "json"):
        raise SystemExit(f"--log-format must be text or json, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
