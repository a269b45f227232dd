"""Codex output -> log entries (docs/protocol.md: Log entries), and the Redactor."""

from __future__ import annotations

import pickle

import orjson
import pytest

from workers.common.redact import Redactor
from workers.log_entries import (
    EVENT_STRING_MAX_CHARS,
    MESSAGE_MAX_CHARS,
    Entry,
    codex_entry,
    encode_entry,
    entry_dict,
    sanitize,
    thread_id_of,
    token_usage,
    too_large_placeholder,
)

NONE = Redactor()
TOKEN = "run-token-5f2c9a"
GH = "ghp_0123456789abcdef"
SECRETS = Redactor.of(TOKEN, GH, None, "")

# Lines as the real Codex prints them.
THREAD = b'{"type":"thread.started","thread_id":"0199a213-81c0-7800-8aa1-bbab2a035a53"}'
TURN = b'{"type":"turn.started"}'
CMD_STARTED = (
    b'{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"bash -lc ls",'
    b'"aggregated_output":"","exit_code":null,"status":"in_progress"}}'
)
CMD_DONE = (
    b'{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"bash -lc ls",'
    b'"aggregated_output":"docs\\nsrc\\n","exit_code":0,"status":"completed"}}'
)
AGENT = b'{"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"Done."}}'
USAGE = (
    b'{"type":"turn.completed","usage":{"input_tokens":24763,"cached_input_tokens":24448,'
    b'"output_tokens":122}}'
)


def line(event: dict) -> bytes:
    return orjson.dumps(event)


def summary(entry: Entry) -> tuple[str, str, str]:
    return entry.level, entry.extra["run_event_kind"], entry.message


# ------------------------------------------------------------ the mapping


@pytest.mark.parametrize(
    "raw, expected",
    [
        (THREAD, ("info", "codex_event", "codex thread started (0199a213-81c0-7800-8aa1-bbab2a035a53)")),
        (TURN, ("info", "codex_event", "codex turn started")),
        (CMD_STARTED, ("info", "command_started", "$ bash -lc ls")),
        (CMD_DONE, ("info", "command_finished", "docs\nsrc\n")),
        (AGENT, ("info", "codex_event", "Done.")),
        (USAGE, ("info", "codex_event", "codex turn completed")),
    ],
)
def test_spec_example_lines(raw: bytes, expected: tuple[str, str, str]) -> None:
    entry = codex_entry(raw, NONE)
    assert summary(entry) == expected
    assert entry.extra["event"] == orjson.loads(raw)
    assert entry.extra["run_event_source"] == "codex"
    assert "seq" not in entry.extra and "created_at" not in entry.extra
    assert "event_truncated" not in entry.extra and "line_truncated_bytes" not in entry.extra


@pytest.mark.parametrize(
    "event, expected",
    [
        (
            {"type": "item.completed", "item": {"id": "i", "type": "command_execution", "command": "false",
                                                 "aggregated_output": "", "exit_code": 1, "status": "failed"}},
            ("info", "command_finished", "$ false (exit 1)"),
        ),
        (
            {"type": "item.completed", "item": {"id": "i", "type": "command_execution", "command": "rm -rf /",
                                                 "aggregated_output": "", "exit_code": None, "status": "declined"}},
            ("info", "command_finished", "$ rm -rf / (declined)"),
        ),
        (
            {"type": "item.completed", "item": {"id": "i", "type": "command_execution", "command": "ls",
                                                 "aggregated_output": "\x1b[0m\r\n", "exit_code": 0}},
            ("info", "command_finished", "$ ls (exit 0)"),
        ),
        (
            {"type": "item.updated", "item": {"id": "i", "type": "command_execution", "command": "make",
                                               "aggregated_output": "cc -c a.c\n", "exit_code": None}},
            ("info", "command_output", "cc -c a.c\n"),
        ),
        (
            {"type": "item.completed", "item": {"id": "i", "type": "command_execution",
                                                 "command": ["bash", "-lc", "echo hi"], "aggregated_output": ""}},
            ("info", "command_finished", "$ bash -lc 'echo hi' (exit ?)"),
        ),
        (
            {"type": "item.completed", "item": {"id": "i", "type": "reasoning", "text": "**Thinking** hard"}},
            ("info", "codex_event", "codex item completed: reasoning"),
        ),
        (
            {"type": "item.completed", "item": {"id": "i", "type": "file_change",
                                                 "changes": [{"path": "a.py", "kind": "add"}], "status": "completed"}},
            ("info", "codex_event", "codex item completed: file_change"),
        ),
        (
            {"type": "item.started", "item": {"id": "i", "type": "mcp_tool_call", "server": "fs", "tool": "read"}},
            ("info", "codex_event", "codex item started: mcp_tool_call"),
        ),
        (
            {"type": "item.completed", "item": {"id": "i", "type": "web_search", "query": "rust async"}},
            ("info", "codex_event", "codex item completed: web_search"),
        ),
        (
            {"type": "item.updated", "item": {"id": "i", "type": "todo_list",
                                               "items": [{"text": "a", "completed": True}]}},
            ("info", "codex_event", "codex item updated: todo_list"),
        ),
        (
            {"type": "item.completed", "item": {"id": "i", "type": "error",
                                                 "message": "Model metadata for `x` not found"}},
            ("warning", "warning", "Model metadata for `x` not found"),
        ),
        (
            {"type": "error", "message": "Reconnecting... 1/5 (stream disconnected before completion)"},
            ("warning", "warning", "Reconnecting... 1/5 (stream disconnected before completion)"),
        ),
        (
            {"type": "turn.failed", "error": {"message": "stream error: unexpected status 401"}},
            ("error", "error", "stream error: unexpected status 401"),
        ),
        ({"type": "turn.failed"}, ("error", "error", "codex turn failed")),
        ({"type": "session.configured", "model": "gpt-5"}, ("info", "codex_event", "codex event: session.configured")),
        ({"no_type": 1}, ("info", "codex_event", "codex event")),
        ({"type": "item.completed", "item": "not an object"}, ("info", "codex_event", "codex item completed: unknown")),
    ],
)
def test_other_events(event: dict, expected: tuple[str, str, str]) -> None:
    entry = codex_entry(line(event), NONE)
    assert summary(entry) == expected
    assert entry.extra["event"] == event


@pytest.mark.parametrize("raw", [b"plain text from codex", b"[1, 2, 3]", b'"a json string"', b"42", b"", b"{oops"])
def test_a_line_that_is_not_a_json_object_is_terminal_output(raw: bytes) -> None:
    entry = codex_entry(raw, NONE)
    assert entry.extra["event"] == {"terminal_output": raw.decode()}
    assert summary(entry) == ("info", "command_output", raw.decode())


def test_line_terminators_are_not_part_of_the_line() -> None:
    assert codex_entry(THREAD + b"\n", NONE) == codex_entry(THREAD, NONE)
    assert codex_entry(b"text\r\n", NONE).extra["event"] == {"terminal_output": "text"}
    assert codex_entry(AGENT + b"\r\n", NONE).message == "Done."


# ------------------------------------------------------------ messages


def test_long_message_is_cut_to_4000_characters_with_a_suffix() -> None:
    text = "a" * 3000 + "b" * 3000
    entry = codex_entry(line({"type": "item.completed", "item": {"type": "agent_message", "text": text}}), NONE)
    assert entry.message == text[:MESSAGE_MAX_CHARS] + " [truncated]"
    assert entry.extra["event"]["item"]["text"] == text  # the event keeps it whole (under the bound)
    exact = codex_entry(line({"type": "item.completed", "item": {"type": "agent_message", "text": "x" * 4000}}), NONE)
    assert exact.message == "x" * 4000


def test_ansi_escapes_carriage_returns_and_control_characters_are_removed() -> None:
    output = (
        "\x1b[1m\x1b[32mPASSED\x1b[0m\tok\r\n"
        "\x1b]0;title\x07\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\\n"
        "\rdownloading 10%\rdownloading 100%\n"
        "bell\x07 back\x08 nul-less \x1b(B\x1b7\x1b8 c1\x9b31mx \x7f done"
    )
    event = {"type": "item.completed", "item": {"type": "command_execution", "command": "pytest",
                                                 "aggregated_output": output, "exit_code": 0}}
    entry = codex_entry(line(event), NONE)
    assert entry.message == (
        "PASSED\tok\n"
        "link\n"
        "downloading 10%downloading 100%\n"
        "bell back nul-less  c1x  done"
    )
    assert entry.extra["event"]["item"]["aggregated_output"] == output  # raw in the event


def test_sanitize_leaves_plain_text_alone() -> None:
    text = "plain\ttext\nwith ünïcödé ✓"
    assert sanitize(text) is text


def test_terminal_line_with_ansi_flood_and_progress_bar() -> None:
    raw = b"\x1b[31m" * 2000 + b"red\x1b[0m" + b"".join(b"\r%d%%" % p for p in range(0, 101, 50))
    entry = codex_entry(raw, NONE)
    assert entry.message == "red0%50%100%"
    assert entry.extra["event"]["terminal_output"].startswith("\x1b[31m")


def test_invalid_utf8_is_replaced_and_nul_bytes_removed() -> None:
    entry = codex_entry(b"bad \xff\xfe bytes \x00nul\x00 \xc3\x28", NONE)
    assert entry.message == "bad \ufffd\ufffd bytes nul \ufffd("
    assert entry.extra["event"] == {"terminal_output": entry.message}
    encode_entry("2025-01-01T00:00:00Z", entry, 1)  # encodable


def test_json_with_an_invalid_byte_is_still_parsed() -> None:
    entry = codex_entry(b'{"type":"item.completed","item":{"type":"agent_message","text":"caf\xe9 \x00ok"}}', NONE)
    assert entry.message == "caf\ufffd ok"
    assert entry.extra["event"]["type"] == "item.completed"


# ------------------------------------------------------------ secrets


def test_secrets_are_masked_in_message_and_event() -> None:
    event = {
        "type": "item.completed",
        "item": {"type": "command_execution", "command": f"curl -H 'X-Run-Token: {TOKEN}' x",
                 "aggregated_output": f"token={TOKEN}\ngh={GH}\n", "exit_code": 0,
                 "nested": [{f"key-{TOKEN}": [GH, 1, None, True]}]},
    }
    entry = codex_entry(line(event), SECRETS)
    body = encode_entry("t", entry, 7)
    assert TOKEN.encode() not in body and GH.encode() not in body
    assert entry.message == "token=***\ngh=***\n"
    item = entry.extra["event"]["item"]
    assert item["command"] == "curl -H 'X-Run-Token: ***' x"
    assert item["nested"] == [{"key-***": ["***", 1, None, True]}]
    started = codex_entry(line({**event, "type": "item.started"}), SECRETS)
    assert started.message == "$ curl -H 'X-Run-Token: ***' x"


def test_secret_in_terminal_output_and_agent_message() -> None:
    assert codex_entry(f"export T={TOKEN}".encode(), SECRETS).extra["event"] == {"terminal_output": "export T=***"}
    entry = codex_entry(line({"type": "item.completed", "item": {"type": "agent_message", "text": TOKEN}}), SECRETS)
    assert entry.message == "***" and entry.extra["event"]["item"]["text"] == "***"


def test_secret_spelled_with_json_escapes_is_still_masked() -> None:
    escaped = "\\u00" + format(ord(TOKEN[0]), "x") + TOKEN[1:]
    raw = b'{"type":"item.completed","item":{"type":"agent_message","text":"' + escaped.encode() + b'"}}'
    assert TOKEN.encode() not in raw
    entry = codex_entry(raw, SECRETS)
    assert entry.message == "***"
    assert entry.extra["event"]["item"]["text"] == "***"


def test_secret_hidden_by_colour_codes_is_masked_in_the_message() -> None:
    raw = f"{TOKEN[:5]}\x1b[0m{TOKEN[5:]}".encode()
    assert codex_entry(raw, SECRETS).message == "***"


def test_a_cut_never_leaves_part_of_a_secret() -> None:
    for offset in range(1, len(TOKEN)):
        # A secret straddling the string bound, in a huge line.
        text = "x" * (EVENT_STRING_MAX_CHARS - offset) + TOKEN + "y" * 20000
        entry = codex_entry(line({"type": "item.completed", "item": {"type": "agent_message", "text": text}}), SECRETS)
        kept = entry.extra["event"]["item"]["text"]
        assert TOKEN[: max(offset, 4)] not in kept and "run-token" not in kept
        terminal = codex_entry(text.encode(), SECRETS).extra["event"]["terminal_output"]
        assert "run-token" not in terminal


# ------------------------------------------------------------ size bounds


def test_huge_json_line_is_capped() -> None:
    output = "0123456789" * 200_000  # 2 MB of command output
    raw = line({"type": "item.completed", "item": {"id": "item_9", "type": "command_execution",
                                                    "command": "cat big.log", "aggregated_output": output,
                                                    "exit_code": 0, "status": "completed"}})
    entry = codex_entry(raw, SECRETS)
    body = encode_entry("2025-01-01T00:00:00Z", entry, 1)
    assert len(body) < 64 * 1024
    item = entry.extra["event"]["item"]
    assert item["aggregated_output"].startswith(output[:EVENT_STRING_MAX_CHARS])
    assert item["aggregated_output"].endswith(f" [truncated {len(output) - EVENT_STRING_MAX_CHARS} chars]")
    assert (item["type"], item["command"], item["exit_code"], item["status"]) == (
        "command_execution", "cat big.log", 0, "completed")
    assert entry.extra["event_truncated"] is True
    assert entry.message == output[:MESSAGE_MAX_CHARS] + " [truncated]"
    assert entry.extra["run_event_kind"] == "command_finished"


def test_many_strings_are_capped_as_a_whole() -> None:
    event = {"type": "item.completed", "item": {"type": "mcp_tool_call",
                                                 "result": {"content": [{"text": "z" * 10_000}] * 500}}}
    entry = codex_entry(line(event), NONE, max_event_chars=100_000)
    body = encode_entry("t", entry, 1)
    assert len(body) < 150_000
    content = entry.extra["event"]["item"]["result"]["content"]
    assert content[-1].startswith("[truncated: ") and content[-1].endswith(" more items]")
    assert entry.extra["event"]["type"] == "item.completed" and entry.extra["event_truncated"]


def test_string_bound_is_a_parameter() -> None:
    raw = line({"type": "item.completed", "item": {"type": "agent_message", "text": "q" * 500}})
    entry = codex_entry(raw, NONE, max_string_chars=100)
    assert entry.extra["event"]["item"]["text"] == "q" * 100 + " [truncated 400 chars]"


def test_enormous_garbage_line_is_capped() -> None:
    raw = b"{" + b"garbage " * 6_000_000  # 48 MB, starts like JSON
    entry = codex_entry(raw, SECRETS)
    text = entry.extra["event"]["terminal_output"]
    assert len(text) < EVENT_STRING_MAX_CHARS + 100
    assert text.endswith(f" [truncated: line of {len(raw)} bytes]")
    assert entry.extra["event_truncated"] is True
    assert len(entry.message) == MESSAGE_MAX_CHARS + len(" [truncated]")


def test_reader_truncation_is_reported() -> None:
    head = CMD_DONE[:60]
    entry = codex_entry(head, NONE, truncated_bytes=5_000_000)
    assert entry.extra["line_truncated_bytes"] == 5_000_000
    assert entry.extra["event"] == {"terminal_output": head.decode()}
    assert entry.extra["run_event_kind"] == "command_output"


def test_deeply_nested_event_stays_encodable() -> None:
    raw = b'{"type":"x","a":' + b"[" * 1000 + b"]" * 1000 + b"}"
    entry = codex_entry(raw, NONE)
    assert entry.extra["event_truncated"] is True
    assert orjson.loads(encode_entry("t", entry, 1))["extra"]["event"]["type"] == "x"


# ------------------------------------------------------------ wire format


def test_encode_entry_shape() -> None:
    entry = codex_entry(CMD_DONE, NONE)
    body = orjson.loads(encode_entry("2025-01-01T00:00:00.000Z", entry, 42))
    assert body == {
        "created_at": "2025-01-01T00:00:00.000Z",
        "level": "info",
        "message": "docs\nsrc\n",
        "extra": {"event": orjson.loads(CMD_DONE), "run_event_source": "codex",
                  "run_event_kind": "command_finished", "seq": 42},
    }
    assert "seq" not in entry.extra  # the entry itself is not changed
    assert entry_dict("t", entry, 3)["extra"]["seq"] == 3


def test_entries_are_frozen_and_picklable() -> None:
    entry = codex_entry(THREAD, SECRETS)
    with pytest.raises(AttributeError):
        entry.level = "error"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(entry)) == entry


def test_too_large_placeholder_keeps_seq() -> None:
    original = entry_dict("2025-01-01T00:00:00Z", codex_entry(AGENT, NONE), 17)
    placeholder = too_large_placeholder(original, 2_000_000, 1_048_576)
    assert placeholder == {
        "created_at": "2025-01-01T00:00:00Z",
        "level": "warning",
        "message": "Log entry dropped: too large",
        "extra": {"dropped": True, "drop_reason": "payload_too_large", "message_bytes": 2_000_000,
                  "limit_bytes": 1_048_576, "original_level": "info", "seq": 17},
    }
    unknown = too_large_placeholder({"level": "error", "extra": {"seq": 1}}, 10, None)
    assert unknown["extra"]["limit_bytes"] is None and unknown["extra"]["original_level"] == "error"
    assert unknown["created_at"]


# ------------------------------------------------------------ bootstrap's entries


def test_encode_survives_lone_surrogates_and_odd_values() -> None:
    entry = Entry("warning", "stderr: \udcff", {"path": __import__("pathlib").Path("/x"),
                                                 "bad": "a\udcffb", "counts": {1: 2}})
    body = orjson.loads(encode_entry("t", entry, 1))
    assert body["message"] == "stderr: ?"  # encodable whatever it holds
    assert body["extra"]["path"] == "/x" and body["extra"]["counts"] == {"1": 2}
    assert body["extra"]["bad"].startswith("a") and body["extra"]["bad"].endswith("b")


# ------------------------------------------------------------ facts from events


def test_token_usage() -> None:
    assert token_usage(orjson.loads(USAGE)) == (24763, 122)
    assert token_usage({"type": "turn.completed", "usage": {"input_tokens": 5}}) == (5, 0)
    assert token_usage({"type": "turn.completed"}) is None
    assert token_usage({"type": "turn.completed", "usage": {"input_tokens": "many"}}) is None
    assert token_usage({"type": "turn.started", "usage": {"input_tokens": 1, "output_tokens": 1}}) is None


def test_thread_id_of() -> None:
    assert thread_id_of(orjson.loads(THREAD)) == "0199a213-81c0-7800-8aa1-bbab2a035a53"
    assert thread_id_of({"type": "thread.resumed", "thread": {"id": "t-2"}}) == "t-2"
    assert thread_id_of({"type": "session.started", "run_id": "r-3"}) == "r-3"
    assert thread_id_of({"type": "thread.started", "thread_id": ""}) is None
    assert thread_id_of({"type": "turn.started"}) is None
    assert thread_id_of({"type": "thread.started", "thread_id": 5}) is None


# ------------------------------------------------------------ the redactor


def test_redactor_basics() -> None:
    redactor = Redactor(["abc", "", "abcd", "abcdef", "abcd"])
    assert redactor.secrets == ("abcdef", "abcd")  # short and duplicate values dropped, longest first
    assert redactor.text("abc abcd abcdef abcdeX") == "abc *** *** ***eX"
    masked = {"***": ["***", {"k": ["x***x"]}], "n": 1}
    assert redactor.value({"abcd": ["abcdef", {"k": ("xabcdx",)}], "n": 1}) == masked
    assert "abcd" not in repr(redactor)
    assert not Redactor.of(None, "") and Redactor.of(TOKEN)
    assert Redactor(TOKEN).secrets == (TOKEN,)  # one string is one secret, not its characters
    assert pickle.loads(pickle.dumps(SECRETS)).text(TOKEN) == "***"


def test_redactor_with_no_secrets_returns_input_unchanged() -> None:
    value = {"a": ["b"]}
    assert NONE.value(value) is value
    text = "anything"
    assert NONE.text(text) is text and SECRETS.text(text) is text


def test_redactor_with_many_secrets() -> None:
    secrets = [f"secret-{i:04d}-{'x' * (i % 7)}" for i in range(2000)]
    redactor = Redactor(secrets)
    text = " ".join(secrets[::97]) + " secret-9999 " + "filler " * 10_000
    out = redactor.text(text)
    assert all(s not in out for s in secrets)
    assert "secret-9999" in out
    assert redactor.might_be_in_json(secrets[5].encode()) and not redactor.might_be_in_json(b'{"a":"b"}')


def test_redactor_with_special_characters_and_long_secrets() -> None:
    odd = Redactor.of('p@ss"w/rd\\x', "a.b*c+d?", "k" * 5000)
    assert odd.text('x p@ss"w/rd\\x a.b*c+d? aXbYcZd ' + "k" * 5001) == "x *** *** aXbYcZd ***k"
    entry = codex_entry(line({"type": "error", "message": 'p@ss"w/rd\\x'}), odd)
    assert entry.message == "***" and entry.extra["event"]["message"] == "***"
