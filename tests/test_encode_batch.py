"""The log-shipper's batch encoder (`encode_codex_lines`) ships exactly the bytes
that `encode_codex_line` ships line by line, for every kind of line; and the
block readers of the spool (`LineTail.read_block`, `OutboxReader.batch`) return
what the line-at-a-time readers did."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest

from tests.test_hostile_output import _line
from workers.common.redact import Redactor
from workers.common.spool import LineTail, OutboxReader
from workers.log_entries import (
    EVENT_STRING_MAX_CHARS,
    add_usage,
    encode_codex_line,
    encode_codex_lines,
    token_usage,
)

NOW = "2026-01-01T00:00:00.000Z"
TOKEN = "run-token-5f2c9a"
SECRETS = Redactor.of(TOKEN, "ghp_0123456789abcdef")

TRICKY = [
    b'{"type":"thread.started","thread_id":"0199a213-81c0-7800-8aa1-bbab2a035a53"}',
    b'{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"bash -lc ls",'
    b'"aggregated_output":"","exit_code":null,"status":"in_progress"}}',
    b'{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"bash -lc ls",'
    b'"aggregated_output":"docs\\nsrc\\n","exit_code":0,"status":"completed"}}',
    b'{"type":"item.completed","item":{"type":"agent_message","text":"Done."}}',
    b'{"type":"turn.completed","usage":{"input_tokens":24763,"cached_input_tokens":24448,"output_tokens":122}}',
    b'{"type":"turn.completed","usage":{"input_tokens":18446744073709551615,"output_tokens":"7"}}',
    b'{"type":"turn.failed","error":{"message":"model \\u001b[31mgone\\u001b[0m\\r"}}',
    b'{"type":"error","message":"Reconnecting... 1/5"}',
    b"plain terminal text \x1b[32mgreen\x1b[0m\r",
    b"",
    b"   ",
    b'  {"type":"turn.started"}',  # JSON after blanks
    b'{"type":"turn.started"}\r',
    b'{"type":"turn.started"}\n',
    b'{"type":"turn.started"}\r\n',
    b'{"type":"turn.\x00started"}',
    b'{"type":"item.completed","item":{"type":"agent_message","text":"caf\xe9 \xff"}}',  # invalid UTF-8
    b'{"type":"x","n":123456789012345678901234567890}',  # past 64 bits
    b'{"type":"x","n":18446744073709551615,"m":-9223372036854775808,"f":1e308,"z":-0}',
    b'{"type":"x","s":"\\ud800 lone"}',
    b'{"type":"x","\\udfff":1}',
    b'{"type":"x","v":' + b"[" * 70 + b"]" * 70 + b"}",  # deeper than EVENT_MAX_DEPTH
    b'{"type":"x","v":' + b"[" * 300 + b"]" * 300 + b"}",  # deeper than orjson takes
    b"[1,2,3]",
    b'"a string"',
    b"42",
    b"null",
    b'{"type":1,"item":[]}',
    b'{"type":"item.completed","item":"not an object"}',
    b'{"type":"item.completed","item":{"type":"command_execution","command":["git","status"],'
    b'"aggregated_output":7}}',
    b'{"type":"item.completed","item":{"type":"agent_message","text":"' + b"y" * 5000 + b'"}}',  # message cut
    b'{"type":"item.completed","item":{"type":"agent_message","text":"' + b"z" * 20_000 + b'"}}',  # event capped
    b'{"type":"item.completed","item":{"type":"agent_message","text":"' + b"w" * EVENT_STRING_MAX_CHARS + b'"}}',
    b'{"type":"item.completed","item":{"type":"agent_message","text":"export T=' + TOKEN.encode() + b'"}}',
    b'{"type":"item.completed","item":{"type":"agent_message","text":"\\u0072un-token-5f2c9a"}}',  # escaped
    b'{"' + TOKEN.encode() + b'":"key"}',
    b"echo " + TOKEN.encode(),
    b'{"type":"a","type":"b"}',  # a duplicate key: the last wins, as when parsed
    b'{"type":"x","t":"\xc2\x9b31m C1 \x7f DEL"}',
    b'{"unterminated": "',
]


def one_by_one(lines: list[bytes], redactor: Redactor, first_seq: int,
               dropped: dict[int, int] | None = None) -> tuple[bytes, tuple[int, int]]:
    out = b""
    tokens = (0, 0)
    for i, raw in enumerate(lines):
        data, entry = encode_codex_line(NOW, raw, redactor, first_seq + i, truncated_bytes=(dropped or {}).get(i, 0))
        out += data + b"\n"
        tokens = add_usage(tokens, token_usage(entry.extra.get("event") or {}))
    return out, tokens


@pytest.mark.parametrize("redactor", [Redactor(), SECRETS], ids=["no secrets", "secrets"])
def test_batch_ships_the_same_bytes_as_line_by_line(redactor: Redactor) -> None:
    out = bytearray()
    tokens = encode_codex_lines(out, NOW, TRICKY, redactor, 7)
    expected, expected_tokens = one_by_one(TRICKY, redactor, 7)
    assert out.split(b"\n") == expected.split(b"\n")  # a difference shows which line
    assert tokens == expected_tokens == (24763, 122)


def test_batch_matches_line_by_line_on_random_hostile_lines() -> None:
    rng = random.Random(14_2026)
    lines = [_line(rng) for _ in range(400)]
    out = bytearray()
    tokens = encode_codex_lines(out, NOW, lines, SECRETS, 1, (5, 6))
    expected, expected_tokens = one_by_one(lines, SECRETS, 1)
    assert bytes(out) == expected
    assert tokens == add_usage((5, 6), expected_tokens)


def test_batch_marks_the_lines_the_reader_cut() -> None:
    lines = [TRICKY[1], b'{"type":"item.completed","item":{"type":"agent_message","text":"he', TRICKY[2]]
    out = bytearray()
    encode_codex_lines(out, NOW, lines, Redactor(), 1, dropped={1: 5_000_000})
    assert bytes(out) == one_by_one(lines, Redactor(), 1, {1: 5_000_000})[0]
    cut = orjson.loads(out.split(b"\n")[1])
    assert cut["extra"]["line_truncated_bytes"] == 5_000_000 and cut["extra"]["seq"] == 2


def test_every_entry_is_one_line() -> None:
    out = bytearray()
    encode_codex_lines(out, NOW, TRICKY, SECRETS, 1)
    entries = bytes(out).split(b"\n")
    assert entries.pop() == b""
    assert [orjson.loads(e)["extra"]["seq"] for e in entries] == list(range(1, len(TRICKY) + 1))


# ------------------------------------------------------------ block readers


@pytest.mark.parametrize(
    "content, max_line, data, dropped",
    [
        (b"a\nbb\n\nccc\npartial", 1024, [b"a", b"bb", b"", b"ccc"], {}),
        (b"x" * 10 + b"\nshort\n" + b"y" * 7 + b"\n", 4, [b"xxxx", b"shor", b"yyyy"], {0: 6, 1: 1, 2: 3}),
        (b"no newline yet", 1024, [], {}),
    ],
)
def test_read_block_lines_ends_and_dropped(tmp_path: Path, content: bytes, max_line: int,
                                           data: list[bytes], dropped: dict[int, int]) -> None:
    f = tmp_path / "out"
    f.write_bytes(content)
    block = LineTail(f, 0, max_line=max_line).read_block()
    assert block.data == data and block.dropped == dropped
    ends = [i + 1 for i, byte in enumerate(content) if byte == ord("\n")]
    assert block.ends() == ends
    assert [(line.data, line.end, line.dropped) for line in block.lines()] == [
        (d, e, dropped.get(i, 0)) for i, (d, e) in enumerate(zip(data, ends))]


def test_read_block_across_chunks_and_reads(tmp_path: Path) -> None:
    """Lines split by the read size, an over-long line spanning reads, and a
    line finished by a later append come out whole, with exact ends."""
    f = tmp_path / "out"
    rng = random.Random(3)
    lines = [bytes([97 + rng.randrange(26)]) * rng.choice([0, 1, 5, 40, 300]) for _ in range(400)]
    content = b"".join(line + b"\n" for line in lines)
    f.write_bytes(content[:5000])
    tail = LineTail(f, 0, max_line=64)
    got: list[tuple[bytes, int]] = []
    step = 0
    while len(got) < len(lines):
        step += 1
        if step == 3:
            f.write_bytes(content)
        block = tail.read_block(max_bytes=777)
        got += [(d, block.dropped.get(i, 0)) for i, d in enumerate(block.data)]
        assert tail.offset == (block.ends()[-1] if block.data else tail.offset)
        assert step < 10_000
    assert got == [(line[:64], max(0, len(line) - 64)) for line in lines]
    assert tail.offset == len(content)


@pytest.mark.parametrize(
    "start, stop, limit, max_bytes, entries, end",
    [
        (0, 14, 10, 100, [b"a", b"bb", b"ccc", b"dddd"], 14),
        (0, 14, 2, 100, [b"a", b"bb"], 5),
        (2, 14, 10, 5, [b"bb", b"ccc"], 9),  # the next would pass max_bytes
        (9, 14, 10, 1, [b"dddd"], 14),  # the first is taken whatever its size
        (0, 9, 10, 100, [b"a", b"bb", b"ccc"], 9),  # never past the committed size
        (14, 14, 10, 100, [], 14),
        (14, 18, 10, 100, [], 14),  # a torn entry (no newline within stop) is not one
    ],
)
def test_outbox_batch(tmp_path: Path, start: int, stop: int, limit: int, max_bytes: int,
                      entries: list[bytes], end: int) -> None:
    f = tmp_path / "outbox"
    f.write_bytes(b"a\nbb\nccc\ndddd\ntorn")
    reader = OutboxReader(f)
    try:
        assert reader.batch(start, stop, limit, max_bytes) == (entries, end)
    finally:
        reader.close()


def test_outbox_batch_of_big_entries_in_many_reads(tmp_path: Path) -> None:
    f = tmp_path / "outbox"
    sizes = [3, 700_000, 10, 300_000, 5]
    f.write_bytes(b"".join(b"e" * n + b"\n" for n in sizes))
    reader = OutboxReader(f)
    try:
        got, end = reader.batch(0, f.stat().st_size, 500, 4 * 1024 * 1024)
        assert [len(e) for e in got] == sizes and end == f.stat().st_size
        got, end = reader.batch(0, f.stat().st_size, 1, 4 * 1024 * 1024)
        assert [len(e) for e in got] == [3] and end == 4
        got, end = reader.batch(4, f.stat().st_size, 1, 4 * 1024 * 1024)
        assert [len(e) for e in got] == [700_000] and end == 700_005
    finally:
        reader.close()
