"""The one-line spec syntax shared by codecs, models, datasets and methods.

A spec names a registered thing and its parameters: ``name`` or
``name(key=value, ...)``, e.g. ``cnn(width=32)`` or ``dense(dtype=float16)``.
The name may also be an import path, ``mypkg.models:build(hidden=32)``
(``fedsqueeze.plugins`` resolves it).
Values are ints, floats, booleans (``true``/``false``) or bare strings of
letters, digits and ``_ - . / : +``. A value may also be a nested spec or
pipeline, with balanced parentheses, kept as text:
``ae(correction=sparse(ratio=0.001)|dense(dtype=float16)|zstd, latent=16)``.
``format_spec`` writes the canonical form (sorted keys, no spaces), so two
equal specs compare equal as strings.
"""

from __future__ import annotations

import re
from typing import Any

# a registered name, or an import path package.module:callable (fedsqueeze.plugins)
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$|^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VALUE_RE = re.compile(r"^[A-Za-z0-9_\-./:+]+$")
_NESTED_RE = re.compile(r"^[A-Za-z0-9_\-./:+*|()=,;\s]+$")

SpecValue = int | float | bool | str


class SpecError(ValueError):
    """A spec string that does not parse."""


def _parse_value(text: str) -> SpecValue:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _split_top_level(text: str, spec: str) -> list[str]:
    """Split on commas outside parentheses; refuse unbalanced parentheses."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SpecError(f"unbalanced parentheses in spec {spec!r}")
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise SpecError(f"unbalanced parentheses in spec {spec!r}")
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def parse_spec(text: str) -> tuple[str, dict[str, SpecValue]]:
    """Split ``name(k=v, ...)`` into its name and a dict of typed parameters."""
    stripped = text.strip()
    name, paren, rest = stripped.partition("(")
    name = name.strip()
    if not _NAME_RE.match(name) or (paren and not rest.endswith(")")):
        raise SpecError(f"malformed spec {text!r}: expected name or name(key=value, ...)")
    params: dict[str, SpecValue] = {}
    for item in _split_top_level(rest[:-1], text) if paren else ():
        key, sep, value = (s.strip() for s in item.partition("="))
        nested = "(" in value or "|" in value
        if not sep or not _KEY_RE.match(key) or not (_NESTED_RE if nested else _VALUE_RE).match(value or "!"):
            raise SpecError(f"malformed parameter {item!r} in spec {text!r}: expected key=value")
        if key in params:
            raise SpecError(f"parameter {key!r} repeated in spec {text!r}")
        params[key] = value if nested else _parse_value(value)
    return name, params


def format_spec(name: str, params: dict[str, Any]) -> str:
    """The canonical spec string for a name and parameters (sorted, no spaces)."""
    if not params:
        return name
    def show(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else str(v)
    return f"{name}({','.join(f'{k}={show(params[k])}' for k in sorted(params))})"
