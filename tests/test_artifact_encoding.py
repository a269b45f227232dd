"""Artifacts that JSON allows and orjson does not encode (README: What happens
when…): integers beyond 64 bits, nesting deeper than 254 levels, lone surrogates
(a `\\ud800` escape, a file name that is not UTF-8). Each is coerced or skipped
with a warning entry naming it; the others are posted and the run stays
complete. And a blob threshold too big to read with is refused before the run.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from supervisor.local_backend import LocalBackend
from workers.artifacts import BLOB_THRESHOLD_ENV, MAX_BLOB_THRESHOLD, blob_threshold_from_env, encode_artifact
from workers.common.errors import ConfigError

BIG = 2**64
pytestmark = pytest.mark.timeout(300)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def art(artifact_type: str, **payload: Any) -> dict[str, Any]:
    return {"artifact_type": artifact_type, "payload": payload}


# --------------------------------------------------------------------- encode_artifact


def test_an_artifact_orjson_encodes_is_sent_as_it_is() -> None:
    artifact = art("json", content={"seed": BIG - 1, "deep": nested(200), "text": "é"})
    encoded = encode_artifact(artifact, "artifact #1 (json)")
    assert encoded.body == orjson.dumps(artifact) and encoded.warnings == ()


@pytest.mark.parametrize("content", [{"seed": BIG}, nested(300), nested(253), {"seed": -(2**63) - 1}])
def test_json_content_orjson_refuses_is_sent_as_json_text(content: Any) -> None:
    encoded = encode_artifact(art("json", content=content, path="m.json"), "artifact #2 (json)")
    assert encoded.body is not None
    sent = orjson.loads(encoded.body)
    assert json.loads(sent["payload"]["content"]) == content
    assert sent["payload"]["path"] == "m.json"
    assert len(encoded.warnings) == 1 and encoded.warnings[0].startswith("artifact #2 (json) cannot be sent")
    assert "sent as JSON text" in encoded.warnings[0]


def test_lone_surrogates_become_replacement_characters() -> None:
    artifact = {"artifact_type": "te\ud800xt", "payload": {"content": "a\udcffb", "path": "\udcff.txt",
                                                            "k\ud800": ["\ud800"]}}
    encoded = encode_artifact(artifact, "artifact #3")
    assert encoded.body is not None
    assert orjson.loads(encoded.body) == {"artifact_type": "te\ufffdxt", "payload": {
        "content": "a\ufffdb", "path": "\ufffd.txt", "k\ufffd": ["\ufffd"]}}
    assert "U+FFFD" in encoded.warnings[0]
    # A json artifact whose content only needs that keeps its structure.
    encoded = encode_artifact(art("json", content={"a": "\ud800"}), "artifact #4 (json)")
    assert encoded.body is not None and orjson.loads(encoded.body)["payload"]["content"] == {"a": "\ufffd"}


def test_other_big_integers_are_sent_as_text_and_too_deep_is_skipped() -> None:
    encoded = encode_artifact(art("table", rows=[[1, BIG]]), "artifact #5 (table)")
    assert encoded.body is not None and orjson.loads(encoded.body)["payload"]["rows"] == [[1, str(BIG)]]
    assert "beyond 64 bits" in encoded.warnings[0]
    encoded = encode_artifact(art("table", rows=nested(300)), "artifact #6 (table)")
    assert encoded.body is None
    assert encoded.warnings == ("artifact #6 (table) skipped: it cannot be sent as JSON (nested deeper than 254 "
                                "levels)",)


# --------------------------------------------------------------------- the blob threshold


@pytest.mark.parametrize("value", [str(MAX_BLOB_THRESHOLD + 1), "99999999999999999999999"])
def test_a_blob_threshold_too_big_is_refused(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        blob_threshold_from_env({BLOB_THRESHOLD_ENV: value})
    assert BLOB_THRESHOLD_ENV in err.value.message and repr(value) in err.value.message
    assert err.value.exit_code == 2
    assert blob_threshold_from_env({BLOB_THRESHOLD_ENV: str(MAX_BLOB_THRESHOLD)}) == MAX_BLOB_THRESHOLD


def test_the_real_command_refuses_a_huge_blob_threshold(env: Any, backend: LocalBackend) -> None:
    run_id, token = backend.create_run(prompt="Work.")
    result = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, BLOB_THRESHOLD_ENV: "99999999999999999999999"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert BLOB_THRESHOLD_ENV in result.stderr
    assert backend.run(run_id)["state"] == "created"


# --------------------------------------------------------------------- a real run


def test_artifacts_orjson_refuses_leave_the_run_complete(env: Any, backend: LocalBackend) -> None:
    run_id, token = backend.create_run(prompt="Work.")
    ws = env.workspace(run_id)
    ws.mkdir(parents=True)
    # Valid JSON that Python's json.dump writes, as a training script would.
    (ws / "m.json").write_text(json.dumps({"seed": BIG}))
    with open(bytes(ws) + b"/\xff.txt", "wb") as handle:
        handle.write(b"text of a file whose name is not UTF-8")
    manifest = ("["
                '{"artifact_type": "text", "payload": {"content": "fine"}},'
                '{"artifact_type": "json", "payload": {"content": {"seed": 18446744073709551616}}},'
                '{"artifact_type": "json", "payload": {"path": "m.json"}},'
                '{"artifact_type": "text", "payload": {"content": "a\\ud800b"}},'
                '{"artifact_type": "te\\ud800xt", "payload": {"content": "x"}},'
                '{"artifact_type": "text", "payload": {"path": "\\udcff.txt"}},'
                '{"artifact_type": "table", "payload": {"rows": ' + json.dumps(nested(300)) + "}},"
                '{"artifact_type": "text", "payload": {"content": "last"}}'
                "]")
    result = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "manifest_json",
                            "FAKE_CODEX_MANIFEST": manifest}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert backend.run(run_id)["state"] == "complete"
    posted = [a["payload"] for a in backend.artifacts(run_id)]
    assert len(posted) == 7, posted
    assert posted[0]["content"] == "fine" and posted[-1]["content"] == "last"
    assert json.loads(posted[1]["content"]) == {"seed": BIG}
    assert json.loads(posted[2]["content"]) == {"seed": BIG} and posted[2]["path"] == "m.json"
    assert posted[3]["content"] == "a\ufffdb"
    assert posted[5]["path"] == "\ufffd.txt" and posted[5]["content"] == "text of a file whose name is not UTF-8"
    warnings = [e["message"] for e in backend.entries(run_id) if e["level"] == "warning"]
    for number in (2, 3, 4, 5, 6):
        assert any(w.startswith(f"artifact #{number} (") and "cannot be sent as JSON as it is" in w
                   for w in warnings), (number, warnings)
    assert any(w.startswith("artifact #7 (table) skipped: it cannot be sent as JSON") for w in warnings), warnings
    log = (env.state(run_id) / "worker-artifact-watcher.log")
    assert not log.exists() or "Traceback" not in log.read_text(errors="replace")
