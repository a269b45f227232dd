"""`flywheel-bootstrap --runs FILE`: read the runs file, then hand it to the pool."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from supervisor.pool import run_pool
from supervisor.runs_file import read_runs


def run_many(runs_file: str, config: Path | None, server: str, max_parallel: int | None,
             gpus_per_run: int | None, heartbeat_interval: float | None, codex_timeout: float | None) -> int:
    specs, warnings = read_runs(runs_file, sys.stdin, default_config=config, default_server=server)
    for warning in warnings:
        click.echo(f"flywheel-bootstrap: warning: {warning}", err=True)
    return run_pool(
        specs,
        max_parallel=max_parallel,
        gpus_per_run=gpus_per_run,
        heartbeat_interval=heartbeat_interval,
        codex_timeout=codex_timeout,
        env=os.environ,
        echo=lambda line: click.echo(line),
        is_tty=sys.stdout.isatty(),
    )
