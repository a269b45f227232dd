"""The runs file of `--runs FILE` (README: Many runs): many runs for one host.

One run per line, either as text

    RUN_ID TOKEN [config=PATH] [server=URL] [gpus=0,1]

or, when the line starts with `{`, as a JSON object with the same keys
(`run_id`, `token`, `config`, `server`, `gpus`). Blank lines and `#` comments
are ignored. Text fields are split on whitespace (a path or value with spaces
belongs in a JSON line). `--config`/`--server` are the defaults a line may
override; a relative `config=` is resolved against the runs file's folder (the
file travels with its configs), `~` expands.

Every bad line is reported at once, each as `<source>:<line>: <problem>`, and no
run starts. A token never appears in a message: a misplaced field is described
by its position, not its value.

The file must be a regular file of at most MAX_BYTES (a pipe is read with
`--runs -`): a FIFO without a writer would hang the read, and /dev/zero or a
runaway generator would fill memory.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from supervisor.config import read_text_file
from supervisor.preflight import check_token
from workers.common.errors import ConfigError
from workers.common.server_url import validate_server_url

# Far above any real batch (a line is ~100 bytes), far below what hurts a host.
MAX_BYTES = 16 * 1024 * 1024
KEYS = ("run_id", "token", "config", "server", "gpus")
_OPTION_KEYS = frozenset({"config", "server", "gpus"})


@dataclass(frozen=True)
class RunSpec:
    """One run of a runs file, with the defaults already applied."""

    run_id: str
    token: str = field(repr=False)
    config: Path
    server: str
    # None: the line did not say; the pool decides (or leaves the GPUs alone).
    gpus: tuple[str, ...] | None
    line: int


class _BadLine(Exception):
    """One problem with one line; collected, never shown as a traceback."""


def parse_runs(
    text: str,
    *,
    source: str,
    default_config: Path | None,
    default_server: str,
    base_dir: Path | None = None,
) -> list[RunSpec]:
    """Parse a whole runs file; raise one ConfigError that lists every bad line."""
    base = base_dir if base_dir is not None else Path.cwd()
    specs: list[RunSpec] = []
    problems: list[str] = []
    first_line_of: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        body = raw.strip()
        if not body or body.startswith("#"):
            continue
        try:
            fields = _json_fields(body) if body.startswith("{") else _text_fields(body)
            spec = _build_spec(fields, number, default_config, default_server, base)
        except _BadLine as bad:
            problems.append(f"{source}:{number}: {bad}")
            continue
        if spec.run_id in first_line_of:
            problems.append(
                f"{source}:{number}: duplicate run id {spec.run_id!r} "
                f"(first on line {first_line_of[spec.run_id]})"
            )
            continue
        first_line_of[spec.run_id] = number
        specs.append(spec)
    if problems:
        count = len(problems)
        head = f"{count} bad line{'s' if count > 1 else ''} in {source}; no run was started:"
        raise ConfigError("\n".join([head, *problems]))
    if not specs:
        raise ConfigError(
            f"{source} lists no runs: write one run per line as "
            "'RUN_ID TOKEN [config=PATH] [server=URL] [gpus=0,1]'"
        )
    return specs


def read_runs(
    path_or_dash: str,
    stdin: TextIO | None,
    *,
    default_config: Path | None,
    default_server: str,
) -> tuple[list[RunSpec], list[str]]:
    """Read and parse the runs file (`-` is standard input).

    Returns the runs and warnings to show (a file other users can read)."""
    if path_or_dash == "-":
        text = _read_stdin(stdin)
        specs = parse_runs(text, source="<stdin>", default_config=default_config,
                           default_server=default_server, base_dir=Path.cwd())
        return specs, []
    path = Path(path_or_dash).expanduser()
    text, mode = _read_file(path)
    warning = permission_warning(path, mode)
    specs = parse_runs(
        text,
        source=str(path),
        default_config=default_config,
        default_server=default_server,
        base_dir=path.resolve().parent,
    )
    return specs, [warning] if warning else []


def _too_big(label: str) -> ConfigError:
    return ConfigError(f"{label} holds more than {MAX_BYTES // (1024 * 1024)} MiB; "
                       "split it into several runs files")


def _read_stdin(stdin: TextIO | None) -> str:
    # A service manager may start us with standard input closed.
    if stdin is None:
        raise ConfigError("--runs -: standard input is closed; pass the runs on it or name a file")
    text = stdin.read(MAX_BYTES + 1)
    if len(text) > MAX_BYTES:
        raise _too_big("standard input (--runs -)")
    return text


def _read_file(path: Path) -> tuple[str, int]:
    """The UTF-8 text of a regular runs file and its mode; a ConfigError saying
    why it cannot be had (a FIFO is refused, not waited on)."""
    text = read_text_file(path, what="runs file", limit=MAX_BYTES, regular_only=True,
                          instead="to read runs from a pipe, use --runs - (standard input)")
    return text, path.stat().st_mode


def permission_warning(path: Path, mode: int) -> str | None:
    """A warning when users other than the owner may read the file: it holds tokens."""
    if not stat.S_ISREG(mode) or not mode & (stat.S_IRGRP | stat.S_IROTH):
        return None
    return (
        f"runs file {path} is readable by other users "
        f"(mode {stat.S_IMODE(mode):04o}) and holds run tokens; run: chmod 600 {path}"
    )


def _text_fields(body: str) -> dict[str, object]:
    parts = body.split()
    # A field starting with '#' begins a trailing comment.
    for index, part in enumerate(parts):
        if part.startswith("#"):
            parts = parts[:index]
            break
    fields: dict[str, object] = {}
    positional = 0
    for index, part in enumerate(parts, start=1):
        key, eq, value = part.partition("=")
        if eq and key in _OPTION_KEYS:
            if key in fields:
                raise _BadLine(f"{key}= given twice")
            fields[key] = value
        elif eq and positional >= 2 and _looks_like_key(key):
            # Only the key is shown: the value could be a secret typed in the wrong place.
            raise _BadLine(f"unknown key {key!r} (known keys: config, server, gpus)")
        elif positional < 2:
            fields["run_id" if positional == 0 else "token"] = part
            positional += 1
        else:
            raise _BadLine(
                f"unexpected field {index} (after RUN_ID TOKEN only "
                "config=PATH, server=URL and gpus=LIST may follow)"
            )
    return fields


def _looks_like_key(text: str) -> bool:
    """A short lowercase identifier: safe to echo (a pasted token is not one)."""
    return text.isidentifier() and text.islower() and len(text) <= 24


def _json_fields(body: str) -> dict[str, object]:
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise _BadLine(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise _BadLine("not valid JSON for a run (nested too deeply)") from None
    if not isinstance(value, dict):
        raise _BadLine("a line starting with '{' must be one JSON object")
    unknown = sorted(key for key in value if key not in KEYS)
    if unknown:
        shown = ", ".join(repr(key) if _looks_like_key(key) else "(a key)" for key in unknown)
        raise _BadLine(
            f"unknown key{'s' if len(unknown) > 1 else ''} {shown} "
            f"(known keys: {', '.join(KEYS)})"
        )
    return value


def _build_spec(
    fields: dict[str, object],
    number: int,
    default_config: Path | None,
    default_server: str,
    base: Path,
) -> RunSpec:
    run_id = _run_id(fields.get("run_id"))
    token = fields.get("token")
    if token is None or token == "":
        raise _BadLine(f"run {run_id!r} has no token")
    if not isinstance(token, str):
        raise _BadLine(f"run {run_id!r}: token must be a string")
    # The rules of --token: the token goes into the supervisor's environment
    # and an HTTP header, where a NUL, a lone surrogate or a character outside
    # Latin-1 would fail only once the run is launched.
    try:
        check_token(token)
    except ConfigError as exc:
        raise _BadLine(f"run {run_id!r}: {exc.message}") from None

    config_value = fields.get("config")
    if config_value is None:
        if default_config is None:
            raise _BadLine(f"run {run_id!r} has no config: add config=PATH or pass --config")
        config = default_config
    else:
        if not isinstance(config_value, str) or not config_value.strip():
            raise _BadLine(f"run {run_id!r}: config must be a non-empty path")
        config = Path(config_value).expanduser()
        if not config.is_absolute():
            config = base / config

    server_value = fields.get("server", default_server)
    if not isinstance(server_value, str) or not server_value.startswith(("http://", "https://")):
        shown = server_value if isinstance(server_value, str) else type(server_value).__name__
        raise _BadLine(f"run {run_id!r}: server {shown!r} is not an http:// or https:// URL")
    try:
        server_value = validate_server_url(server_value)
    except ConfigError as exc:  # the rule of --server, said for this line
        raise _BadLine(f"run {run_id!r}: {exc.message.removeprefix('--server ')}") from None

    gpus = _gpus(fields.get("gpus"), run_id) if "gpus" in fields else None
    return RunSpec(
        run_id=run_id,
        token=token,
        config=config,
        server=server_value.rstrip("/"),
        gpus=gpus,
        line=number,
    )


def _run_id(value: object) -> str:
    if value is None or value == "":
        raise _BadLine("no run id")
    # Backends hand out numeric ids too; JSON may carry them as numbers.
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise _BadLine("run_id must be a string")
    # The id becomes a URL path segment and a folder name (state/<run_id>).
    if value in (".", "..") or "/" in value or "\\" in value or any(
        ch.isspace() or not ch.isprintable() for ch in value
    ):
        raise _BadLine(f"run id {value!r} cannot be used as a folder name")
    return value


def _gpus(value: object, run_id: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items: list[object] = [item.strip() for item in value.split(",")]
    elif isinstance(value, list):
        items = list(value)
    else:
        raise _BadLine(f"run {run_id!r}: gpus must be a list like 0,1")
    gpus: list[str] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            item = str(item)
        if not isinstance(item, str) or not item or any(ch.isspace() or ch == "," for ch in item):
            raise _BadLine(f"run {run_id!r}: gpus must be a list of GPU indices or UUIDs like 0,1")
        gpus.append(item)
    if not gpus:
        raise _BadLine(f"run {run_id!r}: gpus is empty")
    if len(set(gpus)) != len(gpus):
        raise _BadLine(f"run {run_id!r}: gpus lists a GPU twice")
    return tuple(gpus)

