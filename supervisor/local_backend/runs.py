"""What a run of the local backend is: its description, its id, and the fixed
vocabularies (states, log levels, request kinds) the other modules share."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from workers.common.names import run_id_problem

TERMINAL_STATES = frozenset({"complete", "error"})
LEVELS = frozenset({"info", "warning", "error"})
# Request kinds, as counted per run (and as keys of `request_counts`).
KINDS = (
    "bootstrap",
    "heartbeat",
    "logs",
    "batch",
    "artifacts",
    "complete",
    "error",
    "github_token",
    "control_poll",
    "control_ack",
)
SECRET_KEYS = ("github_token", "wandb_api_key", "hf_token")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class NewRun:
    """What a new run is created with (admin API body / `create_run` arguments)."""

    prompt: str
    run_id: str | None = None
    token: str | None = field(default=None, repr=False)
    repo_context: Mapping[str, Any] | None = None
    github_token: str | None = field(default=None, repr=False)
    wandb_api_key: str | None = field(default=None, repr=False)
    hf_token: str | None = field(default=None, repr=False)
    log_batch: bool | None = None


def new_run_from_mapping(raw: Mapping[str, Any]) -> NewRun:
    """Validate a run description; ValueError names the bad key."""
    known = set(NewRun.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; allowed: {sorted(known)}")
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("'prompt' must be a non-empty string")
    for key in ("run_id", "token", *SECRET_KEYS):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{key!r} must be a non-empty string")
    run_id = raw.get("run_id")
    problem = run_id_problem(run_id) if run_id is not None else None
    if problem is not None:
        raise ValueError(problem)  # the rule bootstrap itself applies
    repo_context = raw.get("repo_context")
    if repo_context is not None and not isinstance(repo_context, Mapping):
        raise ValueError("'repo_context' must be an object")
    log_batch = raw.get("log_batch")
    if log_batch is not None and not isinstance(log_batch, bool):
        raise ValueError("'log_batch' must be true or false")
    return NewRun(
        prompt=prompt,
        run_id=run_id,
        token=raw.get("token"),
        repo_context=dict(repo_context) if repo_context is not None else None,
        github_token=raw.get("github_token"),
        wandb_api_key=raw.get("wandb_api_key"),
        hf_token=raw.get("hf_token"),
        log_batch=log_batch,
    )


def new_run_id() -> str:
    # Starts with a letter so it can never look like a command-line option.
    return "r" + secrets.token_hex(5)


def dedupe_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only the first entry of each `seq` (entries without seq are all kept)."""
    seen: set[int] = set()
    unique = []
    for entry in entries:
        seq = entry["seq"]
        if seq is not None:
            if seq in seen:
                continue
            seen.add(seq)
        unique.append(entry)
    return unique
