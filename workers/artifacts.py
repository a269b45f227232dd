"""The pure logic of artifacts (docs/protocol.md: Artifacts): read the manifest Codex writes,
enrich each artifact with the file it names, and list those files so code
persistence can leave them out of the commit. No HTTP here.

The manifest and the files it names are written by a language model inside a
sandbox, so everything is read defensively:
- a path is resolved (realpath) and must stay inside the workspace; one that
  points out is never opened, not even stat'ed through an open file;
- only regular files are ever opened, and they are opened with O_NONBLOCK and
  O_NOFOLLOW, walking down from the workspace one component at a time, then
  checked again with fstat: a FIFO or device swapped in between the check and
  the open can neither hang us nor be read, and a symlink swapped in cannot
  lead us out of the workspace;
- sizes are checked before reading and reads are bounded, so a huge (or
  growing) file is refused without being read.

diff_carousel items: their `path` is taken to be the *source file the diff is
about* (a label next to the inline `diff`), so it is neither read nor left out of
the commit — leaving it out would drop the very code change the diff shows. The
one exception is an item with no inline `diff` whose path ends in `.diff` or
`.patch`: that file *is* the diff, so its text is embedded as `diff` and it counts
as an artifact file.

Each artifact is encoded on its own before it is posted (encode_artifact).
JSON allows what orjson, the encoder, refuses: integers beyond 64 bits, nesting
deeper than 254 levels, strings with lone surrogates (a `\\ud800` escape, or the
name of a file that is not UTF-8). Such an artifact is coerced with a warning
(surrogates become U+FFFD, a `json` artifact's content is sent as JSON text,
other big integers as decimal text), and skipped with a warning when even that
cannot be encoded; the other artifacts are posted either way.
"""

from __future__ import annotations

import binascii
import errno
import functools
import json
import mimetypes
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from workers.common.errors import ConfigError

BLOB_THRESHOLD_ENV = "FLYWHEEL_ARTIFACT_BLOB_THRESHOLD_BYTES"
DEFAULT_BLOB_THRESHOLD = 16 * 1024 * 1024
# A file is embedded whole in one JSON body (as base64, 4/3 of it) held in
# memory: more than this is no artifact to embed, and a number past what a
# read can ask for crashed the worker.
MAX_BLOB_THRESHOLD = 1024 * 1024 * 1024
DEFAULT_MANIFEST_MAX_BYTES = 64 * 1024 * 1024
HEAD_CHARS = 2000
CHECKPOINT_SUFFIXES = frozenset(
    {
        ".pt", ".pth", ".ckpt", ".safetensors", ".bin", ".h5", ".hdf5", ".pkl",
        ".pickle", ".joblib", ".npy", ".npz", ".onnx", ".pb",
    }
)
TEXT_TYPES = frozenset({"text", "html", "table"})
DIFF_FILE_SUFFIXES = frozenset({".diff", ".patch"})

ManifestStatus = Literal["ok", "missing", "empty", "malformed"]

# Base64 is encoded in slices whose length is a multiple of 3, so the pieces
# concatenate into exactly the encoding of the whole.
_B64_SLICE = 3 * 256 * 1024
# orjson's limits: containers nested up to 254 deep, integers of 64 bits.
_MAX_JSON_DEPTH = 254
_MIN_INT, _MAX_INT = -(2**63), 2**64 - 1
_SURROGATE = re.compile("[\ud800-\udfff]")
# Enough bytes to always yield HEAD_CHARS characters (UTF-8 is at most 4 bytes
# a character; every invalid byte becomes one replacement character).
_HEAD_BYTES = 4 * HEAD_CHARS


@dataclass(frozen=True)
class ManifestRead:
    """What reading the manifest gave. `artifacts` are fresh dicts
    `{"artifact_type": str, "payload": dict}`; `error` is the parser's (or our)
    message when malformed; `head` is the file's first HEAD_CHARS characters
    whenever its bytes could be read (for the fix prompt)."""

    status: ManifestStatus
    artifacts: tuple[dict[str, Any], ...] = ()
    warnings: tuple[str, ...] = ()
    error: str | None = None
    head: str | None = None


@dataclass(frozen=True)
class Enriched:
    """One artifact after enrichment. `artifact` is None when it was skipped
    (its file lies outside the workspace); `file` is the resolved path it names
    when that path lies inside the workspace (even if missing or not a file)."""

    artifact: dict[str, Any] | None
    warnings: tuple[str, ...] = ()
    file: Path | None = None


@dataclass(frozen=True)
class Encoded:
    """One artifact as the body to post; `body` is None when it cannot be sent."""

    body: bytes | None
    warnings: tuple[str, ...] = ()


class _Refused(Exception):
    """A path that must not be read; the message says why."""


class _TooDeep(Exception):
    """Nested deeper than orjson encodes."""


# ---------------------------------------------------------------------------
# Configuration


def blob_threshold_from_env(env: Mapping[str, str]) -> int:
    """The embedding threshold in bytes: FLYWHEEL_ARTIFACT_BLOB_THRESHOLD_BYTES,
    default 16 MiB. Raises ConfigError when the value is not a whole number
    from 0 to MAX_BLOB_THRESHOLD (1 GiB)."""
    raw = env.get(BLOB_THRESHOLD_ENV, "").strip()
    if not raw:
        return DEFAULT_BLOB_THRESHOLD
    try:
        value = int(raw, 10)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(
            f"{BLOB_THRESHOLD_ENV}={raw!r} is not a whole number of bytes; "
            f"set it to e.g. {DEFAULT_BLOB_THRESHOLD} (16 MiB) or unset it."
        )
    if value > MAX_BLOB_THRESHOLD:
        raise ConfigError(
            f"{BLOB_THRESHOLD_ENV}={raw!r} is more than the most bootstrap embeds, "
            f"{MAX_BLOB_THRESHOLD} (1 GiB); set it lower or unset it (16 MiB)."
        )
    return value


# ---------------------------------------------------------------------------
# Paths and safe reading


def _is_inside(real: str, root: str) -> bool:
    if real == root:
        return True
    prefix = root if root.endswith(os.sep) else root + os.sep
    return real.startswith(prefix)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def _resolve(root: str, given: str) -> str:
    """realpath of `given` (relative to root unless absolute); _Refused when it
    lands outside root."""
    if "\0" in given:
        raise _Refused("contains a NUL character")
    try:
        real = os.path.realpath(os.path.join(root, given))
    except ValueError:  # a lone surrogate ("\ud800") names no file
        raise _Refused("is not a valid file name") from None
    if not _is_inside(real, root):
        raise _Refused("resolves outside the workspace")
    return real


def _open_confined(root: str, real: str) -> int:
    """Open `real` (a realpath inside `root`) read-only without following any
    symlink on the way, without blocking on a FIFO, and without letting a
    device become our controlling terminal. Raises OSError (ELOOP/ENOTDIR when
    something was swapped for a symlink since `real` was resolved)."""
    rel = os.path.relpath(real, root)
    parts = [] if rel == os.curdir else rel.split(os.sep)
    dir_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    file_flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(root, dir_flags | (os.O_NONBLOCK if not parts else 0))
    if not parts:
        return fd
    try:
        for part in parts[:-1]:
            child = os.open(part, dir_flags | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
        return os.open(parts[-1], file_flags, dir_fd=fd)
    finally:
        os.close(fd)


def _read_bounded(fd: int, expected: int, limit: int) -> bytes | None:
    """Read the whole file from `fd`, but never more than limit + 1 bytes; None
    when it holds more than `limit`. In the common case (size unchanged since
    fstat) this is one allocation and no copy."""
    chunks: list[bytes] = []
    total = 0
    want = min(expected, limit) + 1
    while total <= limit:
        chunk = os.read(fd, want)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        want = limit + 1 - total
    if total > limit:
        return None
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


@dataclass(frozen=True)
class _FileBytes:
    size: int
    data: bytes | None  # None: over the limit, not read


def _read_regular(root: str, real: str, limit: int) -> _FileBytes:
    """Read a regular file inside root if it holds at most `limit` bytes.
    Raises _Refused (not a regular file) or OSError."""
    st = os.stat(real)
    if not stat.S_ISREG(st.st_mode):
        # Checked before opening: a FIFO would block, a device may have side effects.
        raise _Refused(f"is {_kind(st.st_mode)}")
    if st.st_size > limit:
        return _FileBytes(st.st_size, None)
    fd = _open_confined(root, real)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Refused(f"is {_kind(st.st_mode)}")
        if st.st_size > limit:
            return _FileBytes(st.st_size, None)
        data = _read_bounded(fd, st.st_size, limit)
    finally:
        os.close(fd)
    if data is None:
        # It grew past the limit while we read it.
        return _FileBytes(max(st.st_size, limit + 1), None)
    return _FileBytes(len(data), data)


def _read_head(root: str, real: str) -> str | None:
    """The first HEAD_CHARS characters of a regular file, or None."""
    try:
        fd = _open_confined(root, real)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return _head_of(os.read(fd, _HEAD_BYTES))
    except OSError:
        return None
    finally:
        os.close(fd)


def _head_of(data: bytes) -> str:
    return data[:_HEAD_BYTES].decode("utf-8", errors="replace")[:HEAD_CHARS]


def _size_text(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n} bytes"


def _loads(text: str) -> tuple[Any, bool]:
    """json.loads (stdlib: its messages say line and column) with NaN and
    Infinity turned into null, so the result is valid JSON for any encoder;
    the flag says whether that happened."""
    replaced: list[str] = []

    def constant(name: str) -> None:
        replaced.append(name)
        return None

    return json.loads(text, parse_constant=constant), bool(replaced)


def _json_error(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply to parse"
    return str(exc)


# ---------------------------------------------------------------------------
# Reading the manifest


def read_manifest(
    path: Path,
    max_bytes: int = DEFAULT_MANIFEST_MAX_BYTES,
    workspace: Path | None = None,
) -> ManifestRead:
    """Read and coerce the manifest at `path`. `workspace` (default: the
    manifest's folder) bounds where a symlinked manifest may point. Never raises
    for anything the file's author can cause; never blocks on a FIFO."""
    root = os.path.realpath(workspace if workspace is not None else path.parent)
    if not os.path.lexists(path):
        return ManifestRead("missing")
    try:
        real = _resolve(root, os.path.abspath(path))
    except _Refused as why:
        return ManifestRead("malformed", error=f"manifest {path.name} {why}; it was not read")
    try:
        got = _read_regular(root, real, max_bytes)
    except FileNotFoundError:
        # A dangling symlink, or removed since we looked.
        return ManifestRead("missing")
    except _Refused as why:
        return ManifestRead("malformed", error=f"manifest {path.name} {why}, not a file")
    except OSError as exc:
        return ManifestRead(
            "malformed", error=f"manifest {path.name} could not be read: {exc.strerror or exc}"
        )
    if got.data is None:
        return ManifestRead(
            "malformed",
            error=(
                f"manifest is {_size_text(got.size)} ({got.size} bytes), larger than "
                f"the {_size_text(max_bytes)} limit"
            ),
            head=_read_head(root, real),
        )
    return parse_manifest_bytes(got.data)


def parse_manifest_bytes(data: bytes) -> ManifestRead:
    """Decode, parse and coerce a manifest's bytes (see read_manifest)."""
    head = _head_of(data)
    warnings: list[str] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ManifestRead(
            "malformed", error=f"not valid UTF-8 at byte {exc.start}", head=head
        )
    if text.startswith("\ufeff"):
        text = text[1:]
        warnings.append("manifest starts with a UTF-8 byte order mark; ignored it")
    if not text.strip():
        return ManifestRead("empty", warnings=tuple(warnings), head=head)
    try:
        document, replaced = _loads(text)
    except (ValueError, RecursionError) as exc:
        return ManifestRead(
            "malformed", warnings=tuple(warnings), error=_json_error(exc), head=head
        )
    if replaced:
        warnings.append("manifest contains NaN or Infinity; replaced with null")
    items, problem = _coerce_list(document, warnings)
    if problem is not None:
        return ManifestRead("malformed", warnings=tuple(warnings), error=problem, head=head)
    artifacts: list[dict[str, Any]] = []
    skipped: list[str] = []
    for number, item in enumerate(items, start=1):
        artifact, item_warnings = _normalize_item(number, item)
        warnings.extend(item_warnings)
        if artifact is None:
            skipped.extend(item_warnings[-1:])
        else:
            artifacts.append(artifact)
    if artifacts:
        return ManifestRead("ok", tuple(artifacts), tuple(warnings), head=head)
    if skipped:
        # Every entry was unusable: that is a broken manifest, and the fix
        # prompt should say why rather than call it empty.
        return ManifestRead(
            "malformed",
            warnings=tuple(warnings),
            error="no usable artifact: " + "; ".join(skipped[:5]),
            head=head,
        )
    return ManifestRead("empty", warnings=tuple(warnings), head=head)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _coerce_list(document: Any, warnings: list[str]) -> tuple[list[Any], str | None]:
    """The list of artifact entries a manifest document stands for, or an error."""
    if isinstance(document, list):
        return document, None
    if not isinstance(document, dict):
        return [], f"manifest is {_json_kind(document)}, not a JSON array of artifacts"
    if "artifact_type" in document:
        warnings.append("manifest was a single artifact object, not a list; wrapped it in a list")
        return [document], None
    if isinstance(document.get("artifacts"), list):
        warnings.append("manifest was a dict with an 'artifacts' list; unwrapped it")
        return document["artifacts"], None
    for key, value in document.items():
        if isinstance(value, list):
            warnings.append(f"manifest was a dict; used its first list value {key!r}")
            return value, None
    return [], (
        "manifest is a JSON object with neither 'artifact_type' nor a list of "
        "artifacts; expected a JSON array of artifacts"
    )


def _normalize_item(number: int, item: Any) -> tuple[dict[str, Any] | None, list[str]]:
    """One manifest entry as {"artifact_type", "payload"}, or None (the last
    warning then says why it was skipped)."""
    if not isinstance(item, dict):
        return None, [f"artifact #{number} skipped: {_json_kind(item)}, not an object"]
    raw_type = item.get("artifact_type")
    if not isinstance(raw_type, str) or not raw_type.strip():
        what = (
            "missing artifact_type"
            if raw_type is None
            else "artifact_type is not a non-empty string"
        )
        return None, [f"artifact #{number} skipped: {what}"]
    warnings: list[str] = []
    artifact_type = raw_type.strip().lower()
    if artifact_type != raw_type:
        warnings.append(f"artifact #{number}: artifact_type {raw_type!r} read as {artifact_type!r}")
    others = {k: v for k, v in item.items() if k not in ("artifact_type", "payload")}
    payload = item.get("payload")
    if isinstance(payload, dict):
        if others:
            warnings.append(
                f"artifact #{number}: ignored keys outside 'payload': {', '.join(sorted(others))}"
            )
    else:
        if "payload" in item:
            warnings.append(
                f"artifact #{number}: payload is {_json_kind(payload)}, not an object; ignored it"
            )
        if others:
            if "payload" not in item:
                warnings.append(
                    f"artifact #{number} has no 'payload'; used its other keys "
                    f"({', '.join(sorted(others))}) as the payload"
                )
            payload = others
        else:
            payload = {}
    return {"artifact_type": artifact_type, "payload": payload}, warnings


def manifest_fingerprint(path: Path) -> tuple[int, ...] | None:
    """Identity and version of the manifest (following a symlink), so a watcher
    can tell whether it changed since it was last read; None when absent."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# ---------------------------------------------------------------------------
# Enriching one artifact


@functools.cache
def _mime_table() -> mimetypes.MimeTypes:
    # A private table built from Python's defaults only: the host's
    # /etc/mime.types says e.g. that .pt is a SNES page table.
    table = mimetypes.MimeTypes()
    for ext, mime in ((".webp", "image/webp"), (".avif", "image/avif"), (".csv", "text/csv")):
        table.add_type(mime, ext)
    return table


def _mime_for(name: str, artifact_type: str, fmt: Any) -> str:
    if artifact_type == "checkpoint":
        return "application/octet-stream"
    guessed, _ = _mime_table().guess_type(name, strict=False)
    if guessed is None and isinstance(fmt, str) and fmt.strip():
        guessed, _ = _mime_table().guess_type("x." + fmt.strip().lower(), strict=False)
    return guessed or "application/octet-stream"


def _data_url(mime: str, data: bytes) -> str:
    """data:<mime>;base64,<…> built with one output buffer and one str copy."""
    prefix = f"data:{mime};base64,".encode("ascii")
    out = bytearray(len(prefix) + 4 * ((len(data) + 2) // 3))
    out[: len(prefix)] = prefix
    pos = len(prefix)
    view = memoryview(data)
    for start in range(0, len(data), _B64_SLICE):
        piece = binascii.b2a_base64(view[start : start + _B64_SLICE], newline=False)
        out[pos : pos + len(piece)] = piece
        pos += len(piece)
    return out.decode("ascii")


def _decode_text(data: bytes, label: str, warnings: list[str]) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        warnings.append(
            f"{label} is not valid UTF-8 (at byte {exc.start}); undecodable bytes replaced"
        )
        text = data.decode("utf-8", errors="replace")
    return text[1:] if text.startswith("\ufeff") else text


def _file_reference(payload: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(key, value) of the file a payload names: `path`, else `file`."""
    for key in ("path", "file"):
        value = payload.get(key)
        if isinstance(value, str) and value.strip():
            return key, value
    return None, None


def enrich(artifact: Mapping[str, Any], workspace: Path, blob_threshold: int) -> Enriched:
    """The artifact to post, with the file its payload names embedded per
    docs/protocol.md, Artifacts (a new dict; the input is never mutated)."""
    artifact_type = str(artifact.get("artifact_type", ""))
    raw_payload = artifact.get("payload")
    payload: dict[str, Any] = dict(raw_payload) if isinstance(raw_payload, Mapping) else {}
    warnings: list[str] = []
    root = os.path.realpath(workspace)

    for name in ("path", "file"):
        value = payload.get(name)
        if value is not None and not (isinstance(value, str) and value.strip()):
            what = "empty" if isinstance(value, str) else f"{_json_kind(value)}, not a file name"
            warnings.append(f"{artifact_type} artifact: '{name}' is {what}; ignored it")

    if artifact_type == "diff_carousel" and isinstance(payload.get("diffs"), list):
        payload["diffs"] = _enrich_diffs(payload["diffs"], root, blob_threshold, warnings)
    elif artifact_type == "diff_carousel" and "diffs" in payload:
        warnings.append("diff_carousel artifact: 'diffs' is not a list; passed it on as is")

    key, given = _file_reference(payload)
    if given is None:
        return Enriched({"artifact_type": artifact_type, "payload": payload}, tuple(warnings))
    label = f"{artifact_type} artifact {key} {given!r}"
    try:
        real = _resolve(root, given)
    except _Refused as why:
        warnings.append(f"{label} skipped: the path {why}; it was not read")
        return Enriched(None, tuple(warnings))

    if os.path.splitext(real)[1].lower() in CHECKPOINT_SUFFIXES or (
        os.path.splitext(given)[1].lower() in CHECKPOINT_SUFFIXES
    ):
        artifact_type = "checkpoint"
    result = {"artifact_type": artifact_type, "payload": payload}

    try:
        got = _read_regular(root, real, blob_threshold)
    except FileNotFoundError:
        return _with_error(result, real, label, f"File not found: {given}", warnings)
    except _Refused as why:
        return _with_error(result, real, label, f"Not a regular file: {given} {why}", warnings)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            reason = f"Could not read {given}: it changed while being read"
        else:
            reason = f"Could not read {given}: {exc.strerror or exc}"
        return _with_error(result, real, label, reason, warnings)

    payload["size_bytes"] = got.size
    if got.data is None:
        reason = f"File too large ({got.size} bytes, max {blob_threshold})"
        return _with_error(result, real, label, reason, warnings)

    if "content" in payload and artifact_type in TEXT_TYPES | {"json"}:
        warnings.append(f"{label}: inline 'content' replaced by the file's content")
    if artifact_type in TEXT_TYPES:
        payload["content"] = _decode_text(got.data, label, warnings)
    elif artifact_type == "json":
        text = _decode_text(got.data, label, warnings)
        try:
            payload["content"], replaced = _loads(text)
            if replaced:
                warnings.append(f"{label}: NaN or Infinity replaced with null")
        except (ValueError, RecursionError) as exc:
            warnings.append(f"{label} is not valid JSON ({_json_error(exc)}); sent as raw text")
            payload["content"] = text
    else:
        mime = _mime_for(given, artifact_type, payload.get("format"))
        if mime == "application/octet-stream" and artifact_type != "checkpoint":
            # A symlink may give the real file the telling suffix.
            mime = _mime_for(real, artifact_type, payload.get("format"))
        payload["data_url"] = _data_url(mime, got.data)
    return Enriched(result, tuple(warnings), Path(real))


def _with_error(
    result: dict[str, Any], real: str, label: str, reason: str, warnings: list[str]
) -> Enriched:
    # The artifact is still posted, so the user sees it exists and why it is empty.
    result["payload"]["rendering_error"] = reason
    warnings.append(f"{label}: {reason}")
    return Enriched(result, tuple(warnings), Path(real))


def _is_diff_file(item: Mapping[str, Any]) -> bool:
    path = item.get("path")
    return (
        isinstance(path, str)
        and not isinstance(item.get("diff"), str)
        and os.path.splitext(path)[1].lower() in DIFF_FILE_SUFFIXES
    )


def _enrich_diffs(
    diffs: list[Any], root: str, budget: int, warnings: list[str]
) -> list[Any]:
    """diff items: a path is a label (checked, never read) unless the item has
    no inline diff and the path is a .diff/.patch file, whose text is then
    embedded. Embedded diffs share one byte budget, the blob threshold."""
    out: list[Any] = []
    for number, item in enumerate(diffs, start=1):
        path = item.get("path") if isinstance(item, dict) else None
        if not isinstance(path, str) or not path.strip():
            out.append(item)
            continue
        label = f"diff_carousel diff #{number} path {path!r}"
        try:
            real = _resolve(root, path)
        except _Refused as why:
            warnings.append(f"{label} {why}; kept as a label, not read")
            out.append(item)
            continue
        if not _is_diff_file(item):
            out.append(item)
            continue
        new_item = dict(item)
        try:
            got = _read_regular(root, real, budget)
        except (_Refused, OSError) as exc:
            cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            warnings.append(f"{label}: could not embed the diff file ({cause})")
            out.append(item)
            continue
        if got.data is None:
            warnings.append(
                f"{label}: diff file too large ({got.size} bytes, max {budget}); not embedded"
            )
            out.append(item)
            continue
        budget -= got.size
        new_item["diff"] = _decode_text(got.data, label, warnings)
        out.append(new_item)
    return out


# ---------------------------------------------------------------------------
# Encoding one artifact


def scrub(text: str) -> str:
    """`text` with lone surrogates as U+FFFD, so any UTF-8 encoder takes it."""
    return _SURROGATE.sub("\ufffd", text)


def encode_artifact(artifact: Mapping[str, Any], label: str) -> Encoded:
    """The JSON body that posts `artifact`, coerced when orjson refuses it
    (see the module's docstring); `label` names it in the warnings."""
    try:
        return Encoded(orjson.dumps(artifact))
    except orjson.JSONEncodeError as exc:
        refused = str(exc)
    notes: list[str] = []
    try:
        coerced = _coerce(artifact, notes)
        body = orjson.dumps(coerced)
    except (_TooDeep, orjson.JSONEncodeError) as exc:
        why = f"nested deeper than {_MAX_JSON_DEPTH} levels" if isinstance(exc, _TooDeep) else str(exc)
        return Encoded(None, (f"{label} skipped: it cannot be sent as JSON ({why})",))
    done = "; ".join(notes) or "coerced"
    return Encoded(body, (f"{label} cannot be sent as JSON as it is ({refused}); {done}",))


def _coerce(artifact: Mapping[str, Any], notes: list[str]) -> Any:
    """A copy of `artifact` that orjson encodes, or _TooDeep."""
    payload = artifact.get("payload")
    if artifact.get("artifact_type") == "json" and isinstance(payload, Mapping) and "content" in payload:
        payload = _json_content(payload, notes)
    return _scrubbed({**artifact, "payload": payload}, notes, ints_as_text=True)


def _json_content(payload: Mapping[str, Any], notes: list[str]) -> Mapping[str, Any]:
    """A json artifact's payload with its content kept when replacing lone
    surrogates is enough (the walk over the whole artifact does that), else
    as JSON text, which keeps a big integer or a deep structure exactly."""
    content = payload["content"]
    try:
        # The content sits two levels down: artifact, payload.
        if _encodes(_scrubbed(content, [], depth=2)):
            return payload
    except _TooDeep:
        pass
    text = _json_text(content)
    if text is None:
        return payload
    notes.append("its content was sent as JSON text")
    return {**payload, "content": text}


def _encodes(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return False
    return True


def _json_text(value: Any) -> str | None:
    try:
        return scrub(json.dumps(value, ensure_ascii=False))
    except (RecursionError, ValueError):
        return None


def _scrubbed(value: Any, notes: list[str], ints_as_text: bool = False, depth: int = 0) -> Any:
    """`value` with lone surrogates replaced (and, with `ints_as_text`,
    integers past 64 bits as text); _TooDeep past orjson's nesting. Each kind
    of change is noted once."""
    if isinstance(value, str):
        if _SURROGATE.search(value):
            _note(notes, "text that is not valid Unicode (lone surrogates) was replaced with U+FFFD")
            return scrub(value)
        return value
    if isinstance(value, int) and not isinstance(value, bool) and not _MIN_INT <= value <= _MAX_INT:
        if not ints_as_text:
            return value
        _note(notes, "integers beyond 64 bits were sent as text")
        return str(value)
    if isinstance(value, (dict, list)):
        if depth >= _MAX_JSON_DEPTH:
            raise _TooDeep
        if isinstance(value, list):
            return [_scrubbed(item, notes, ints_as_text, depth + 1) for item in value]
        return {_scrubbed(str(key), notes): _scrubbed(item, notes, ints_as_text, depth + 1)
                for key, item in value.items()}
    return value


def _note(notes: list[str], note: str) -> None:
    if note not in notes:
        notes.append(note)


# ---------------------------------------------------------------------------
# Files to leave out of the commit


def artifact_files(artifacts: Iterable[Mapping[str, Any]], workspace: Path) -> set[Path]:
    """Workspace-relative paths of the files the artifacts name (`path` and
    `file`, and .diff/.patch files of diff_carousel items without an inline
    diff), for unstaging. Only existing regular files and symlinks inside the
    workspace: both the name as git sees it (a symlink itself) and the file it
    resolves to. Never the workspace itself or a directory."""
    root = os.path.realpath(workspace)
    found: set[Path] = set()
    for artifact in artifacts:
        payload = artifact.get("payload") if isinstance(artifact, Mapping) else None
        if not isinstance(payload, Mapping):
            continue
        names = [payload.get("path"), payload.get("file")]
        diffs = payload.get("diffs")
        if isinstance(diffs, list):
            names.extend(d.get("path") for d in diffs if isinstance(d, dict) and _is_diff_file(d))
        for name in names:
            if isinstance(name, str) and name.strip():
                found.update(_git_names(root, name))
    return found


def _git_names(root: str, given: str) -> set[Path]:
    if "\0" in given:
        return set()
    joined = os.path.join(root, given)
    # The entry git tracks: its folder resolved, its own name kept, so a
    # symlinked artifact is unstaged as the link itself.
    try:
        parent = os.path.realpath(os.path.dirname(joined))
        resolved = os.path.realpath(joined)
    except ValueError:  # a lone surrogate names no file
        return set()
    entry = os.path.join(parent, os.path.basename(joined))
    names: set[Path] = set()
    for candidate in (entry, resolved):
        if candidate == root or not _is_inside(candidate, root):
            continue
        try:
            mode = os.lstat(candidate).st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
            names.add(Path(os.path.relpath(candidate, root)))
    return names
