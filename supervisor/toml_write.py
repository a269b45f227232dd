"""A small TOML writer for what ``tomllib`` produces.

The standard library reads TOML but cannot write it, and the dependency list
is fixed; bootstrap only needs to write back a user's Codex config (minus its
own keys), so this covers exactly tomllib's value types:
``tomllib.loads(dumps(x)) == x`` for every such ``x``.

Layout: a table's plain keys first, then its sub-tables as ``[a.b]``
sections, then arrays of tables as ``[[a.c]]``. Lists that are not all tables,
and anything nested inside them, are written inline.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def dumps(data: dict[str, Any]) -> str:
    """The TOML document for ``data`` (a dict as returned by tomllib)."""
    if not isinstance(data, dict):
        raise TypeError(f"a TOML document is a table (dict), not {type(data).__name__}")
    out: list[str] = []
    _table(out, (), data, header=None)
    text = "\n".join(out).strip("\n")
    return text + "\n" if text else ""


def _is_array_of_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table(out: list[str], path: tuple[str, ...], table: dict[str, Any], header: str | None) -> None:
    plain = [(k, v) for k, v in table.items() if not isinstance(v, dict) and not _is_array_of_tables(v)]
    subtables = [(k, v) for k, v in table.items() if isinstance(v, dict)]
    arrays = [(k, v) for k, v in table.items() if _is_array_of_tables(v)]

    # A table holding only sub-tables is created implicitly by their headers;
    # an empty one, or one with plain keys, needs its own header.
    if header is not None and (plain or not (subtables or arrays)):
        out.append("")
        out.append(header)
    for key, value in plain:
        out.append(f"{_key(key)} = {_value(value)}")
    for key, value in subtables:
        sub = path + (key,)
        _table(out, sub, value, header=f"[{_dotted(sub)}]")
    for key, items in arrays:
        sub = path + (key,)
        for item in items:
            out.append("")
            out.append(f"[[{_dotted(sub)}]]")
            # The [[...]] header already opened this element's table.
            _table(out, sub, item, header=None)


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(_key(k) for k in path)


def _key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"TOML keys are strings, not {type(key).__name__} ({key!r})")
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(s: str) -> str:
    parts = ['"']
    for ch in s:
        if ch in _ESCAPES:
            parts.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            parts.append(f"\\u{ord(ch):04x}")
        else:
            parts.append(ch)
    parts.append('"')
    return "".join(parts)


def _float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    # repr is the shortest text that reads back to the same float, and its forms
    # ("5.0", "1e+100", "1.5e-07", "-0.0") are all valid TOML floats.
    return repr(x)


def _value(value: Any) -> str:
    # bool before int (bool is an int); datetime before date (datetime is a date).
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, _dt.time):
        if value.tzinfo is not None:
            raise ValueError(f"TOML has no time of day with a time zone: {value!r}")
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML: {value!r}")
