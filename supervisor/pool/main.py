"""The pool's entry point (`--runs FILE`) and the work done once for all runs;
see the package docstring for how the pool works."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import click

from supervisor.config import CodexConfig
from supervisor.plain_output import stamped
from supervisor.pool import gpus as gpu_discovery
from supervisor.pool import status_view as sv
from supervisor.pool.decisions import (
    ChildArgv,
    GpuPlan,
    GpuRequest,
    plan_gpus,
    supervisor_argv,
)
from supervisor.pool.loop import Pool, PoolSettings, View
from supervisor.pool.runs_file import RunSpec, read_runs
from supervisor.pool.shard import parse_shard, shard_from_env, take_share
from workers.common.errors import EXIT_OK, EXIT_SIGINT, BackendUnavailable, ConfigError
from workers.common.files import flywheel_home
from workers.common.timing import Timing
from workers.run_processes import containment_in_force, sweep_left_processes


def run_many(runs_file: str, config: Path | None, server: str, max_parallel: int | None,
             gpus_per_run: int | None, heartbeat_interval: float | None, codex_timeout: float | None,
             *, shard: str | None = None, as_json: bool = False) -> int:
    """`flywheel-bootstrap --runs FILE [--shard K/N]`: read the runs file, take this
    task's share of it, then run the pool. With `as_json`, stdout gets only the JSON
    summary; the view goes to stderr."""
    share = parse_shard(shard) if shard is not None else shard_from_env(os.environ)
    specs, warnings = read_runs(runs_file, sys.stdin, default_config=config, default_server=server)
    say = stamped(lambda line: click.echo(line, err=True), is_tty=sys.stderr.isatty())
    for warning in warnings:
        say(f"flywheel-bootstrap: warning: {warning}")
    stream = sys.stderr if as_json else sys.stdout
    echo = stamped(lambda line: click.echo(line, err=as_json), is_tty=stream.isatty())
    if share is not None:
        mine = take_share(specs, share)
        echo(f"shard {share} ({share.source}): {len(mine)} of the {len(specs)} runs of {runs_file}")
        if not mine:
            echo("nothing to run in this shard")
            return EXIT_OK
        specs = mine
    return run_pool(
        specs,
        max_parallel=max_parallel,
        gpus_per_run=gpus_per_run,
        heartbeat_interval=heartbeat_interval,
        codex_timeout=codex_timeout,
        env=os.environ,
        echo=echo,
        is_tty=stream.isatty(),
        check_servers=True,
        summary_out=(lambda text: click.echo(text)) if as_json else None,
    )


def reach_servers(specs: Sequence[RunSpec], timing: Timing) -> None:
    """Each distinct backend answers at all (any HTTP status), tried a few times
    with backoff; else one BackendUnavailable (exit 3) before any run starts,
    instead of every run failing on its own."""
    if timing.fetch_tries < 1:
        return  # no try allowed: nothing to check (as before)
    for server in dict.fromkeys(spec.server for spec in specs):
        # The usual case, a backend that answers the first try, needs no `requests`
        # (~30 ms of the pool's CPU to import). After a failed first try the other
        # tries go through requests as before, so the backoff, the count of tries
        # and the message are unchanged (a single allowed try is made again there,
        # for requests' words on what is wrong).
        if first_try_answers(server, timing):
            continue
        _reach_with_requests(server, specs, timing, first=1 if timing.fetch_tries > 1 else 0)


def first_try_answers(server: str, timing: Timing) -> bool:
    """`GET /` over plain http.client got an HTTP status line (any status) back.
    Like the requests check: no proxy (trust_env off), no redirect followed, the
    same certificate bundle for https. False on any trouble, never raises."""
    import http.client
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(server)
        host, port = parts.hostname, parts.port
        if not host or parts.scheme not in ("http", "https"):
            return False
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            import ssl

            import certifi

            context = ssl.create_default_context(cafile=certifi.where())
            conn = http.client.HTTPSConnection(host, port, timeout=timing.connect_timeout, context=context)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timing.connect_timeout)
        try:
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(timing.read_timeout)
            conn.request("GET", f"{parts.path.rstrip('/')}/")
            conn.getresponse()
        finally:
            conn.close()
    except (OSError, ValueError, http.client.HTTPException):
        return False
    return True


def _reach_with_requests(server: str, specs: Sequence[RunSpec], timing: Timing, first: int) -> None:
    """Tries `first` .. fetch_tries-1 with requests, backing off between them."""
    import requests

    from workers.common.backoff import backoff_delay
    from workers.common.net_trouble import describe

    why = ""
    for attempt in range(first, timing.fetch_tries):
        if attempt:
            time.sleep(backoff_delay(attempt - 1, timing.backoff_base, timing.backoff_cap))
        try:
            with requests.Session() as session:
                session.trust_env = False  # as the runs do
                session.get(f"{server.rstrip('/')}/", timeout=(timing.connect_timeout, timing.read_timeout),
                            allow_redirects=False)
            return
        except requests.RequestException as exc:
            why = describe(exc, server)
    users = [spec.run_id for spec in specs if spec.server == server]
    raise BackendUnavailable(
        f"the backend {server} cannot be reached: {why} (after {timing.fetch_tries} tries); "
        f"no run was started ({len(users)} run{'s' if len(users) != 1 else ''} use it)")


def check_configs(specs: Sequence[RunSpec], echo: Callable[[str], None]) -> list[CodexConfig]:
    """Read every distinct config of the runs once; one ConfigError lists every bad one."""
    from supervisor.config import load_config

    problems: list[str] = []
    configs: list[CodexConfig] = []
    for path in dict.fromkeys(spec.config for spec in specs):
        users = [spec.run_id for spec in specs if spec.config == path]
        shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
        try:
            config = load_config(path)
        except ConfigError as exc:
            problems.append(f"{exc.message}\n  (the config of run{'s' if len(users) > 1 else ''} {shown})")
            continue
        configs.append(config)
        # Shown once here; each supervisor's copy goes to its own output log.
        for warning in config.warnings:
            echo(f"warning: {warning}")
    if problems:
        raise ConfigError("\n".join(problems) + "\nno run was started")
    return configs


def prepare_shared(
    specs: Sequence[RunSpec], env: Mapping[str, str], echo: Callable[[str], None], *, is_tty: bool
) -> dict[str, str]:
    """Work done once for all runs, before any starts; returns the children's base
    environment. Raises ConfigError (exit 2) or ProvisionError (exit 4)."""
    from supervisor.preflight import sandbox_problem
    from supervisor.provision import find_codex, terminal_progress

    configs = check_configs(specs, echo)
    base = dict(env)
    codex = find_codex(
        env,
        flywheel_home(env),
        mock=bool(env.get("BOOTSTRAP_MOCK_CODEX")),
        echo_progress=terminal_progress() if is_tty else None,
    )
    # Found by each run's supervisor too, but said here once, not only in its log.
    for problem in dict.fromkeys(filter(None, (sandbox_problem(codex, c.sandbox_mode, env) for c in configs))):
        echo(f"warning: {problem}")
    if codex.source in ("download", "cache"):
        # Not on PATH: put its folder first, so children find it there and never
        # download (or even lock the cache) again.
        folder = os.path.dirname(codex.argv_prefix[0])
        base["PATH"] = os.pathsep.join(p for p in (folder, env.get("PATH", "")) if p)
    return base


def _terminal_size() -> tuple[int, int]:
    """The terminal's size; stderr first, where status output usually goes."""
    for stream in (sys.stderr, sys.stdout):
        try:
            size = os.get_terminal_size(stream.fileno())
        except (AttributeError, OSError, ValueError):
            continue
        if size.columns and size.lines:
            return size.columns, size.lines
    fallback = shutil.get_terminal_size((100, 40))
    return fallback.columns, fallback.lines


def _open_view(echo: Callable[[str], None], *, is_tty: bool) -> View:
    if is_tty:
        columns, lines = _terminal_size()
        return sv.LiveView(echo, width=columns, height=lines)
    return sv.PlainView(echo)


def run_pool(
    specs: Sequence[RunSpec],
    *,
    max_parallel: int | None,
    gpus_per_run: int | None,
    heartbeat_interval: float | None,
    codex_timeout: float | None,
    env: Mapping[str, str],
    echo: Callable[[str], None],
    is_tty: bool,
    child_argv: ChildArgv | None = None,
    cancel_grace: float | None = None,
    check_servers: bool = False,
    summary_out: Callable[[str], None] | None = None,
) -> int:
    """Run every spec, each under its own supervisor; return the exit status of
    the README (Exit status; see EXIT_PRIORITY for mixed outcomes).

    Problems found before any run starts (bad options, GPUs the host does not
    have, a bad config, Codex not provisioned) raise a BootstrapError.
    `child_argv` replaces the supervisor command (tests); `cancel_grace` bounds
    how long cancelled supervisors may take before they are SIGKILLed;
    `check_servers` asks every backend once before any run starts (exit 3);
    `summary_out` gets the summary as JSON instead of the table."""
    if max_parallel is not None and max_parallel < 1:
        raise ConfigError(f"--max-parallel {max_parallel}: give at least 1 (or leave it out)")
    ids = [spec.run_id for spec in specs]
    if len(set(ids)) != len(ids):
        raise ConfigError("the same run id appears twice in the runs; give each run once")
    if not specs:
        raise ConfigError("no runs to start")

    wants_gpus = gpus_per_run is not None or any(spec.gpus is not None for spec in specs)
    host = gpu_discovery.discover(env) if wants_gpus else ()
    plan = plan_gpus(specs, gpus_per_run, host, gpu_discovery.source_of(env))
    timing = Timing.from_env(env)
    try:
        base_env = prepare_shared(specs, env, echo, is_tty=is_tty)
        if check_servers:
            reach_servers(specs, timing)
    except KeyboardInterrupt:
        echo("interrupted before any run started")
        return EXIT_SIGINT

    settings = _settings(plan, base_env, timing, max_parallel, heartbeat_interval, codex_timeout,
                         is_tty=is_tty, child_argv=child_argv, cancel_grace=cancel_grace,
                         summary_out=summary_out, fork_runs=forks_runs(env))
    state_root = _state_root(env, echo)
    view = _open_view(echo, is_tty=is_tty)
    return Pool(specs, state_root, settings, view, echo).run()


def _settings(plan: GpuPlan, base_env: Mapping[str, str], timing: Timing, max_parallel: int | None,
              heartbeat_interval: float | None, codex_timeout: float | None, *, is_tty: bool,
              child_argv: ChildArgv | None = None, cancel_grace: float | None = None,
              summary_out: Callable[[str], None] | None = None, fork_runs: bool = True) -> PoolSettings:
    if cancel_grace is None:
        # Time for each supervisor's own shutdown (Codex grace, spool flush, report).
        cancel_grace = timing.kill_grace + timing.flush_timeout + 30.0
    argv_of: ChildArgv = child_argv or (
        lambda spec: supervisor_argv(
            spec, heartbeat_interval=heartbeat_interval, codex_timeout=codex_timeout
        )
    )
    return PoolSettings(
        plan=plan,
        base_env=base_env,
        argv_of=argv_of,
        timing=timing,
        max_parallel=max_parallel,
        cancel_grace=cancel_grace,
        tick=0.25 if is_tty else 1.0,
        summary_out=summary_out,
        fork_runs=fork_runs,
    )


def forks_runs(env: Mapping[str, str]) -> bool:
    """Whether the supervisors are forked by the launcher (the default) or each
    exec'd (`FLYWHEEL_POOL_START=exec`: the way out should forking misbehave)."""
    return env.get("FLYWHEEL_POOL_START", "fork") != "exec"


def _state_root(env: Mapping[str, str], echo: Callable[[str], None]) -> Path:
    """Where the runs keep their state; what earlier runs left running is ended first."""
    state_root = flywheel_home(env) / "state"
    sweep_left_processes(state_root, echo)
    echo(containment_in_force(env))
    return state_root



def run_watch(folder_text: str, config: Path | None, server: str, max_parallel: int | None,
              gpus_per_run: int | None, heartbeat_interval: float | None, codex_timeout: float | None) -> int:
    """`flywheel-bootstrap --runs DIR --watch`: a pool fed by the runs files dropped
    into DIR (supervisor/pool/watch.py), until SIGTERM/SIGINT."""
    import threading

    from supervisor.pool.journal import Journal, journal_path
    from supervisor.pool.report import post_error
    from supervisor.pool.watch import FolderFeed

    folder = Path(folder_text).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"--runs {folder_text} --watch: no such folder; create it (mkdir -p {folder}) "
                          "or name the folder that runs files are dropped into")
    if max_parallel is not None and max_parallel < 1:
        raise ConfigError(f"--max-parallel {max_parallel}: give at least 1 (or leave it out)")
    env = os.environ
    echo: Callable[[str], None] = click.echo
    is_tty = sys.stdout.isatty()
    host = gpu_discovery.discover(env)
    source = gpu_discovery.source_of(env)
    plan = plan_gpus([], gpus_per_run, host, source)  # --gpus-per-run against the host
    timing = Timing.from_env(env)
    base_env = prepare_shared([], env, echo, is_tty=is_tty)

    def read(path: Path) -> list[RunSpec]:
        specs, warnings = read_runs(str(path), sys.stdin, default_config=config, default_server=server)
        for warning in warnings:
            echo(warning)
        return specs

    def plan_runs(specs: Sequence[RunSpec]) -> Mapping[str, GpuRequest]:
        check_configs(specs, echo)
        mine = plan_gpus(specs, gpus_per_run, host, source)
        if mine.host != host:
            raise ConfigError(f"its runs name GPUs, but this host has none ({source} lists none)")
        return mine.requests

    def report_lost(spec: RunSpec, reason: str) -> str:
        return post_error(spec, reason, timing, threading.Event(), False)

    journal = Journal(journal_path(flywheel_home(env), folder))
    feed = FolderFeed(folder, journal, read, plan_runs, report_lost, echo)
    settings = _settings(plan, base_env, timing, max_parallel, heartbeat_interval, codex_timeout, is_tty=is_tty,
                         fork_runs=forks_runs(env))
    pool = Pool([], _state_root(env, echo), settings, _open_view(echo, is_tty=is_tty), echo, feed=feed)
    feed.wake = pool.wake
    try:
        feed.open()
        echo(f"watching {folder} for *.runs files (GPUs: {','.join(host) or 'none'}; journal {journal.path})")
        return pool.run()
    finally:
        feed.close()
