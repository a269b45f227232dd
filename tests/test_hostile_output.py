"""Hostile Codex output never stops the shipper (SPEC section 9): numbers past
64 bits, wrong types, invalid UTF-8, lone surrogates, deep nesting, 50 MB lines.
A fuzz test over random event shapes, then the real command end to end."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson

from supervisor.local_backend import LocalBackend
from tests.conftest import Env
from workers.common.redact import Redactor
from workers.log_entries import TOKEN_COUNT_MAX, add_usage, encode_codex_line, thread_id_of, token_usage

KEYS = ("type", "item", "usage", "input_tokens", "output_tokens", "thread_id", "thread", "id", "run_id",
        "command", "aggregated_output", "exit_code", "status", "text", "message", "error", "\\ud800")
TYPES = ("thread.started", "turn.started", "turn.completed", "turn.failed", "error", "item.started",
         "item.updated", "item.completed", "command_execution", "agent_message", "reasoning")
NUMBERS = ("18446744073709551615", "18446744073709551616", "-9223372036854775809", "1e308", "-0", "0.5",
           "9007199254740993", "123456789012345678901234567890")


def _value(rng: random.Random, depth: int) -> str:
    """A random JSON value, as text (so numbers past 64 bits stay literal)."""
    roll = rng.random()
    if depth > 6 or roll < 0.35:
        return rng.choice([
            rng.choice(NUMBERS), str(rng.randint(-5, 10**6)), "true", "false", "null",
            json.dumps(rng.choice(TYPES)), '"\\ud800 lone"', '"\\udfff"', '"\\u0000nul"',
            json.dumps("x" * rng.randint(0, 40_000)), '"\\u001b[31mred"',
        ])
    if roll < 0.7:
        pairs = [f"{json.dumps(rng.choice(KEYS)) if rng.random() < 0.9 else chr(34) + rng.choice(KEYS) + chr(34)}:"
                 f"{_value(rng, depth + 1)}" for _ in range(rng.randint(0, 6))]
        return "{" + ",".join(pairs) + "}"
    return "[" + ",".join(_value(rng, depth + 1) for _ in range(rng.randint(0, 5))) + "]"


def _line(rng: random.Random) -> bytes:
    event = "{" + f'"type":{json.dumps(rng.choice(TYPES))}'
    for _ in range(rng.randint(0, 4)):
        event += f",{json.dumps(rng.choice(KEYS))}:{_value(rng, 1)}"
    data = (event + "}").encode()
    roll = rng.random()
    if roll < 0.15:  # invalid UTF-8 somewhere
        at = rng.randrange(len(data) + 1)
        data = data[:at] + bytes([rng.choice([0xFF, 0xC3, 0x80, 0xED])]) + data[at:]
    elif roll < 0.2:  # cut short
        data = data[: rng.randrange(len(data) + 1)]
    elif roll < 0.25:  # deeply nested
        data = b'{"type":"x","v":' + b"[" * 500 + b"]" * 500 + b"}"
    return data


def test_fuzz_random_event_shapes_always_encode() -> None:
    rng = random.Random(15_2026)
    redactor = Redactor(("secret-token-123",))
    totals = (0, 0)
    for seq in range(1, 3001):
        line = _line(rng)
        data, entry = encode_codex_line("2026-01-01T00:00:00.000Z", line, redactor, seq)
        shipped = orjson.loads(data)
        assert shipped["extra"]["seq"] == seq and isinstance(shipped["message"], str)
        assert len(shipped["message"]) <= 4000 + len(" [truncated]")
        event = entry.extra.get("event") or {}
        totals = add_usage(totals, token_usage(event))
        orjson.dumps({"input_tokens": totals[0], "output_tokens": totals[1]})  # shipper.json stays encodable
        thread_id_of(event)


def test_usage_counts_past_64_bits_are_ignored_and_sums_saturate() -> None:
    huge = {"type": "turn.completed", "usage": {"input_tokens": 2**64 - 1, "output_tokens": 5}}
    assert token_usage(huge) == (0, 5)
    assert add_usage((TOKEN_COUNT_MAX - 1, 0), (10, 0)) == (TOKEN_COUNT_MAX, 0)
    assert add_usage((1, 2), None) == (1, 2)


def test_hostile_output_is_all_shipped_and_the_run_completes(env: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run(prompt="Work.")
    result = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "lines=500,hostile"}, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert backend.run(run_id)["state"] == "complete"
    entries = backend.entries(run_id)
    assert [e["extra"]["seq"] for e in entries] == list(range(1, len(entries) + 1))
    printed = [line for line in (env.state(run_id) / "codex.out").read_bytes().split(b"\n") if line]
    codex: list[dict[str, Any]] = [e for e in entries if e["extra"]["run_event_source"] == "codex"]
    assert len(codex) == len(printed) >= 500 + 17
    big = [e for e in codex if e["extra"].get("line_truncated_bytes")]
    assert len(big) == 1, "the 50 MB line arrives once, cut to its head"
    assert not (env.state(run_id) / "worker-log-shipper.log").exists() or \
        "Traceback" not in (env.state(run_id) / "worker-log-shipper.log").read_text()
