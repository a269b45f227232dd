"""The `flywheel-bootstrap` command line (README: Running one run, Exit status)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from supervisor import __version__
from supervisor.durations import AGE, DURATION, HEARTBEAT_INTERVAL
from supervisor.plain_output import stamp
from supervisor.settings import RunSettings
from workers.common.errors import (
    EXIT_OK,
    EXIT_RUN_ERROR,
    EXIT_SIGINT,
    EXIT_UNREPORTED,
    EXIT_USAGE,
    BootstrapError,
)
from workers.common.files import flywheel_home
from workers.common.redact import mask_url_userinfo
from workers.common.server_url import validate_server_url
from workers.common.timing import Timing

DEFAULT_SERVER = "http://localhost:8000"
CONFIG_HELP = "Path to your Codex config.toml [default: ~/.codex/config.toml when it exists]."


def say(line: str) -> None:
    text = f"flywheel-bootstrap: {line}"
    click.echo(text if sys.stderr.isatty() else stamp(text), err=True)


def default_config() -> Path | None:
    """~/.codex/config.toml when it exists (every example uses it)."""
    path = Path("~/.codex/config.toml").expanduser()
    return path if path.is_file() else None


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _import_before_the_fetch() -> None:
    """The modules of the fetch (the HTTP stack) and of the heartbeat worker,
    imported while `codex login status` runs: Codex's first line waits for
    both. The rest of the supervisor is imported once the run is claimed,
    while its cgroup is probed (`run_single`)."""
    import workers.heartbeat  # noqa: F401


def run_single(run_id: str, token: str, config: Path, server: str, timing: Timing, follow: bool = False) -> int:
    from supervisor.preflight import prepare

    settings = RunSettings(
        run_id=run_id, token=token, config_path=config, server=server, timing=timing,
        home=flywheel_home(), mock=bool(os.environ.get("BOOTSTRAP_MOCK_CODEX")),
    )
    from supervisor.run_lock import hold_run

    # Held until this run's last process ends.
    prep = prepare(settings, os.environ, lambda line: say(f"warning: {line}"), meanwhile=_import_before_the_fetch,
                   hold=lambda state_dir: hold_run(state_dir, run_id, timing.run_lock_wait, say))
    from supervisor.signals import Aborted, Interrupts
    from workers.common.backend_client import Backend, MalformedPayload
    from workers.run_processes import begin_run, sweep_left_processes

    sweep_left_processes(prep.state_dir.parent, say)
    def retrying(why: str, attempt: int) -> None:
        if attempt == 2:  # once: the final failure names the last reason again
            say(f"run {run_id}: the backend does not answer the task fetch ({mask_url_userinfo(why)}); trying up to "
                f"{timing.fetch_tries} times")

    # From here on a signal is an event, not an exception: once the fetch has
    # claimed the run, a SIGTERM must still end in the run's report.
    interrupts = Interrupts().install()
    try:
        # A backend that accepts the fetch and never answers holds a signal
        # for the flush time at most.
        with Backend(prep.server, run_id, token, timing) as backend, interrupts.bounded(timing.flush_timeout):
            payload = backend.fetch_bootstrap(sleep=interrupts.sleep, on_retry=retrying)
    except Aborted:
        interrupts.restore()
        say(f"run {run_id}: {interrupts.name} received while fetching the run; the backend did not answer "
            f"within {timing.flush_timeout:g} s, so it is not known whether the run was claimed")
        return interrupts.exit_code
    except MalformedPayload as exc:
        interrupts.restore()
        return _report_malformed_payload(prep.server, run_id, token, timing, exc.message)
    except BaseException:
        interrupts.restore()
        raise
    if payload is None:
        interrupts.restore()
        interrupts.raise_if_received()
        say(f"warning: run {run_id}: the backend answered HTTP 409 (already claimed): another bootstrap is "
            f"running it, or it already ran and finished; nothing to do here. What this machine shipped for it: "
            f"flywheel-bootstrap logs {run_id}")
        _mention_leftover_spool(prep.state_dir)
        return EXIT_OK
    # Claimed. The first move into the run's cgroup waits 5-15 ms in the kernel
    # (workers.run_processes.OpeningRun): its probe waits while the rest of the
    # supervisor is imported.
    opening = begin_run(run_id, prep.env)
    from supervisor.run import supervise

    follower = _start_follower(run_id) if follow else None
    try:
        return supervise(prep, payload, say, interrupts, opening)
    finally:
        if follower is not None:
            _stop_follower(follower)
        _mention_refused_entries(run_id, prep.state_dir)


def _stop_follower(follower: subprocess.Popen[bytes]) -> None:
    assert follower.stdin is not None
    follower.stdin.close()  # tells it to print what is left and stop
    try:
        follower.wait(timeout=10)
    except subprocess.TimeoutExpired:
        follower.kill()
        follower.wait()


def _mention_refused_entries(run_id: str, state_dir: Path) -> None:
    """Entries the backend refused are dropped, not retried (SPEC 9): the run
    still completes, so its end is where the person hears they are missing."""
    from workers.common.spool import ShipperState

    refused = ShipperState.load(state_dir).dropped
    if refused:
        say(f"warning: run {run_id}: the backend refused {refused:,} log entr{'y' if refused == 1 else 'ies'}; "
            f"they were dropped, not retried (flywheel-bootstrap logs {run_id} shows every entry)")


def _report_malformed_payload(server: str, run_id: str, token: str, timing: Timing, why: str) -> int:
    """The backend answered the fetch, so it may hold the run as claimed: it gets
    the run's one terminal report (error), within the flush bound."""
    from workers.common.backend_client import Backend

    say(f"error: run {run_id}: {why}; reporting the run as failed")
    reason = f"bootstrap failed: {why}"
    give_up = time.monotonic() + timing.flush_timeout
    with Backend(server, run_id, token, timing) as backend:
        answer = backend.post("/error", {"summary": f"Run failed: {reason}", "reason": reason},
                              keep_trying=lambda: time.monotonic() < give_up)
    if answer.ok:
        return EXIT_RUN_ERROR
    say(f"error: run {run_id}: could not report it either (HTTP {answer.status or 'no answer'}); exit "
        f"{EXIT_UNREPORTED} asks whoever started bootstrap to report the run")
    return EXIT_UNREPORTED


def _start_follower(run_id: str) -> subprocess.Popen[bytes] | None:
    """--follow's printer of the run's log, or None when it cannot be started:
    the run is claimed by now, so it goes on without it (and is reported)."""
    from supervisor.crash import fault_point

    try:
        fault_point("follow")
        # A process of its own, not a thread: the supervisor forks its workers,
        # and a thread holding stderr's lock at that moment would hang them.
        return subprocess.Popen([sys.executable, "-m", "supervisor", "logs", run_id, "-f", "--while-stdin-open"],
                                stdin=subprocess.PIPE, stdout=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - whatever it was, the claimed run must still run and be reported
        say(f"warning: run {run_id}: --follow could not start its log printer ({exc}); the run goes on without it "
            f"(its log: flywheel-bootstrap logs {run_id} -f)")
        return None


def _mention_leftover_spool(state_dir: Path) -> None:
    """A crashed earlier start may have left entries that never reached the
    backend; the backend will not take this run again, so say where they are."""
    from workers.common.spool import ShipperState

    state = ShipperState.load(state_dir)
    waiting = state.next_seq - 1 - state.delivered
    if waiting > 0:
        say(f"note: {waiting} log entries of an earlier start were never delivered; they stay in {state_dir}")


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--run-id", envvar="FLYWHEEL_RUN_ID", help="Run id (env FLYWHEEL_RUN_ID).")
@click.option("--token", envvar="FLYWHEEL_RUN_TOKEN", show_envvar=False,
              help="The run's token (env FLYWHEEL_RUN_TOKEN — preferred: arguments are visible in `ps`).")
@click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=True),
              help=CONFIG_HELP + " The default for every line of --runs.")
@click.option("--server", envvar="FLYWHEEL_SERVER", default=DEFAULT_SERVER, show_default=True,
              help="Flywheel backend base URL (env FLYWHEEL_SERVER).")
@click.option("--runs", "runs_file", metavar="FILE", help="Run many runs from FILE ('-' = stdin); see README.")
@click.option("--watch", is_flag=True, help="With --runs DIR: keep taking the *.runs files dropped into DIR, "
              "moving each to DIR/done/ or DIR/failed/ when its runs end (a service; see README).")
@click.option("--shard", metavar="K/N", help="With --runs: take every N-th run starting at K (0-based); "
              "default from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT in a Slurm job array.")
@click.option("--max-parallel", type=click.IntRange(min=1), help="At most N runs at a time.")
@click.option("--gpus-per-run", type=click.IntRange(min=1), help="Give each run K GPUs (CUDA_VISIBLE_DEVICES).")
@click.option("--heartbeat-interval", type=HEARTBEAT_INTERVAL, envvar="FLYWHEEL_HEARTBEAT_INTERVAL",
              help="Time between heartbeats: 30s, 2m; bare = seconds [default: 30s] (env FLYWHEEL_HEARTBEAT_INTERVAL).")
@click.option("--codex-timeout", type=DURATION, envvar="FLYWHEEL_CODEX_TIMEOUT",
              help="Stop Codex after this long (90m, 2h; bare = seconds) and report an error "
              "(env FLYWHEEL_CODEX_TIMEOUT).")
@click.option("-v", "--follow", "follow", is_flag=True, help="One run: also print Codex's events as they come.")
@click.option("--json", "as_json", is_flag=True, help="With --runs: the summary as one JSON object on stdout.")
@click.version_option(__version__, prog_name="flywheel-bootstrap")
@click.pass_context
def cli(ctx: click.Context, run_id: str | None, token: str | None, config: Path | None, server: str,
        runs_file: str | None, watch: bool, shard: str | None, max_parallel: int | None, gpus_per_run: int | None,
        heartbeat_interval: float | None, codex_timeout: float | None, follow: bool, as_json: bool) -> None:
    """Run Flywheel jobs with Codex on this machine.

    \b
    One run:   flywheel-bootstrap --run-id ID --config config.toml   (token in FLYWHEEL_RUN_TOKEN)
    Many runs: flywheel-bootstrap --runs runs.txt --config config.toml
    A service: flywheel-bootstrap --runs /var/lib/flywheel/inbox --watch --config config.toml
    Try it:    flywheel-bootstrap demo
    """
    if ctx.invoked_subcommand is not None:
        given = [f"--{name.replace('_', '-')}" for name in ctx.params
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"{', '.join(given)} cannot be given before `{ctx.invoked_subcommand}`: "
                                   f"they apply to a run; see `flywheel-bootstrap {ctx.invoked_subcommand} --help`")
        return
    if not any(ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE for name in ctx.params) \
            and run_id is None and runs_file is None:
        click.echo(ctx.get_help())
        ctx.exit(EXIT_OK)
    config = config or default_config()
    timing = Timing.from_env(heartbeat_interval=heartbeat_interval, codex_timeout=codex_timeout)
    if runs_file is not None:
        if ctx.get_parameter_source("run_id") == click.core.ParameterSource.COMMANDLINE or \
                ctx.get_parameter_source("token") == click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError("--runs cannot be combined with --run-id/--token (put them in the runs file)")
        if follow:
            raise click.UsageError("--follow is for one run; with --runs, use `flywheel-bootstrap logs RUN_ID -f`")
        # The runs' default backend: a malformed one must stop the pool before
        # Codex is provisioned or any server is reached.
        validate_server_url(server)
        if watch:
            if shard is not None:
                raise click.UsageError("--shard shares one runs file; it does not apply to --watch")
            from supervisor.pool.main import run_watch

            ctx.exit(run_watch(runs_file, config, server, max_parallel, gpus_per_run, heartbeat_interval,
                               codex_timeout))
        if Path(runs_file).expanduser().is_dir():
            raise click.UsageError(f"--runs {runs_file} is a folder: add --watch to take the runs files "
                                   "dropped into it, or name a runs file")
        from supervisor.pool.main import run_many

        ctx.exit(run_many(runs_file, config, server, max_parallel, gpus_per_run, heartbeat_interval,
                          codex_timeout, shard=shard, as_json=as_json))
    if watch:
        raise click.UsageError("--watch needs --runs DIR (the folder runs files are dropped into)")
    missing = [name for name, value in (("--run-id (or FLYWHEEL_RUN_ID)", run_id),
                                        ("--token (or FLYWHEEL_RUN_TOKEN)", token),
                                        ("--config (or ~/.codex/config.toml)", config)) if not value]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)}")
    if max_parallel is not None or gpus_per_run is not None or shard is not None or as_json:
        raise click.UsageError("--max-parallel, --gpus-per-run, --shard and --json only apply with --runs")
    ctx.exit(run_single(run_id, token, config, server, timing, follow))  # type: ignore[arg-type]


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port, printed at start).")
@click.option("--db", type=click.Path(path_type=Path), help="SQLite file [default: ~/.flywheel/backend.sqlite3].")
def serve(host: str, port: int, db: Path | None) -> None:
    """Start a local Flywheel backend (for trying the tool and for tests)."""
    from supervisor.local_backend import serve as serve_forever

    if not host.strip():
        # The socket layer reads "" as every interface: never by accident.
        raise click.BadParameter("is empty: 127.0.0.1 for this machine only, 0.0.0.0 for every interface",
                                 param_hint="--host")
    serve_forever(host, port, db or flywheel_home() / "backend.sqlite3", echo=lambda line: click.echo(line))


@cli.command()
@click.option("--folder", type=click.Path(path_type=Path), help="Where the demo keeps its files "
              "[default: ~/.flywheel/demo].")
@click.option("--count", "count", default=3, show_default=True, type=click.IntRange(1, 64),
              help="How many mock runs to start.")
@click.option("--runs", "old_count", type=click.IntRange(1, 64), hidden=True)
@click.option("--take-over", is_flag=True, help="Take the first run over, send its agent an input, hand it back.")
@click.pass_context
def demo(ctx: click.Context, folder: Path | None, count: int, old_count: int | None, take_over: bool) -> None:
    """Start the local backend, run a few mock runs in parallel, show the result."""
    from supervisor.demo import run_demo

    if old_count is not None:
        say("note: `demo --runs N` is now `demo --count N` (--runs FILE is the top-level runs file)")
        count = old_count
    ctx.exit(run_demo(folder or flywheel_home() / "demo", count, echo=lambda line: click.echo(line),
                      take_over=take_over))


@cli.command()
@click.argument("run_id")
@click.argument("action", type=click.Choice(["take-over", "send", "resume-autonomous"]))
@click.argument("text", required=False)
@click.option("--server", envvar="FLYWHEEL_SERVER", default=DEFAULT_SERVER, show_default=True,
              help="The local backend's URL (env FLYWHEEL_SERVER).")
@click.option("--wait", default="120s", show_default=True, type=DURATION,
              help="How long to wait for the run's acknowledgement (30s, 5m; bare = seconds).")
@click.pass_context
def control(ctx: click.Context, run_id: str, action: str, text: str | None, server: str, wait: float) -> None:
    """Take over a run, talk to its agent, hand it back (local backend).

    \b
    flywheel-bootstrap control RUN_ID take-over
    flywheel-bootstrap control RUN_ID send "try a smaller learning rate"
    flywheel-bootstrap control RUN_ID resume-autonomous
    """
    from supervisor.control_cli import send_control
    from supervisor.workspace import validate_run_id

    validate_run_id(run_id)
    if (action == "send") != (text is not None):
        raise click.UsageError("`send` needs the TEXT to send" if action == "send"
                               else f"`{action}` takes no TEXT")
    if text is not None and not text.strip():
        raise click.UsageError("TEXT is empty")
    ctx.exit(send_control(server, run_id, action, text, wait, echo=lambda line: click.echo(line)))


@cli.command()
@click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=True), help=CONFIG_HELP)
@click.option("--server", envvar="FLYWHEEL_SERVER", default=DEFAULT_SERVER, show_default=True,
              help="Flywheel backend base URL (env FLYWHEEL_SERVER).")
@click.option("--run-id", envvar="FLYWHEEL_RUN_ID",
              help="Also check this run's token (env FLYWHEEL_RUN_TOKEN) without claiming the run.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of lines.")
@click.pass_context
def doctor(ctx: click.Context, config: Path | None, server: str, run_id: str | None, as_json: bool) -> None:
    """Check that this machine is ready: config, Codex, sandbox, GPUs, state folder, backend, token."""
    from supervisor import doctor as dr

    given = dr.DoctorInput(config=config or default_config(), server=server, run_id=run_id,
                           token=os.environ.get("FLYWHEEL_RUN_TOKEN"), home=flywheel_home(), env=os.environ)
    checks = dr.run_checks(given, on_check=None if as_json else lambda c: click.echo(dr.render(c)))
    if as_json:
        click.echo(dr.as_json(checks))
    ctx.exit(EXIT_OK if dr.passed(checks) else EXIT_RUN_ERROR)


@cli.command()
@click.argument("run_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new entries while the run goes.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines: each entry as shipped, plus \"shipped\".")
@click.option("--while-stdin-open", is_flag=True, hidden=True)  # `--follow` on a run: stop when it ends
@click.pass_context
def logs(ctx: click.Context, run_id: str, follow: bool, as_json: bool, while_stdin_open: bool) -> None:
    """What RUN_ID shipped to the backend and what still waits, in order (⧗ = waiting)."""
    from supervisor.logs_view import show
    from supervisor.workspace import validate_run_id

    validate_run_id(run_id)
    state_dir = flywheel_home() / "state" / run_id
    if not state_dir.is_dir():
        raise click.UsageError(f"no run {run_id} on this machine: {state_dir} does not exist "
                               "(logs reads the state folder of runs started here; set FLYWHEEL_HOME if they "
                               "ran under another)")
    try:
        count = show(state_dir, click.echo, as_json=as_json, follow=follow,
                     still_follow=_stdin_open if while_stdin_open else None)
    except KeyboardInterrupt:
        ctx.exit(EXIT_OK)
    if not count and not as_json:
        click.echo(f"-- run {run_id} has no log entries yet ({state_dir})")
    ctx.exit(EXIT_OK)


@cli.command()
@click.option("--older-than", type=AGE, default="7d", show_default=True,
              help="Only runs whose state folder has not changed for this long (30m, 12h, 7d).")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
def prune(older_than: float, dry_run: bool) -> None:
    """Remove the state folders (and default workspaces) of runs that ended."""
    from supervisor.durations import format_duration
    from supervisor.pool.status_view import format_elapsed
    from supervisor.prune import find_prunable, remove

    home = flywheel_home()
    freed = 0
    problems = []
    found = find_prunable(home, older_than)
    if not dry_run and any(item.left_running for item in found):
        from workers.run_processes import sweep_left_processes

        # As the next start would: their record is the only way to find them.
        sweep_left_processes(home / "state", say)
    for item in found:
        what = " and ".join(str(f) for f in item.folders)
        if dry_run:
            first = "end the processes its killed bootstrap left running, then " if item.left_running else ""
            click.echo(f"would {first}remove run {item.run_id}: {what} ({item.size / 1024**2:.1f} MiB, idle "
                       f"{format_elapsed(item.idle_s)})")
            continue
        problem = remove(item)
        if problem:
            problems.append(problem)
            say(f"error: could not remove run {item.run_id}: {problem}")
            continue
        freed += item.size
        click.echo(f"removed run {item.run_id}: {what}")
    verb = "would free" if dry_run else "freed"
    click.echo(f"{len(found) - len(problems)} run(s) older than {format_duration(older_than)} in {home / 'state'}; "
               f"{verb} {(sum(i.size for i in found) if dry_run else freed) / 1024**2:.1f} MiB")
    if problems:
        sys.exit(EXIT_RUN_ERROR)


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script, e.g. `eval "$(flywheel-bootstrap completion bash)"`."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "flywheel-bootstrap", "_FLYWHEEL_BOOTSTRAP_COMPLETE").source())


def _stdin_open() -> bool:
    import select

    readable, _, _ = select.select([sys.stdin], [], [], 0)
    return not readable  # readable with nothing to read: closed


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code: Any = cli.main(args=argv, prog_name="flywheel-bootstrap", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code if exc.exit_code else EXIT_USAGE
    except click.exceptions.Abort:
        code = EXIT_SIGINT
    except KeyboardInterrupt:
        say("interrupted")
        code = EXIT_SIGINT
    except BootstrapError as exc:
        # A --server URL's password must not reach a terminal or a log.
        say(f"error: {mask_url_userinfo(exc.message)}")
        code = exc.exit_code
    sys.exit(code if isinstance(code, int) else 0)

