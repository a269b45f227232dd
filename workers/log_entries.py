"""Turn what Codex prints into log entries.

This is the mapping of docs/protocol.md (Log entries), kept pure (bytes in, frozen Entry out) so
the log-shipper can call it in a tight loop and tests can pin it down exactly.

An Entry carries `level`, `message` and `extra` but neither `seq` nor
`created_at`: the shipper stamps those when it spools the entry, and
`encode_entry` puts everything into the JSON body of `POST /runs/{id}/logs`.

Decisions beyond the spec's words (the lead may revisit them):
- A command that exits non-zero is still level `info`: agents run `grep`,
  `test -f`, … that fail as a matter of course; the exit code stays in
  `extra.event.item.exit_code`. Failures of Codex itself are `turn.failed`
  (level `error`).
- Top-level `error` events and `error` items are level `warning`, kind
  `warning`: Codex prints them for reconnects and missing model metadata,
  which are not failures (its exit code is the signal).
- `reasoning` items get the fixed description `codex item completed: reasoning`
  (the text stays in the event); every other item type without its own rule
  gets `codex item <started|updated|completed>: <type>`.
- A line that is not a JSON object (including a line the reader cut short) is
  kind `command_output` with `extra.event = {"terminal_output": line}`.
- `message` keeps the first 4,000 characters and then appends ` [truncated]`.
  `\\r` is removed (not interpreted as a carriage return), as the spec says.

Size bounds: a Codex line can be megabytes (`aggregated_output` keeps up to
1 MiB of a command's output). Each string in `extra.event` is cut to
`max_string_chars` (default 16 KiB) with a ` [truncated N chars]` marker, and
the whole event to about `max_event_chars` (default 256 KiB) by dropping the
remaining keys/items behind a marker; `extra.event_truncated` is then true.
An entry therefore stays well under the usual 1 MiB request limit.

Secrets are masked (Redactor) in the message and everywhere in the event,
before anything is cut, so a cut never leaves half a secret behind.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from workers.common.redact import Redactor

MESSAGE_MAX_CHARS = 4000
TRUNCATED_SUFFIX = " [truncated]"
EVENT_STRING_MAX_CHARS = 16 * 1024
EVENT_MAX_CHARS = 256 * 1024
# orjson refuses to encode deeper than 254 levels and the entry wraps the
# event in two more; real events are a handful of levels deep.
EVENT_MAX_DEPTH = 64
# Dict keys are names, not payload; a longer one is garbage.
_KEY_MAX_CHARS = 256
# Once the event budget is spent a string still keeps this much, so that
# short fields like `type` stay readable.
_MIN_STRING_CHARS = 64
_MORE_KEY = "[truncated]"
_DEEP_MARKER = "[truncated: nested too deep]"
_DROPPED_MESSAGE = "Log entry dropped: too large"

# Anything a terminal would interpret rather than show: \r, lone ESC, other C0
# and C1 controls, and lone surrogates (unencodable). \n and \t are kept.
_NEEDS_CLEANING = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_TERMINAL_CODES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor movement, erase
    r"|\x1b\][^\x07\x1b\n]*(?:\x07|\x1b\\)?"  # OSC: titles, hyperlinks
    r"|\x1b[PX^_][^\x1b\n]*(?:\x1b\\)?"  # DCS, SOS, PM, APC strings
    r"|\x1b[ -/]*[0-~]"  # other escape sequences (charsets, keypad, …)
    r"|\x9b[0-?]*[ -/]*[@-~]"  # 8-bit CSI
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]"
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry before the shipper stamps `seq` and `created_at`."""

    level: str
    message: str
    extra: dict[str, Any]


# ---------------------------------------------------------------- messages


def sanitize(text: str) -> str:
    """`text` without ANSI/terminal escape sequences, `\\r` and other control
    characters (newlines and tabs are kept)."""
    if _NEEDS_CLEANING.search(text) is None:
        return text
    return _TERMINAL_CODES.sub("", text)


def clean_message(text: str, redactor: Redactor) -> str:
    """A shippable message: sanitized, secrets masked, cut to 4,000 characters."""
    text = redactor.text(sanitize(text))
    if len(text) > MESSAGE_MAX_CHARS:
        return text[:MESSAGE_MAX_CHARS] + TRUNCATED_SUFFIX
    return text


def cap_text(text: str, limit: int, redactor: Redactor) -> tuple[str, int]:
    """`text` with secrets masked, cut to `limit` characters; also returns how
    many characters were dropped (0 when nothing was cut).

    Only the head is redacted (a 50 MB string costs no more than a short one),
    so the last `longest - 1` characters of the redacted head are dropped too:
    they could hold the start of a secret that the cut split.
    """
    if len(text) <= limit:
        return redactor.text(text), 0
    margin = redactor.longest
    head = redactor.text(text[: limit + margin])
    if margin:
        head = head[: len(head) - (margin - 1)]
    return head[:limit], len(text) - limit


# ------------------------------------------------------------ event capping


class _Walk:
    """State of one capping walk over a parsed event (local to one call)."""

    __slots__ = ("redactor", "max_string", "remaining", "cut")

    def __init__(self, redactor: Redactor, max_string: int, budget: int) -> None:
        self.redactor = redactor
        self.max_string = max_string
        self.remaining = budget
        self.cut = False

    def string(self, text: str) -> str:
        limit = min(self.max_string, max(self.remaining, _MIN_STRING_CHARS))
        kept, dropped = cap_text(text, limit, self.redactor)
        if dropped:
            self.cut = True
            kept = f"{kept} [truncated {dropped} chars]"
        self.remaining -= len(kept) + 4
        return kept

    def key(self, key: Any) -> Any:
        if not isinstance(key, str):
            return key
        kept, dropped = cap_text(key, _KEY_MAX_CHARS, self.redactor)
        if dropped:
            self.cut = True
        self.remaining -= len(kept) + 4
        return kept

    def value(self, obj: Any, depth: int) -> Any:
        if isinstance(obj, str):
            return self.string(obj)
        if isinstance(obj, dict):
            if depth >= EVENT_MAX_DEPTH:
                self.cut = True
                return _DEEP_MARKER
            out: dict[Any, Any] = {}
            for i, (k, v) in enumerate(obj.items()):
                if self.remaining <= 0:
                    self.cut = True
                    out[_MORE_KEY] = f"{len(obj) - i} more keys"
                    break
                out[self.key(k)] = self.value(v, depth + 1)
            return out
        if isinstance(obj, (list, tuple)):
            if depth >= EVENT_MAX_DEPTH:
                self.cut = True
                return _DEEP_MARKER
            items: list[Any] = []
            for i, v in enumerate(obj):
                if self.remaining <= 0:
                    self.cut = True
                    items.append(f"[truncated: {len(obj) - i} more items]")
                    break
                items.append(self.value(v, depth + 1))
            return items
        self.remaining -= 8
        return obj


def cap_value(
    obj: Any,
    redactor: Redactor,
    *,
    max_string_chars: int = EVENT_STRING_MAX_CHARS,
    max_total_chars: int = EVENT_MAX_CHARS,
) -> tuple[Any, bool]:
    """A JSON value redacted and bounded in string size, total size and depth;
    also returns whether anything was cut."""
    walk = _Walk(redactor, max_string_chars, max_total_chars)
    capped = walk.value(obj, 0)
    return capped, walk.cut


# ------------------------------------------------------------ codex output


def _as_text(value: Any) -> str:
    """A field Codex usually prints as a string, whatever it actually holds."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return shlex.join(value)  # older Codex printed commands as argv lists
    return str(value)


def _outcome(item: dict[str, Any]) -> str:
    code = item.get("exit_code")
    if isinstance(code, int) and not isinstance(code, bool):
        return f"exit {code}"
    status = item.get("status")
    return status if isinstance(status, str) and status else "exit ?"


def _describe_item(etype: str, item: dict[str, Any]) -> tuple[str, str, str]:
    phase = etype[5:]  # started / updated / completed
    itype = item.get("type")
    if itype == "command_execution":
        command = _as_text(item.get("command"))
        if phase == "started":
            return "info", "command_started", f"$ {command}"
        output = sanitize(_as_text(item.get("aggregated_output")))
        if phase == "updated":
            return "info", "command_output", output if output.strip() else f"$ {command}"
        if output.strip():
            return "info", "command_finished", output
        return "info", "command_finished", f"$ {command} ({_outcome(item)})"
    if itype == "agent_message":
        text = _as_text(item.get("text"))
        return "info", "codex_event", text if text.strip() else f"codex item {phase}: agent_message"
    if itype == "error":
        text = _as_text(item.get("message"))
        return "warning", "warning", text or "codex error item"
    name = itype if isinstance(itype, str) and itype else "unknown"
    return "info", "codex_event", f"codex item {phase}: {name}"


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return _as_text(error.get("message"))
    return _as_text(error)


def describe_event(event: dict[str, Any]) -> tuple[str, str, str]:
    """(level, run_event_kind, raw message) for one parsed Codex event."""
    etype = event.get("type")
    if etype in ("item.started", "item.updated", "item.completed"):
        item = event.get("item")
        return _describe_item(etype, item if isinstance(item, dict) else {})
    if etype == "thread.started":
        thread_id = thread_id_of(event)
        return "info", "codex_event", f"codex thread started ({thread_id})" if thread_id else "codex thread started"
    if etype == "turn.started":
        return "info", "codex_event", "codex turn started"
    if etype == "turn.completed":
        return "info", "codex_event", "codex turn completed"
    if etype == "turn.failed":
        return "error", "error", _error_text(event.get("error")) or "codex turn failed"
    if etype == "error":
        return "warning", "warning", _as_text(event.get("message")) or "codex error"
    if isinstance(etype, str) and etype:
        return "info", "codex_event", f"codex event: {etype}"
    return "info", "codex_event", "codex event"


def _parse_object(line: bytes) -> dict[str, Any] | None:
    """The JSON object on `line`, or None when it holds anything else."""
    first = line[:1]
    if first != b"{" and (first not in (b" ", b"\t") or line.lstrip()[:1] != b"{"):
        return None
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        if "UTF-8" not in str(exc):
            return None
        try:  # JSON with a stray invalid byte is still JSON to a human
            event = orjson.loads(line.decode("utf-8", "replace"))
        except orjson.JSONDecodeError:
            return None
    return event if isinstance(event, dict) else None


def _line_text(line: bytes, limit: int, redactor: Redactor) -> tuple[str, bool]:
    """The line decoded (invalid UTF-8 replaced), redacted and cut to `limit`
    characters, decoding only as much of a huge line as can be kept."""
    # A character is at most 4 bytes, so this head always decodes to enough.
    head = line[: (limit + redactor.longest) * 4]
    text, dropped = cap_text(head.decode("utf-8", "replace"), limit, redactor)
    if dropped or len(head) < len(line):
        return f"{text} [truncated: line of {len(line)} bytes]", True
    return text, False


def needs_capping(line: bytes, redactor: Redactor, max_string_chars: int = EVENT_STRING_MAX_CHARS) -> bool:
    """Whether the event parsed from `line` must be walked (cap_value) before
    it is shipped: it may hold a long string, deep nesting or a secret. False
    for nearly every line, which is then shipped exactly as parsed."""
    return (
        len(line) > max_string_chars
        or line.count(b"{") + line.count(b"[") >= EVENT_MAX_DEPTH
        or redactor.might_be_in_json(line)
    )


def codex_entry(
    line: bytes,
    redactor: Redactor,
    *,
    truncated_bytes: int = 0,
    max_string_chars: int = EVENT_STRING_MAX_CHARS,
    max_event_chars: int = EVENT_MAX_CHARS,
) -> Entry:
    """The log entry for one line of Codex's stdout (with or without its
    line terminator). `truncated_bytes` > 0 says the reader kept only the head
    of an over-long line and dropped that many bytes."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    if b"\x00" in line:
        line = line.replace(b"\x00", b"")
    event = _parse_object(line)
    cut = False
    if event is None:
        text, cut = _line_text(line, max_string_chars, redactor)
        level, kind, message = "info", "command_output", text
        payload: dict[str, Any] = {"terminal_output": text}
    else:
        if needs_capping(line, redactor, max_string_chars):
            event, cut = cap_value(
                event, redactor, max_string_chars=max_string_chars, max_total_chars=max_event_chars
            )
        level, kind, message = describe_event(event)
        payload = event
    extra: dict[str, Any] = {"event": payload, "run_event_source": "codex", "run_event_kind": kind}
    if cut:
        extra["event_truncated"] = True
    if truncated_bytes > 0:
        extra["line_truncated_bytes"] = truncated_bytes
    return Entry(level, clean_message(message, redactor), extra)


def encode_codex_line(created_at: str, line: bytes, redactor: Redactor, seq: int,
                      *, truncated_bytes: int = 0) -> tuple[bytes, Entry]:
    """The encoded entry for one Codex line, and the entry. No line can make
    this fail: hostile output (odd types, numbers, encodings) must never stop
    the shipper, which would otherwise crash on the same line after every
    restart. A line whose event cannot be mapped is shipped as its text."""
    try:
        entry = codex_entry(line, redactor, truncated_bytes=truncated_bytes)
        return encode_entry(created_at, entry, seq), entry
    except Exception as exc:  # noqa: BLE001 - whatever fails here, the line caused it
        text, _ = _line_text(line, EVENT_STRING_MAX_CHARS, redactor)
        extra: dict[str, Any] = {"event": {"terminal_output": text}, "run_event_source": "codex",
                                 "run_event_kind": "command_output", "event_unreadable": type(exc).__name__}
        entry = Entry("info", clean_message(text, redactor), extra)
        return encode_entry(created_at, entry, seq), entry


def encode_codex_lines(out: bytearray, created_at: str, lines: Sequence[bytes], redactor: Redactor,
                       first_seq: int, tokens: tuple[int, int] = (0, 0),
                       dropped: Mapping[int, int] | None = None) -> tuple[int, int]:
    """Append to `out` the encoded entries of consecutive Codex lines (given
    without their newlines), numbered from `first_seq`, each followed by a
    newline; return the running token totals (`add_usage`) after them.
    `dropped[i]` is `truncated_bytes` of line i.

    Byte for byte what `encode_codex_line` gives line by line, only cheaper:
    the line most Codex output is (a JSON object that needs no capping and no
    cleaning of its raw bytes) is encoded here without an Entry or copied
    dicts; every other line, and any line that raises on this path, goes
    through `encode_codex_line` itself. Entries go straight into one buffer:
    keeping one bytes object per entry alive costs more than encoding it
    (orjson allocates each with room to spare, then shrinks it)."""
    loads, dumps, options = orjson.loads, orjson.dumps, _DUMP_OPTIONS | orjson.OPT_APPEND_NEWLINE
    # One look at all the lines for a secret and for NUL bytes: nearly always
    # there is none, and then no line needs a look of its own.
    joined = b"\n".join(lines)
    secret_check = redactor if redactor.might_be_in_json(joined) else None
    any_nul = b"\x00" in joined
    del joined
    seq = first_seq
    for i, line in enumerate(lines):
        if (
            line[:1] == b"{"  # else not JSON, or JSON after blanks: the general path strips them
            and line[-1:] != b"\r"
            and not (any_nul and b"\x00" in line)
            and not (dropped and i in dropped)
            # needs_capping(line, redactor), in line: a call per line costs more than its checks
            and len(line) <= EVENT_STRING_MAX_CHARS
            and line.count(b"{") + line.count(b"[") < EVENT_MAX_DEPTH
            and not (secret_check and secret_check.might_be_in_json(line))
        ):
            try:
                event = loads(line)
                if type(event) is dict:
                    level, kind, message = describe_event(event)
                    data = dumps({"created_at": created_at, "level": level,
                                  "message": clean_message(message, redactor),
                                  "extra": {"event": event, "run_event_source": "codex",
                                            "run_event_kind": kind, "seq": seq}},
                                 default=str, option=options)
                    if event.get("type") == "turn.completed":
                        tokens = add_usage(tokens, token_usage(event))
                    out += data  # with its newline
                    seq += 1
                    continue
            except Exception:  # noqa: BLE001, S112 - the general path below decides what this line ships as
                pass
        data, entry = encode_codex_line(created_at, line, redactor, seq,
                                        truncated_bytes=dropped.get(i, 0) if dropped else 0)
        tokens = add_usage(tokens, token_usage(entry.extra.get("event") or {}))
        out += data
        out += b"\n"
        seq += 1
    return tokens


# Bootstrap's messages are capped before cleaning, so a runaway string costs
# bounded work; the message itself is cut to MESSAGE_MAX_CHARS afterwards.
_BOOTSTRAP_MESSAGE_MAX_CHARS = 16 * 1024


def bootstrap_record(record: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    """One of bootstrap's own entries (a line of bootstrap.jsonl) made
    shippable like Codex's: its message cleaned of terminal codes and cut to
    4,000 characters, its `extra` bounded (a stderr tail or a git file list can
    be anything)."""
    message = record.get("message")
    text, _ = cap_text(message if isinstance(message, str) else str(message), _BOOTSTRAP_MESSAGE_MAX_CHARS, redactor)
    extra = record.get("extra")
    fields, _ = cap_value(extra if isinstance(extra, dict) else {}, redactor)
    return {**record, "message": clean_message(text, redactor), "extra": fields}


# ----------------------------------------------------------- wire format


def entry_dict(created_at: str, entry: Entry, seq: int) -> dict[str, Any]:
    """The JSON body of `POST /runs/{id}/logs` for `entry`."""
    return {
        "created_at": created_at,
        "level": entry.level,
        "message": entry.message,
        "extra": {**entry.extra, "seq": seq},
    }


def _unicode_safe(obj: Any) -> Any:
    if isinstance(obj, str):
        return obj.encode("utf-8", "replace").decode("utf-8")
    if isinstance(obj, int) and not isinstance(obj, bool) and not -(2**63) <= obj < 2**64:
        return str(obj)  # past what JSON numbers carry here: kept as text
    if isinstance(obj, dict):
        return {_unicode_safe(k): _unicode_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_unicode_safe(v) for v in obj]
    return obj


_DUMP_OPTIONS = orjson.OPT_NON_STR_KEYS


def encode_json(body: Any) -> bytes:
    """orjson encoding that survives lone surrogates and non-JSON values."""
    try:
        return orjson.dumps(body, default=str, option=_DUMP_OPTIONS)
    except orjson.JSONEncodeError:
        # Lone surrogates (from surrogateescape'd text) are not UTF-8; integers
        # past 64 bits are not encodable.
        return orjson.dumps(_unicode_safe(body), default=str, option=_DUMP_OPTIONS)


def encode_entry(created_at: str, entry: Entry, seq: int) -> bytes:
    """`{"created_at","level","message","extra":{…,"seq"}}` as JSON bytes."""
    return encode_json(entry_dict(created_at, entry, seq))


def utc_now_iso() -> str:
    """Now, ISO-8601 in UTC with a `Z` (the format of `created_at`)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def too_large_placeholder(entry_dict: dict[str, Any], message_bytes: int, limit_bytes: int | None) -> dict[str, Any]:
    """The entry sent instead of one the backend refused with 413 (docs/protocol.md,
    Log entries); it keeps the original `seq` so ordering and de-duplication still hold."""
    original_extra = entry_dict.get("extra")
    extra: dict[str, Any] = {
        "dropped": True,
        "drop_reason": "payload_too_large",
        "message_bytes": message_bytes,
        "limit_bytes": limit_bytes,
        "original_level": entry_dict.get("level"),
    }
    if isinstance(original_extra, dict) and "seq" in original_extra:
        extra["seq"] = original_extra["seq"]
    return {
        "created_at": entry_dict.get("created_at") or utc_now_iso(),
        "level": "warning",
        "message": _DROPPED_MESSAGE,
        "extra": extra,
    }


# ------------------------------------------------------ facts from events


# No real turn uses anywhere near this many tokens; a larger count is garbage,
# and sums stay far inside what JSON (and orjson, 64 bits) can carry.
TOKEN_COUNT_MAX = 2**53 - 1


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= TOKEN_COUNT_MAX:
        return value
    return None


def add_usage(totals: tuple[int, int], usage: tuple[int, int] | None) -> tuple[int, int]:
    """Running (input, output) token totals, saturating at TOKEN_COUNT_MAX so a
    hostile count can never make the shipper's state unencodable."""
    if usage is None:
        return totals
    return (min(totals[0] + usage[0], TOKEN_COUNT_MAX), min(totals[1] + usage[1], TOKEN_COUNT_MAX))


def token_usage(event: dict[str, Any]) -> tuple[int, int] | None:
    """(input_tokens, output_tokens) of a `turn.completed` event, else None."""
    if event.get("type") != "turn.completed":
        return None
    usage = event.get("usage")
    if not isinstance(usage, dict):
        return None
    tokens_in, tokens_out = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
    if tokens_in is None and tokens_out is None:
        return None
    return tokens_in or 0, tokens_out or 0


def _usable_id(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def thread_id_of(event: dict[str, Any]) -> str | None:
    """The id `codex exec resume` needs: `thread_id` of `thread.started`, else
    `thread.id`, else a `run_id` field (older Codex versions)."""
    if event.get("type") == "thread.started":
        found = _usable_id(event.get("thread_id"))
        if found:
            return found
    thread = event.get("thread")
    if isinstance(thread, dict):
        found = _usable_id(thread.get("id"))
        if found:
            return found
    return _usable_id(event.get("run_id"))
