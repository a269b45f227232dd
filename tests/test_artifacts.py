"""Tests of workers/artifacts.py on real files, FIFOs, symlinks and sparse files."""

from __future__ import annotations

import base64
import copy
import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from workers import artifacts as A
from workers.artifacts import (
    DEFAULT_BLOB_THRESHOLD,
    HEAD_CHARS,
    artifact_files,
    blob_threshold_from_env,
    enrich,
    manifest_fingerprint,
    read_manifest,
)
from workers.common.errors import ConfigError
from workers.common.names import MANIFEST_NAME

# Anything that opens a FIFO for reading without O_NONBLOCK hangs; fail fast.
pytestmark = pytest.mark.timeout(20)

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    return path


def write_manifest(ws: Path, content: str | bytes) -> Path:
    path = ws / MANIFEST_NAME
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def bytes_read_by_process() -> int | None:
    """rchar of /proc/self/io: every byte this process got from read(2)."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return None


def art(artifact_type: str, **payload: Any) -> dict[str, Any]:
    return {"artifact_type": artifact_type, "payload": payload}


# ---------------------------------------------------------------------------
# read_manifest: coercion


def test_list_is_used_as_is(ws: Path) -> None:
    items = [art("text", content="hi"), art("image", path="a.png", format="png")]
    got = read_manifest(write_manifest(ws, json.dumps(items)))
    assert got.status == "ok"
    assert got.artifacts == tuple(items)
    assert got.warnings == ()
    assert got.error is None
    assert got.head == json.dumps(items)


def test_single_artifact_object_is_wrapped(ws: Path) -> None:
    got = read_manifest(write_manifest(ws, json.dumps(art("text", content="x"))))
    assert got.status == "ok"
    assert got.artifacts == (art("text", content="x"),)
    assert any("single artifact" in w for w in got.warnings)


def test_dict_with_artifacts_list_is_unwrapped(ws: Path) -> None:
    doc = {"version": 1, "other": [1], "artifacts": [art("text", content="x")]}
    got = read_manifest(write_manifest(ws, json.dumps(doc)))
    assert got.status == "ok"
    assert got.artifacts == (art("text", content="x"),)
    assert got.warnings == ("manifest was a dict with an 'artifacts' list; unwrapped it",)


def test_dict_first_list_value_is_unwrapped(ws: Path) -> None:
    doc = {"note": "hi", "artifacts": "not a list", "results": [art("json", content={"a": 1})], "z": [5]}
    got = read_manifest(write_manifest(ws, json.dumps(doc)))
    assert got.status == "ok"
    assert got.artifacts == (art("json", content={"a": 1}),)
    assert any("'results'" in w for w in got.warnings)


def test_dict_without_any_list_is_malformed(ws: Path) -> None:
    got = read_manifest(write_manifest(ws, json.dumps({"a": 1, "b": {"c": 2}})))
    assert got.status == "malformed"
    assert got.artifacts == ()
    assert "JSON array" in (got.error or "")
    assert got.head is not None


@pytest.mark.parametrize(
    ("text", "kind"),
    [("42", "a number"), ('"artifacts"', "a string"), ("null", "null"), ("true", "a boolean")],
)
def test_scalar_is_malformed(ws: Path, text: str, kind: str) -> None:
    got = read_manifest(write_manifest(ws, text))
    assert got.status == "malformed"
    assert got.error == f"manifest is {kind}, not a JSON array of artifacts"
    assert got.head == text


def test_missing_manifest(ws: Path) -> None:
    got = read_manifest(ws / MANIFEST_NAME)
    assert got == A.ManifestRead("missing")


@pytest.mark.parametrize("content", ["", "   \n\t  \n"])
def test_empty_or_whitespace_is_empty(ws: Path, content: str) -> None:
    got = read_manifest(write_manifest(ws, content))
    assert got.status == "empty"
    assert got.artifacts == ()
    assert got.error is None


def test_empty_list_is_empty(ws: Path) -> None:
    got = read_manifest(write_manifest(ws, "[]"))
    assert got.status == "empty"
    assert got.warnings == ()


def test_wrapper_with_empty_list_is_empty(ws: Path) -> None:
    got = read_manifest(write_manifest(ws, '{"artifacts": []}'))
    assert got.status == "empty"
    assert len(got.warnings) == 1


def test_truncated_json_gives_parser_message_and_head(ws: Path) -> None:
    text = '[\n  {"artifact_type": "text",\n    "payload": {"content": "hello"'
    got = read_manifest(write_manifest(ws, text))
    assert got.status == "malformed"
    assert got.artifacts == ()
    with pytest.raises(json.JSONDecodeError) as parser:
        json.loads(text)
    assert got.error == str(parser.value)
    assert "line 3" in (got.error or "")
    assert got.head == text


def test_missing_comma_message(ws: Path) -> None:
    text = '[\n {"artifact_type": "text"\n  "payload": {}}]'
    got = read_manifest(write_manifest(ws, text))
    assert got.status == "malformed"
    assert (got.error or "").startswith("Expecting ',' delimiter: line 3 column 3")


def test_head_is_first_2000_characters(ws: Path) -> None:
    text = "[" + "é" * 5000  # two bytes a character: the head is cut by characters
    got = read_manifest(write_manifest(ws, text))
    assert got.status == "malformed"
    assert got.head == text[:HEAD_CHARS]
    assert len(got.head or "") == HEAD_CHARS


def test_not_utf8_is_malformed_with_offset(ws: Path) -> None:
    data = b'[{"artifact_type": "text", "payload": {"content": "caf\xe9"}}]'
    got = read_manifest(write_manifest(ws, data))
    assert got.status == "malformed"
    assert got.error == f"not valid UTF-8 at byte {len(data) - 5}"
    assert got.head is not None and "\ufffd" in got.head


def test_utf8_bom_is_tolerated(ws: Path) -> None:
    data = "\ufeff" + json.dumps([art("text", content="x")])
    got = read_manifest(write_manifest(ws, data.encode("utf-8")))
    assert got.status == "ok"
    assert any("byte order mark" in w for w in got.warnings)


def test_nan_becomes_null(ws: Path) -> None:
    got = read_manifest(write_manifest(ws, '[{"artifact_type": "json", "payload": {"loss": NaN}}]'))
    assert got.status == "ok"
    assert got.artifacts == (art("json", loss=None),)
    assert any("NaN" in w for w in got.warnings)


def test_deep_nesting_is_malformed_not_a_crash(ws: Path) -> None:
    got = read_manifest(write_manifest(ws, "[" * 200_000 + "]" * 200_000))
    assert got.status == "malformed"
    assert got.error


def test_items_that_are_not_objects_or_lack_type_are_skipped(ws: Path) -> None:
    items: list[Any] = [
        1,
        "text",
        None,
        {"payload": {"content": "no type"}},
        {"artifact_type": 7, "payload": {}},
        {"artifact_type": "  ", "payload": {}},
        art("text", content="kept"),
    ]
    got = read_manifest(write_manifest(ws, json.dumps(items)))
    assert got.status == "ok"
    assert got.artifacts == (art("text", content="kept"),)
    assert "artifact #1 skipped: a number, not an object" in got.warnings
    assert "artifact #3 skipped: null, not an object" in got.warnings
    assert "artifact #4 skipped: missing artifact_type" in got.warnings
    assert any(w.startswith("artifact #5 skipped") for w in got.warnings)
    assert any(w.startswith("artifact #6 skipped") for w in got.warnings)
    assert len(got.warnings) == 6


def test_all_items_unusable_is_malformed_with_reasons(ws: Path) -> None:
    got = read_manifest(write_manifest(ws, '[1, {"payload": {}}]'))
    assert got.status == "malformed"
    assert "artifact #1 skipped" in (got.error or "")
    assert "artifact #2 skipped: missing artifact_type" in (got.error or "")


def test_payload_missing_uses_other_keys(ws: Path) -> None:
    doc = [{"artifact_type": "image", "path": "plot.png", "format": "png"}]
    got = read_manifest(write_manifest(ws, json.dumps(doc)))
    assert got.status == "ok"
    assert got.artifacts == (art("image", path="plot.png", format="png"),)
    assert any("no 'payload'" in w and "format, path" in w for w in got.warnings)


def test_payload_missing_and_nothing_else_is_empty_payload(ws: Path) -> None:
    got = read_manifest(write_manifest(ws, '[{"artifact_type": "text"}]'))
    assert got.artifacts == (art("text"),)
    assert got.warnings == ()


def test_payload_not_an_object(ws: Path) -> None:
    got = read_manifest(write_manifest(ws, '[{"artifact_type": "text", "payload": "hi"}]'))
    assert got.artifacts == (art("text"),)
    assert any("payload is a string" in w for w in got.warnings)
    got = read_manifest(write_manifest(ws, '[{"artifact_type": "text", "payload": [1], "content": "x"}]'))
    assert got.artifacts == (art("text", content="x"),)


def test_keys_outside_payload_are_ignored_with_warning(ws: Path) -> None:
    doc = [{"artifact_type": "text", "payload": {"content": "x"}, "title": "T"}]
    got = read_manifest(write_manifest(ws, json.dumps(doc)))
    assert got.artifacts == (art("text", content="x"),)
    assert any("ignored keys outside 'payload': title" in w for w in got.warnings)


def test_artifact_type_is_normalized(ws: Path) -> None:
    got = read_manifest(write_manifest(ws, '[{"artifact_type": " Image ", "payload": {}}]'))
    assert got.artifacts == (art("image"),)
    assert any("'image'" in w for w in got.warnings)


# ---------------------------------------------------------------------------
# read_manifest: what the file is


def test_huge_sparse_manifest_is_refused_without_reading_it(ws: Path) -> None:
    path = ws / MANIFEST_NAME
    with open(path, "wb") as f:
        f.write(b"[")
        f.truncate(100 * 1000 * 1000)
    warm = ws / "warm"
    warm.mkdir()
    read_manifest(write_manifest(warm, "[]"))
    before = bytes_read_by_process()
    got = read_manifest(path)
    after = bytes_read_by_process()
    assert got.status == "malformed"
    assert got.error == "manifest is 95.4 MiB (100000000 bytes), larger than the 64.0 MiB limit"
    assert got.head is not None and got.head.startswith("[") and len(got.head) == HEAD_CHARS
    if before is not None and after is not None:
        assert after - before < 1024 * 1024


def test_max_bytes_is_configurable(ws: Path) -> None:
    path = write_manifest(ws, json.dumps([art("text", content="x" * 100)]))
    got = read_manifest(path, max_bytes=50)
    assert got.status == "malformed"
    assert "larger than the 50 bytes limit" in (got.error or "")
    assert read_manifest(path, max_bytes=path.stat().st_size).status == "ok"


def test_manifest_that_is_a_directory(ws: Path) -> None:
    (ws / MANIFEST_NAME).mkdir()
    got = read_manifest(ws / MANIFEST_NAME)
    assert got.status == "malformed"
    assert got.error == f"manifest {MANIFEST_NAME} is a directory, not a file"
    assert got.head is None


def test_manifest_that_is_a_fifo_does_not_hang(ws: Path) -> None:
    os.mkfifo(ws / MANIFEST_NAME)
    got = read_manifest(ws / MANIFEST_NAME)
    assert got.status == "malformed"
    assert "FIFO" in (got.error or "")


def test_manifest_symlinked_outside_is_refused(ws: Path, outside: Path) -> None:
    os.mkfifo(outside / "secret")  # opening it for reading would hang
    (ws / MANIFEST_NAME).symlink_to(outside / "secret")
    got = read_manifest(ws / MANIFEST_NAME)
    assert got.status == "malformed"
    assert "outside the workspace" in (got.error or "")
    assert got.head is None


def test_manifest_symlinked_to_dev_null_is_refused(ws: Path) -> None:
    (ws / MANIFEST_NAME).symlink_to("/dev/null")
    got = read_manifest(ws / MANIFEST_NAME)
    assert got.status == "malformed"


def test_manifest_symlinked_inside_is_read(ws: Path) -> None:
    (ws / "out").mkdir()
    (ws / "out" / "m.json").write_text(json.dumps([art("text", content="x")]))
    (ws / MANIFEST_NAME).symlink_to("out/m.json")
    assert read_manifest(ws / MANIFEST_NAME).status == "ok"


def test_manifest_dangling_symlink_is_missing(ws: Path) -> None:
    (ws / MANIFEST_NAME).symlink_to("nowhere.json")
    assert read_manifest(ws / MANIFEST_NAME).status == "missing"


def test_relative_manifest_path(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_manifest(ws, json.dumps([art("text", content="x")]))
    monkeypatch.chdir(ws)
    assert read_manifest(Path(MANIFEST_NAME)).status == "ok"


def test_unreadable_manifest(ws: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = write_manifest(ws, "[]")
    path.chmod(0)
    got = read_manifest(path)
    assert got.status == "malformed"
    assert "could not be read" in (got.error or "")


# ---------------------------------------------------------------------------
# manifest_fingerprint


def test_fingerprint(ws: Path) -> None:
    path = ws / MANIFEST_NAME
    assert manifest_fingerprint(path) is None
    write_manifest(ws, "[]")
    first = manifest_fingerprint(path)
    assert first is not None
    assert manifest_fingerprint(path) == first
    write_manifest(ws, "[1]")
    assert manifest_fingerprint(path) != first
    # Replaced by a new file of the same size and (forced) same mtime.
    second = manifest_fingerprint(path)
    replacement = ws / "new.json"
    replacement.write_text("[2]")
    st = path.stat()
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, path)
    assert manifest_fingerprint(path) != second


def test_fingerprint_of_fifo_does_not_open_it(ws: Path) -> None:
    os.mkfifo(ws / MANIFEST_NAME)
    assert manifest_fingerprint(ws / MANIFEST_NAME) is not None


# ---------------------------------------------------------------------------
# blob_threshold_from_env


def test_blob_threshold_from_env() -> None:
    assert blob_threshold_from_env({}) == DEFAULT_BLOB_THRESHOLD == 16 * 1024 * 1024
    assert blob_threshold_from_env({A.BLOB_THRESHOLD_ENV: ""}) == DEFAULT_BLOB_THRESHOLD
    assert blob_threshold_from_env({A.BLOB_THRESHOLD_ENV: " 1024 "}) == 1024
    assert blob_threshold_from_env({A.BLOB_THRESHOLD_ENV: "0"}) == 0


@pytest.mark.parametrize("value", ["16MiB", "1.5", "-1", "abc"])
def test_blob_threshold_bad_value(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        blob_threshold_from_env({A.BLOB_THRESHOLD_ENV: value})
    assert A.BLOB_THRESHOLD_ENV in err.value.message
    assert repr(value) in err.value.message
    assert err.value.exit_code == 2


# ---------------------------------------------------------------------------
# enrich: files and where they are


def enrich_ok(artifact: dict[str, Any], ws: Path, threshold: int = 1024 * 1024) -> A.Enriched:
    before = copy.deepcopy(artifact)
    got = enrich(artifact, ws, threshold)
    assert artifact == before, "enrich mutated its input"
    return got


def test_inline_artifacts_pass_through(ws: Path) -> None:
    for artifact in (
        art("text", content="hello"),
        art("vega", spec={"mark": "bar"}),
        art("json", content={"a": [1, 2]}),
        art("html", content="<b>x</b>"),
    ):
        got = enrich_ok(artifact, ws)
        assert got.artifact == artifact
        assert got.warnings == ()
        assert got.file is None


def test_text_file_is_embedded(ws: Path) -> None:
    (ws / "notes.md").write_text("héllo\n", encoding="utf-8")
    got = enrich_ok(art("text", path="notes.md", title="N"), ws)
    assert got.artifact == art(
        "text", path="notes.md", title="N", content="héllo\n", size_bytes=len("héllo\n".encode())
    )
    assert got.warnings == ()
    assert got.file == ws / "notes.md"


def test_file_key_works_like_path(ws: Path) -> None:
    (ws / "t.csv").write_text("a,b\n1,2\n")
    got = enrich_ok(art("table", file="t.csv", format="csv"), ws)
    assert got.artifact is not None
    assert got.artifact["payload"]["content"] == "a,b\n1,2\n"


def test_html_file(ws: Path) -> None:
    (ws / "r.html").write_text("<h1>R</h1>")
    got = enrich_ok(art("html", path="r.html", content="old"), ws)
    assert got.artifact is not None
    assert got.artifact["payload"]["content"] == "<h1>R</h1>"
    assert any("inline 'content' replaced" in w for w in got.warnings)


def test_absolute_path_inside_is_allowed(ws: Path) -> None:
    (ws / "sub").mkdir()
    (ws / "sub" / "a.txt").write_text("A")
    got = enrich_ok(art("text", path=str(ws / "sub" / "a.txt")), ws)
    assert got.artifact is not None and got.artifact["payload"]["content"] == "A"


def test_workspace_reached_through_a_symlink(ws: Path, tmp_path: Path) -> None:
    (ws / "a.txt").write_text("A")
    alias = tmp_path / "alias"
    alias.symlink_to(ws)
    got = enrich_ok(art("text", path=str(alias / "a.txt")), alias)
    assert got.artifact is not None and got.artifact["payload"]["content"] == "A"
    got = enrich_ok(art("text", path=str(ws / "a.txt")), alias)
    assert got.artifact is not None


def test_dotdot_staying_inside_is_allowed(ws: Path) -> None:
    (ws / "sub").mkdir()
    (ws / "a.txt").write_text("A")
    got = enrich_ok(art("text", path="sub/../a.txt"), ws)
    assert got.artifact is not None and got.artifact["payload"]["content"] == "A"


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "symlinked_dir"])
def test_paths_leading_outside_are_skipped_and_never_read(ws: Path, outside: Path, how: str) -> None:
    secret = outside / "secret.txt"
    secret.write_bytes(b"s" * (2 * 1024 * 1024))
    (ws / "link.txt").symlink_to(secret)
    (ws / "linkdir").symlink_to(outside)
    given = {
        "absolute": str(secret),
        "dotdot": "../outside/secret.txt",
        "symlink": "link.txt",
        "symlinked_dir": "linkdir/secret.txt",
    }[how]
    enrich(art("text", content="warm-up"), ws, 10)
    before = bytes_read_by_process()
    got = enrich_ok(art("text", path=given), ws, threshold=4 * 1024 * 1024)
    after = bytes_read_by_process()
    assert got.artifact is None
    assert got.file is None
    assert len(got.warnings) == 1
    assert "outside the workspace" in got.warnings[0] and repr(given) in got.warnings[0]
    if before is not None and after is not None:
        assert after - before < 1024 * 1024


def test_symlink_to_outside_fifo_is_never_opened(ws: Path, outside: Path) -> None:
    os.mkfifo(outside / "pipe")
    (ws / "plot.png").symlink_to(outside / "pipe")
    got = enrich_ok(art("image", path="plot.png"), ws)
    assert got.artifact is None
    assert "outside the workspace" in got.warnings[0]


def test_symlink_to_dev_null_is_skipped(ws: Path) -> None:
    (ws / "null.txt").symlink_to("/dev/null")
    got = enrich_ok(art("text", path="null.txt"), ws)
    assert got.artifact is None


def test_fifo_inside_gets_rendering_error_without_hanging(ws: Path) -> None:
    os.mkfifo(ws / "pipe.txt")
    got = enrich_ok(art("text", path="pipe.txt"), ws)
    assert got.artifact is not None
    payload = got.artifact["payload"]
    assert payload["rendering_error"] == "Not a regular file: pipe.txt is a FIFO (named pipe)"
    assert "content" not in payload and "size_bytes" not in payload
    assert got.warnings and "FIFO" in got.warnings[0]
    assert got.file == ws / "pipe.txt"


def test_directory_gets_rendering_error(ws: Path) -> None:
    (ws / "plots").mkdir()
    for given in ("plots", ".", str(ws)):
        got = enrich_ok(art("image", path=given), ws)
        assert got.artifact is not None
        assert "is a directory" in got.artifact["payload"]["rendering_error"]


def test_missing_file_gets_rendering_error(ws: Path) -> None:
    got = enrich_ok(art("image", path="nope.png"), ws)
    assert got.artifact is not None
    assert got.artifact["payload"]["rendering_error"] == "File not found: nope.png"
    assert len(got.warnings) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a device needs root")
def test_device_inside_gets_rendering_error(ws: Path) -> None:
    os.mknod(ws / "dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    got = enrich_ok(art("text", path="dev"), ws)
    assert got.artifact is not None
    assert "character device" in got.artifact["payload"]["rendering_error"]


def test_symlink_inside_to_inside_is_followed(ws: Path) -> None:
    (ws / "real.png").write_bytes(PNG)
    (ws / "plot.png").symlink_to("real.png")
    got = enrich_ok(art("image", path="plot.png"), ws)
    assert got.artifact is not None
    assert got.artifact["payload"]["data_url"].startswith("data:image/png;base64,")
    assert got.file == ws / "real.png"


def test_nul_in_path_is_skipped(ws: Path) -> None:
    got = enrich_ok(art("text", path="a\0b"), ws)
    assert got.artifact is None
    assert "NUL" in got.warnings[0]


def test_non_string_path_is_ignored_with_warning(ws: Path) -> None:
    got = enrich_ok(art("text", path=["a", "b"], content="x"), ws)
    assert got.artifact == art("text", path=["a", "b"], content="x")
    assert "'path' is an array" in got.warnings[0]


def test_unreadable_file(ws: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    (ws / "a.txt").write_text("A")
    (ws / "a.txt").chmod(0)
    got = enrich_ok(art("text", path="a.txt"), ws)
    assert got.artifact is not None
    assert got.artifact["payload"]["rendering_error"].startswith("Could not read a.txt")


def test_symlink_swapped_in_after_resolving_is_not_followed(ws: Path, outside: Path) -> None:
    (ws / "sub").mkdir()
    (ws / "sub" / "a.txt").write_text("A")
    (outside / "a.txt").write_text("SECRET")
    real = os.path.realpath(ws / "sub" / "a.txt")
    root = os.path.realpath(ws)
    # The race: between resolving and opening, a folder becomes a symlink out.
    (ws / "sub").rename(ws / "old")
    (ws / "sub").symlink_to(outside)
    with pytest.raises(OSError) as err:
        A._open_confined(root, real)
    assert err.value.errno in (errno.ELOOP, errno.ENOTDIR)


# ---------------------------------------------------------------------------
# enrich: content by type


def test_threshold_boundary(ws: Path) -> None:
    (ws / "a.txt").write_bytes(b"x" * 100)
    at = enrich_ok(art("text", path="a.txt"), ws, threshold=100)
    assert at.artifact is not None
    assert at.artifact["payload"]["content"] == "x" * 100
    over = enrich_ok(art("text", path="a.txt"), ws, threshold=99)
    assert over.artifact is not None
    payload = over.artifact["payload"]
    assert payload["rendering_error"] == "File too large (100 bytes, max 99)"
    assert payload["size_bytes"] == 100
    assert "content" not in payload
    assert over.file == ws / "a.txt"


def test_large_sparse_artifact_is_not_read(ws: Path) -> None:
    with open(ws / "big.bin.txt", "wb") as f:
        f.truncate(200 * 1000 * 1000)
    enrich(art("text", content="warm-up"), ws, 10)
    before = bytes_read_by_process()
    got = enrich_ok(art("text", path="big.bin.txt"), ws, threshold=DEFAULT_BLOB_THRESHOLD)
    after = bytes_read_by_process()
    assert got.artifact is not None
    assert got.artifact["payload"]["rendering_error"] == (
        f"File too large (200000000 bytes, max {DEFAULT_BLOB_THRESHOLD})"
    )
    if before is not None and after is not None:
        assert after - before < 1024 * 1024


def test_json_file_is_parsed(ws: Path) -> None:
    (ws / "m.json").write_text('{"acc": 0.9, "loss": NaN, "n": [1, 2]}')
    got = enrich_ok(art("json", path="m.json"), ws)
    assert got.artifact is not None
    assert got.artifact["payload"]["content"] == {"acc": 0.9, "loss": None, "n": [1, 2]}
    assert any("NaN" in w for w in got.warnings)


def test_json_file_that_does_not_parse_is_sent_as_text(ws: Path) -> None:
    (ws / "m.json").write_text('{"acc": 0.9,')
    got = enrich_ok(art("json", path="m.json"), ws)
    assert got.artifact is not None
    assert got.artifact["payload"]["content"] == '{"acc": 0.9,'
    assert len(got.warnings) == 1 and "not valid JSON" in got.warnings[0]


def test_text_with_bad_utf8_is_replaced_with_warning(ws: Path) -> None:
    (ws / "log.txt").write_bytes(b"ok \xff\xfe end")
    got = enrich_ok(art("text", path="log.txt"), ws)
    assert got.artifact is not None
    assert got.artifact["payload"]["content"] == "ok \ufffd\ufffd end"
    assert got.artifact["payload"]["size_bytes"] == 9
    assert len(got.warnings) == 1 and "not valid UTF-8 (at byte 3)" in got.warnings[0]


def test_image_gets_data_url(ws: Path) -> None:
    (ws / "plot.png").write_bytes(PNG)
    got = enrich_ok(art("image", path="plot.png", format="png"), ws)
    assert got.artifact is not None
    url = got.artifact["payload"]["data_url"]
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    assert base64.b64decode(url[len(prefix):], validate=True) == PNG
    assert got.artifact["payload"]["size_bytes"] == len(PNG)
    assert got.warnings == ()


def test_image_mime_from_format_when_suffix_says_nothing(ws: Path) -> None:
    (ws / "plot").write_bytes(b"\xff\xd8\xff")
    got = enrich_ok(art("image", path="plot", format="jpg"), ws)
    assert got.artifact is not None
    assert got.artifact["payload"]["data_url"].startswith("data:image/jpeg;base64,")


def test_unknown_type_gets_octet_stream(ws: Path) -> None:
    (ws / "blob.xyz").write_bytes(b"\x00\x01")
    got = enrich_ok(art("mystery", path="blob.xyz"), ws)
    assert got.artifact is not None
    assert got.artifact["artifact_type"] == "mystery"
    assert got.artifact["payload"]["data_url"] == "data:application/octet-stream;base64,AAE="


def test_vega_path_gets_data_url(ws: Path) -> None:
    (ws / "chart.json").write_text('{"mark": "bar"}')
    got = enrich_ok(art("vega", path="chart.json"), ws)
    assert got.artifact is not None
    assert got.artifact["payload"]["data_url"].startswith("data:application/json;base64,")


@pytest.mark.parametrize("suffix", sorted(A.CHECKPOINT_SUFFIXES) + [".PT", ".SafeTensors"])
def test_checkpoint_suffixes(ws: Path, suffix: str) -> None:
    (ws / f"model{suffix}").write_bytes(b"\x80\x02weights")
    got = enrich_ok(art("text", path=f"model{suffix}"), ws)
    assert got.artifact is not None
    assert got.artifact["artifact_type"] == "checkpoint"
    payload = got.artifact["payload"]
    assert payload["data_url"] == "data:application/octet-stream;base64," + base64.b64encode(
        b"\x80\x02weights"
    ).decode()
    assert "content" not in payload


def test_checkpoint_over_threshold(ws: Path) -> None:
    (ws / "model.safetensors").write_bytes(b"w" * 50)
    got = enrich_ok(art("file", path="model.safetensors"), ws, threshold=10)
    assert got.artifact is not None
    assert got.artifact["artifact_type"] == "checkpoint"
    assert got.artifact["payload"]["rendering_error"] == "File too large (50 bytes, max 10)"
    assert "data_url" not in got.artifact["payload"]


@pytest.mark.parametrize("size", [0, 1, 2, 3, A._B64_SLICE - 1, A._B64_SLICE, 2 * A._B64_SLICE + 1])
def test_data_url_matches_base64(size: int) -> None:
    data = os.urandom(size)
    assert A._data_url("a/b", data) == "data:a/b;base64," + base64.b64encode(data).decode()


def test_threshold_sized_file_is_embedded_exactly(ws: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    (ws / "w.bin").write_bytes(data)
    got = enrich_ok(art("image", path="w.bin"), ws, threshold=len(data))
    assert got.artifact is not None
    url = got.artifact["payload"]["data_url"]
    assert base64.b64decode(url.split(",", 1)[1]) == data


# ---------------------------------------------------------------------------
# enrich: diff_carousel


def test_diff_carousel_paths_are_labels(ws: Path, outside: Path) -> None:
    os.mkfifo(outside / "pipe")
    (ws / "train.py").write_text("print(1)\n")
    artifact = art(
        "diff_carousel",
        title="Changes",
        diffs=[
            {"title": "train", "path": "train.py", "summary": "s", "diff": "@@ -1 +1 @@"},
            {"title": "abs", "path": str(outside / "pipe"), "diff": "@@"},
            {"title": "no path", "diff": "@@"},
            "not a dict",
        ],
    )
    got = enrich_ok(artifact, ws)
    assert got.artifact == artifact
    assert len(got.warnings) == 1
    assert "diff #2" in got.warnings[0] and "outside the workspace" in got.warnings[0]


def test_diff_carousel_patch_file_is_embedded(ws: Path, outside: Path) -> None:
    (ws / "d").mkdir()
    (ws / "d" / "one.patch").write_text("--- a\n+++ b\n")
    os.mkfifo(ws / "d" / "pipe.diff")
    (outside / "x.diff").write_text("secret")
    artifact = art(
        "diff_carousel",
        diffs=[
            {"title": "one", "path": "d/one.patch"},
            {"title": "pipe", "path": "d/pipe.diff"},
            {"title": "out", "path": "../outside/x.diff"},
            {"title": "inline", "path": "d/one.patch", "diff": "kept"},
        ],
    )
    got = enrich_ok(artifact, ws)
    assert got.artifact is not None
    diffs = got.artifact["payload"]["diffs"]
    assert diffs[0] == {"title": "one", "path": "d/one.patch", "diff": "--- a\n+++ b\n"}
    assert diffs[1] == {"title": "pipe", "path": "d/pipe.diff"}
    assert diffs[2] == {"title": "out", "path": "../outside/x.diff"}
    assert diffs[3]["diff"] == "kept"
    assert len(got.warnings) == 2


def test_diff_carousel_diffs_not_a_list(ws: Path) -> None:
    got = enrich_ok(art("diff_carousel", diffs="oops"), ws)
    assert got.artifact == art("diff_carousel", diffs="oops")
    assert len(got.warnings) == 1


# ---------------------------------------------------------------------------
# artifact_files


def test_artifact_files(ws: Path, outside: Path) -> None:
    (ws / "out").mkdir()
    (ws / "out" / "plot.png").write_bytes(PNG)
    (ws / "metrics.json").write_text("{}")
    (ws / "real.csv").write_text("a\n")
    (ws / "table.csv").symlink_to("real.csv")
    (ws / "train.py").write_text("")
    (ws / "d.patch").write_text("")
    (outside / "x.txt").write_text("")
    artifacts = [
        art("image", path="out/plot.png"),
        art("json", file=str(ws / "metrics.json")),
        art("table", path="table.csv"),
        art("text", path="../outside/x.txt"),
        art("text", path="."),
        art("text", path="out"),
        art("text", path="missing.txt"),
        art("text", content="inline"),
        art("text", path=None),
        art(
            "diff_carousel",
            diffs=[{"path": "train.py", "diff": "@@"}, {"path": "d.patch"}, {"path": "../outside/x.txt"}],
        ),
        {"artifact_type": "broken", "payload": "x"},
    ]
    assert artifact_files(artifacts, ws) == {
        Path("out/plot.png"),
        Path("metrics.json"),
        Path("table.csv"),
        Path("real.csv"),
        Path("d.patch"),
    }


def test_artifact_files_through_symlinked_folder(ws: Path) -> None:
    (ws / "data").mkdir()
    (ws / "data" / "a.txt").write_text("")
    (ws / "alias").symlink_to("data")
    assert artifact_files([art("text", path="alias/a.txt")], ws) == {Path("data/a.txt")}


def test_artifact_files_accepts_enriched_artifacts(ws: Path) -> None:
    (ws / "model.pt").write_bytes(b"w")
    enriched = enrich(art("file", path="model.pt"), ws, 100)
    assert enriched.artifact is not None
    assert artifact_files([enriched.artifact], ws) == {Path("model.pt")}
