"""One run under supervision: the flow from a fetched payload to the terminal
report (SPEC sections 8, 9, 11, 13).

The supervisor itself stays single-threaded and never blocks on the backend: it
waits on Codex's pidfd, its workers' queues and sentinels, and the signal pipe,
and all the talking to the backend is done by workers (except the final report,
which is sent only once everything before it has been delivered).
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import multiprocess  # type: ignore[import-untyped]
import orjson

from supervisor import git_persist
from supervisor.arbiter import Arbiter, WorkerGaveUp, WorkerSpec
from workers.common.backend_client import Backend
from supervisor.codex_process import CodexProcess, exec_argv, resume_argv, stderr_tail
from workers.common.errors import EXIT_OK, EXIT_RUN_ERROR
from supervisor.outcome import Action, CodexEnd, Decision, decide
from supervisor.preflight import Prepared, codex_env, payload_secrets
from supervisor.prompt import build_fix_prompt, build_prompt
from supervisor.signals import Interrupts
from workers import artifact_watcher, heartbeat, log_shipper
from workers.artifacts import artifact_files, read_manifest
from workers.log_entries import thread_id_of
from workers.messages import ArtifactsPosted, Drain, Drained, Event, Phase, PostArtifacts, unexpected
from workers.common.names import MANIFEST_NAME, PROMPT_NAME
from workers.common.redact import Redactor
from workers.common.spool import BOOTSTRAP_LOG, CODEX_ERR, CODEX_OUT, EntryLog, LineTail, terminate_last_line
from workers.run_processes import RunProcesses, Usage, open_run

AnswerT = TypeVar("AnswerT", ArtifactsPosted, Drained)

SHIPPER, HEARTBEAT, WATCHER = "log-shipper", "heartbeat", "artifact-watcher"


class Cancelled(Exception):
    """SIGINT/SIGTERM arrived; the run is to be reported as cancelled."""


def codex_events(path: Path, start: int) -> Iterator[dict[str, Any]]:
    """The JSON events Codex printed since `start`, in order."""
    tail = LineTail(path, start)
    try:
        while lines := tail.read(max_bytes=4 * 1024 * 1024):
            for line in lines:
                try:
                    event = orjson.loads(line.data)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(event, dict):
                    yield event
    finally:
        tail.close()


def find_thread_id(path: Path, start: int) -> str | None:
    """The session id Codex printed (its first event, normally) since `start`."""
    return next((found for event in codex_events(path, start) if (found := thread_id_of(event))), None)


def last_failure(path: Path, start: int) -> str | None:
    """Why Codex failed, in its own words. With --json it says so only on
    stdout (`turn.failed`, else a top-level `error`); its stderr is empty."""
    failed = error = None
    for event in codex_events(path, start):
        kind = event.get("type")
        if kind == "turn.failed" and isinstance(event.get("error"), dict):
            failed = event["error"].get("message") or failed
        elif kind == "error" and isinstance(event.get("message"), str):
            error = event["message"]
    found = failed or error
    return found.strip()[:1000] if isinstance(found, str) and found.strip() else None


# Codex prints this under the system temp folder; it says nothing about a failure.
_HARMLESS_STDERR = ("WARNING: proceeding, even though we could not",)


def failure_detail(stderr: str, failure: str | None) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith(_HARMLESS_STDERR)]
    return "\n".join(part for part in (failure, "\n".join(lines).strip()) if part)


def last_agent_message(path: Path, limit: int = 500) -> str | None:
    """The last thing the agent said, for the run's summary. Only the file's
    tail is read: the message is normally among the last few lines."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - 256 * 1024))
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        if b'"agent_message"' not in line:
            continue
        try:
            item = orjson.loads(line).get("item") or {}
        except (orjson.JSONDecodeError, AttributeError):
            continue
        text = item.get("text") if isinstance(item, dict) else None
        if isinstance(text, str) and text.strip():
            text = " ".join(text.split())
            return text if len(text) <= limit else text[: limit - 1] + "…"
    return None


class RunSupervisor:
    def __init__(self, prep: Prepared, payload: dict[str, Any], echo: Callable[[str], None]) -> None:
        self.prep = prep
        self.payload = payload
        self.echo = echo
        s = prep.settings
        self.timing = s.timing
        self.secrets = payload_secrets(s.token, payload)
        self.redactor = Redactor(self.secrets)
        self.state = prep.state_dir
        self.log = EntryLog(self.state, self.redactor)
        self.interrupts = Interrupts()
        self.mp = multiprocess.get_context("fork")
        self.procs: RunProcesses | None = None
        self.usage = Usage()
        self.env = codex_env(prep, payload)
        self.repo: git_persist.RepoContext | None = None
        self.posted = 0
        # Worker answers not yet taken by `wait_for`, by (type, job).
        self.answers: dict[tuple[type[Event], str], Event] = {}

    # -- workers ---------------------------------------------------------------

    def _specs(self) -> list[WorkerSpec]:
        p, s = self.prep, self.prep.settings
        link = (p.server, s.run_id, s.token)
        batch = self.payload.get("log_batch") is True
        return [
            WorkerSpec(HEARTBEAT, heartbeat.main, (heartbeat.HeartbeatConfig(
                self.state, *link, timing=self.timing),)),
            WorkerSpec(SHIPPER, log_shipper.main, (log_shipper.ShipperConfig(
                self.state, *link, secrets=self.secrets, log_batch=batch, timing=self.timing),)),
            WorkerSpec(WATCHER, artifact_watcher.main, (artifact_watcher.WatcherConfig(
                self.state, p.workspace, *link, secrets=self.secrets, blob_threshold=p.blob_threshold,
                timing=self.timing),)),
        ]

    def _poll(self, timeout: float, *extra: Any) -> None:
        """Supervise the workers for up to `timeout`, waking early for a signal
        or for one of `extra` (Codex's pidfd); every event that arrived goes to
        `_on_event`."""
        for worker, event in self.arbiter.poll(timeout, [self.interrupts, *extra]):
            self._on_event(worker, event)
        self.interrupts.drain()  # `received` keeps the record; the pipe only wakes us

    def _on_event(self, worker: str, event: Event) -> None:
        """Every event a worker sends arrives here, once, and is kept until
        whoever waits for it takes it."""
        match event:
            case ArtifactsPosted() | Drained():
                self.answers[(type(event), event.job)] = event
            case _:
                unexpected(event, "the supervisor")

    def _notify(self, line: str) -> None:
        self.echo(f"run {self.prep.settings.run_id}: {line}")
        self.log.write("warning", line, "warning")

    def wait_for(self, worker: str, kind: type[AnswerT], job: str, deadline: float | None) -> AnswerT | None:
        """Supervise until `worker` answers `job` with a `kind` event, or the deadline."""
        while deadline is None or time.monotonic() < deadline:
            answer = self.answers.pop((kind, job), None)
            if answer is not None:
                assert isinstance(answer, kind)
                return answer
            if self.arbiter.gave_up(worker):
                return None
            timeout = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            self._poll(timeout)
            if self.interrupts.received and deadline is None and (kind, job) not in self.answers:
                raise Cancelled()
        return None

    # -- codex -----------------------------------------------------------------

    def run_codex(self, argv: list[str], stdin: Path | None) -> tuple[CodexEnd, int]:
        """Start Codex, supervise until it ends; returns how it ended and the
        codex.out offset where its output starts."""
        out = self.state / CODEX_OUT
        start = out.stat().st_size if out.exists() else 0
        self.log.write("info", "codex exec launched", "command_started", argv=argv[len(self.prep.codex.argv_prefix):-1])
        assert self.procs is not None
        proc = CodexProcess(argv, procs=self.procs, cwd=self.prep.workspace, env=self.env, stdin=stdin,
                            stdout=out, stderr=self.state / CODEX_ERR)
        if not self.procs.holds(proc.popen.pid):
            self._notify(f"codex could not be placed in {self.procs.cgroup}; only its environment marker "
                         "identifies the processes it starts")
        started = time.time()
        self.arbiter.send(HEARTBEAT, Phase("codex running", started), sticky=True)
        limit = self.timing.codex_timeout
        deadline = proc.started + limit if limit else None
        end: CodexEnd | None = None
        try:
            while end is None:
                timeout = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
                self._poll(timeout, *proc.waitables())
                if self.arbiter.failures:
                    raise self.arbiter.failures[0]
                if proc.returncode is not None:
                    end = CodexEnd(proc.returncode)
                elif self.interrupts.received:
                    self.echo(f"run {self.prep.settings.run_id}: {self.interrupts.name} received, stopping codex")
                    end = CodexEnd(self._stop(proc), cancelled_by=self.interrupts.name)
                elif deadline is not None and time.monotonic() >= deadline:
                    end = CodexEnd(self._stop(proc), timed_out_after=limit)
        finally:
            if end is None:  # a worker gave up: nothing will watch Codex any more
                proc.terminate(self.timing.kill_grace)
            # Whatever Codex left running (a setsid daemon, a `nohup … &` job)
            # must not outlive it, let alone keep holding a GPU.
            self._end_processes(proc)
            proc.close()
        terminate_last_line(out)
        code = end.returncode
        how = f"code {code}" if code >= 0 else f"signal {-code}"
        self.log.write("info" if code == 0 else "error", f"codex exec exited with {how}", "command_finished",
                       exit_code=code, duration_s=round(time.time() - started, 3))
        self.arbiter.send(HEARTBEAT, Phase("codex exited, reporting"), sticky=True)
        return end, start

    def _stop(self, proc: CodexProcess) -> int:
        """SIGTERM to Codex's group, SIGKILL to every process of the run after
        the grace period — sooner if a second signal arrives."""
        proc.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + self.timing.kill_grace
        seen = len(self.interrupts.received)
        while proc.returncode is None and time.monotonic() < deadline:
            self._poll(min(0.5, deadline - time.monotonic()), *proc.waitables())
            if len(self.interrupts.received) > seen:
                break
        assert self.procs is not None
        self.procs.kill_all()
        return proc.popen.wait()

    def _end_processes(self, proc: CodexProcess) -> None:
        """Kill and await every process of the run (bounded)."""
        assert self.procs is not None
        self.procs.kill_all()
        proc.popen.wait()
        if not self.procs.wait_empty(self.timing.kill_grace):
            self._notify(f"some processes of the run are still alive after SIGKILL: {self.procs.members()[:10]}")

    def _open_processes(self) -> None:
        """The run's containment, said once (stderr and a log entry), and kept
        in the state folder for the pool and for a later bootstrap's sweep."""
        self.procs = open_run(self.prep.settings.run_id, self.prep.env)
        self.procs.save(self.state)
        line = self.procs.describe()
        self.echo(f"run {self.prep.settings.run_id}: {line}")
        self.log.write("info" if self.procs.cgroup is not None else "warning", line,
                       "codex_event" if self.procs.cgroup is not None else "warning")

    def _close_processes(self) -> None:
        """The end of the run's processes: none may outlive the run."""
        assert self.procs is not None
        usage = self.procs.end(self.state, self.timing.kill_grace)
        if usage is None:
            self._notify(f"some processes of the run are still alive after SIGKILL: {self.procs.members()[:10]}")
        else:
            self.usage = usage

    # -- the flow --------------------------------------------------------------

    def run(self) -> int:
        s = self.prep.settings
        for sig_file in (CODEX_OUT, BOOTSTRAP_LOG):
            terminate_last_line(self.state / sig_file)  # torn lines of a crashed earlier start
        self.interrupts.install()
        self._open_processes()
        assert self.procs is not None
        self.arbiter = Arbiter(self.mp, self._specs(), self.timing, self.state, self.procs, self._notify)
        self.arbiter.start()
        try:
            decision = self._work()
            if self.arbiter.failures:
                raise self.arbiter.failures[0]
        except WorkerGaveUp as exc:
            decision = Decision(Action.ERROR, False, f"bootstrap failed: {exc}")
            self.echo(f"run {s.run_id}: {exc}")
        except Cancelled:
            decision = self._cancelled()
        try:
            return self._finish(decision)
        finally:
            self.arbiter.stop(timeout=5.0)
            self.procs.end(self.state, self.timing.kill_grace)  # done already, unless _finish failed early
            self.interrupts.restore()

    def _work(self) -> Decision:
        p = self.prep
        for note in p.notes:
            self.log.write("warning", note, "warning")
        self._prepare_repo()
        prompt = build_prompt(self.payload["prompt"], p.config.instructions)
        prompt_file = p.workspace / PROMPT_NAME
        prompt_file.write_text(prompt, encoding="utf-8")
        if self.interrupts.received:
            raise Cancelled()
        self.echo(f"run {p.settings.run_id}: codex running in {p.workspace}")
        end, start = self.run_codex(exec_argv(p.codex.argv_prefix, p.workspace, p.sandbox), prompt_file)
        manifest = read_manifest(p.workspace / MANIFEST_NAME)
        has = manifest.status == "ok" and bool(manifest.artifacts)
        thread_id = find_thread_id(self.state / CODEX_OUT, start) if end.returncode == 0 else None
        tail = ""
        if end.returncode > 0:
            tail = failure_detail(stderr_tail(self.state / CODEX_ERR), last_failure(self.state / CODEX_OUT, start))
        decision = decide(end, has_artifacts=has, resumed=False, thread_id_known=bool(thread_id),
                          stderr_tail=self.redactor.text(tail))
        if decision.action is Action.RESUME and thread_id:
            fix = build_fix_prompt(manifest.status, manifest.error, manifest.head)
            self.log.write("info", f"no artifacts in {MANIFEST_NAME} ({manifest.status}); resuming codex session "
                           f"{thread_id} once to write them", "codex_event")
            resumed, _ = self.run_codex(resume_argv(p.codex.argv_prefix, p.workspace, p.sandbox, thread_id, fix),
                                        None)
            if resumed.cancelled_by or resumed.timed_out_after is not None:
                end = resumed
            manifest = read_manifest(p.workspace / MANIFEST_NAME)
            has = manifest.status == "ok" and bool(manifest.artifacts)
            decision = decide(end, has_artifacts=has, resumed=True, thread_id_known=True,
                              resume_returncode=resumed.returncode)
        if decision.post_artifacts and has:
            self._post_artifacts()
        self._persist_code(manifest.artifacts, failed=decision.action is Action.ERROR)
        if decision.warning:
            self.log.write("warning", decision.warning, "warning")
        return decision

    def _post_artifacts(self) -> None:
        job = f"artifacts-{time.time_ns()}"  # a restarted run posts its artifacts again
        self.arbiter.send(WATCHER, PostArtifacts(job), sticky=True)
        deadline = time.monotonic() + self.timing.flush_timeout if self.interrupts.received else None
        try:
            done = self.wait_for(WATCHER, ArtifactsPosted, job, deadline)
        except Cancelled:
            done = self.wait_for(WATCHER, ArtifactsPosted, job, time.monotonic() + self.timing.flush_timeout)
        if done:
            self.posted = done.posted
            self.echo(f"run {self.prep.settings.run_id}: {done.posted} artifact(s) posted"
                      + (f", {done.skipped} skipped" if done.skipped else ""))

    def _prepare_repo(self) -> None:
        ctx, notes = git_persist.plan_persistence(self.payload)
        self._write_notes(notes)
        if ctx is None:
            return
        notes = git_persist.prepare_repo(ctx, str(self.payload["github_token"]), self.prep.workspace, self.state)
        self._write_notes(notes)
        self.repo = ctx

    def _persist_code(self, artifacts: Any, failed: bool) -> None:
        if self.repo is None:
            return
        backend = Backend(self.prep.server, self.prep.settings.run_id, self.prep.settings.token, self.timing)

        def refresh() -> str | None:
            answer = backend.post("/github-token", {}, keep_trying=lambda: False)
            if answer.ok:
                token = answer.json().get("token")
                return token if isinstance(token, str) and token else None
            return None

        with backend:
            notes = git_persist.persist(
                self.repo, self.prep.workspace, self.state, self.prep.settings.run_id, failed=failed,
                exclude=artifact_files(artifacts, self.prep.workspace), refresh_token=refresh,
                # A cancelled run still gets its WIP pushed, but within the flush bound.
                timeout=self.timing.flush_timeout if self.interrupts.received else git_persist.NET_TIMEOUT,
                max_file_bytes=self.prep.git_max_file_bytes,
            )
        self._write_notes(notes)

    def _write_notes(self, notes: Any) -> None:
        for note in notes:
            self.log.write(note.level, note.message, "warning" if note.level != "info" else "codex_event")

    def _cancelled(self) -> Decision:
        return Decision(Action.ERROR, False, f"cancelled ({self.interrupts.name})")

    def _finish(self, decision: Decision) -> int:
        """Deliver every entry, then the terminal report, then stop heartbeats."""
        s = self.prep.settings
        self._close_processes()
        cancelled = bool(self.interrupts.received)
        if cancelled and (decision.action is not Action.ERROR or decision.codex_signalled):
            decision = self._cancelled()
        if decision.action is Action.ERROR:
            self.log.write("error", f"run failed: {decision.reason}", "error")
        else:
            self.log.write("info", "run complete", "codex_event")
        bounded = lambda: time.monotonic() + self.timing.flush_timeout  # noqa: E731
        deadline = bounded() if cancelled else None
        self.arbiter.send(SHIPPER, Drain("final"), sticky=True)
        try:
            drained = self.wait_for(SHIPPER, Drained, "final", deadline)
        except Cancelled:
            if decision.action is not Action.ERROR:
                decision = self._cancelled()
            deadline = bounded()
            drained = None
        if drained is None:
            self.echo(f"run {s.run_id}: not every log entry could be delivered; they stay spooled in {self.state}")
        said = last_agent_message(self.state / CODEX_OUT)
        used = f"its processes used {self.usage.describe()}"
        if decision.action is Action.COMPLETE:
            summary = f"Codex completed with {self.posted} artifact(s); {used}" + (f": {said}" if said else "")
            path, body = "/complete", {"summary": self.redactor.text(summary)}
        else:
            reason = self.redactor.text(decision.reason)
            path, body = "/error", {"summary": f"Run failed: {reason.splitlines()[0]} ({used})", "reason": reason}
        def keep_trying() -> bool:
            nonlocal deadline
            if deadline is None and self.interrupts.received:
                deadline = bounded()  # interrupted while the backend is down: try a while longer
            return deadline is None or time.monotonic() < deadline

        def sleep(seconds: float) -> bool:
            # Keep supervising (and hear a Ctrl-C) between tries.
            self._poll(seconds)
            return False

        with Backend(self.prep.server, s.run_id, s.token, self.timing) as backend:
            answer = backend.post(path, body, keep_trying=keep_trying, sleep=sleep)
        if not answer.ok:
            self.echo(f"run {s.run_id}: could not deliver the {path[1:]} report (HTTP {answer.status or 'no answer'})")
        self.arbiter.stop([HEARTBEAT], timeout=2.0)
        if cancelled or self.interrupts.received:
            self.echo(f"run {s.run_id}: cancelled")
            return self.interrupts.exit_code
        if decision.action is Action.COMPLETE:
            self.echo(f"run {s.run_id}: complete ({self.usage.describe()})")
            return EXIT_OK
        self.echo(f"run {s.run_id}: error: {self.redactor.text(decision.reason).splitlines()[0]}")
        return EXIT_RUN_ERROR


def supervise(prep: Prepared, payload: dict[str, Any], echo: Callable[[str], None] | None = None) -> int:
    say = echo or (lambda line: print(f"flywheel-bootstrap: {line}", file=sys.stderr, flush=True))
    return RunSupervisor(prep, payload, say).run()

