"""One run under supervision: the flow from a fetched payload to the terminal
report (docs/design.md).

The run goes through named phases (`RunSupervisor.run`): start the run's
processes and workers, prepare the workspace, run Codex (and resume it once if
it wrote no artifacts), post the artifacts, persist the code, then finish:
deliver every log entry and send the one terminal report. Whatever fails on
the way (a worker that keeps dying, an interrupt, a bug, a full disk, a failed
fork) becomes the reported reason; only when even the report cannot be sent
does the supervisor exit with EXIT_UNREPORTED, for the pool to report the run.

The supervisor itself stays single-threaded and never blocks on the backend: it
waits on Codex's pidfd, its workers' queues and sentinels, and the signal pipe,
and all the talking to the backend is done by workers (except the final report,
which is sent only once everything before it has been delivered).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import multiprocess  # type: ignore[import-untyped]

from supervisor import git_persist, run_status
from supervisor.arbiter import Arbiter, WorkerGaveUp, WorkerSpec
from supervisor.codex_output import failure_detail, find_thread_id, last_agent_message, last_failure
from supervisor.codex_process import CodexProcess, exec_argv, resume_argv, stderr_tail
from supervisor.control_decision import AUTONOMOUS_PROMPT, Ack, Step
from supervisor.crash import crash_reason, fault_point, write_crash_file
from supervisor.link_status import LinkWatch, link_of
from supervisor.outcome import Action, CodexEnd, Decision, decide
from supervisor.preflight import Prepared, codex_env, payload_secrets
from supervisor.prompt import build_fix_prompt, build_prompt
from supervisor.report import WORK_SHARE, FlushDeadline, Report, report_for
from supervisor.run_control import RunControl
from supervisor.signals import Aborted, Interrupts
from workers import heartbeat
from workers.artifacts import ManifestRead, artifact_files, read_manifest
from workers.common.backend_client import Answer, Backend
from workers.common.errors import EXIT_OK, EXIT_RUN_ERROR, EXIT_UNREPORTED
from workers.common.files import replace_file
from workers.common.names import MANIFEST_NAME, PROMPT_NAME
from workers.common.redact import Redactor
from workers.common.spool import (
    BOOTSTRAP_LOG,
    CODEX_ERR,
    CODEX_OUT,
    EntryLog,
    ShipperState,
    disk_full_reason,
    forget_outage,
    give_back,
    is_disk_full,
    set_aside,
    terminate_last_line,
)
from workers.messages import (
    ArtifactsPosted,
    ControlAck,
    ControlCommand,
    ControlLive,
    ControlWarning,
    Drain,
    Drained,
    Event,
    Phase,
    PostArtifacts,
    RunCannotGoOn,
    unexpected,
)
from workers.run_processes import OpeningRun, RunProcesses, Usage, begin_run

AnswerT = TypeVar("AnswerT", ArtifactsPosted, Drained)

SHIPPER, HEARTBEAT, WATCHER, CONTROL = "log-shipper", "heartbeat", "artifact-watcher", "control"


class Cancelled(Exception):
    """SIGINT/SIGTERM/SIGHUP/SIGQUIT arrived; the run is to be reported as cancelled."""


def has_artifacts(manifest: ManifestRead) -> bool:
    return manifest.status == "ok" and bool(manifest.artifacts)


class RunSupervisor:
    """One claimed run, from its payload to its terminal report (see `run`)."""

    def __init__(self, prep: Prepared, payload: dict[str, Any], echo: Callable[[str], None],
                 interrupts: Interrupts | None = None, opening: OpeningRun | None = None) -> None:
        self.prep = prep
        self.payload = payload
        self.echo = echo
        s = prep.settings
        self.timing = s.timing
        self.secrets = payload_secrets(s.token, payload)
        self.redactor = Redactor(self.secrets)
        self.state = prep.state_dir
        self.log = EntryLog(self.state, self.redactor, on_disk_full=self._disk_full)
        # Installed before the bootstrap fetch by the command line, so that a
        # signal arriving once the run is claimed is never lost.
        self.interrupts = interrupts or Interrupts()
        self._arbiter: Arbiter | None = None  # started by _start
        self.mp = multiprocess.get_context("fork")
        # The run's cgroup, begun by the command line right after the fetch (see
        # cli.run_single); finished by _open_processes.
        self._opening = opening
        self.procs: RunProcesses | None = None
        self.usage = Usage()
        self.env = codex_env(prep, payload)
        self.repo: git_persist.RepoContext | None = None
        self.posted = 0
        self.reported = False  # the terminal report was delivered
        # Worker answers not yet taken by `wait_for`, by (type, job).
        self.answers: dict[tuple[type[Event], str], Event] = {}
        self.control: RunControl | None = None  # made by _start, before the workers
        self.first_start: int | None = None  # codex.out offset of this start's first Codex
        self.thread_id: str | None = None
        # Why the run cannot go on, as a worker said (RunCannotGoOn): the
        # backend refused the token, or the state folder's disk is full.
        self.fatal: str | None = None
        self.link_watch = LinkWatch()
        self._link_looked = 0.0
        # After a signal, the one bound on everything the end still waits for.
        self.flush = FlushDeadline(self.interrupts, self.timing.flush_timeout)

    # -- workers ---------------------------------------------------------------

    @property
    def arbiter(self) -> Arbiter:
        assert self._arbiter is not None, "the workers are started by _start"
        return self._arbiter

    def _link(self) -> tuple[str, str, str]:
        s = self.prep.settings
        return self.prep.server, s.run_id, s.token

    def _start_workers(self) -> None:
        """The log-shipper, the artifact-watcher and the control worker, once:
        started (and imported) right after Codex, whose first line waits for
        nothing of theirs (its output is spooled to a file, and bootstrap's
        own entries carry where they go among Codex's lines). Only the
        heartbeat starts before Codex (`_start`)."""
        if SHIPPER in self.arbiter.slots:
            return
        from workers import artifact_watcher, control_poller, log_shipper

        p, link = self.prep, self._link()
        batch = self.payload.get("log_batch") is True
        self.arbiter.add([
            WorkerSpec(SHIPPER, log_shipper.main, (log_shipper.ShipperConfig(
                self.state, *link, secrets=self.secrets, log_batch=batch, timing=self.timing),)),
            WorkerSpec(WATCHER, artifact_watcher.main, (artifact_watcher.WatcherConfig(
                self.state, p.workspace, *link, secrets=self.secrets, blob_threshold=p.blob_threshold,
                timing=self.timing),)),
            WorkerSpec(CONTROL, control_poller.main, (control_poller.ControlConfig(*link, timing=self.timing),)),
        ])

    def _poll(self, timeout: float, *extra: Any) -> None:
        """Supervise the workers for up to `timeout`, waking early for a signal
        or for one of `extra` (Codex's pidfd); every event that arrived goes to
        `_on_event`."""
        for worker, event in self.arbiter.poll(timeout, [self.interrupts, *extra]):
            self._on_event(worker, event)
        self.interrupts.drain()  # `received` keeps the record; the pipe only wakes us
        self._look_at_link()

    def _on_event(self, worker: str, event: Event) -> None:
        """Every event a worker sends arrives here, once, and is kept until
        whoever waits for it takes it."""
        match event:
            case ArtifactsPosted() | Drained():
                self.answers[(type(event), event.job)] = event
            case ControlCommand():
                assert self.control is not None  # made before the workers
                self.control.receive(event.command_id, event.command, event.payload)
            case ControlWarning(text=text):
                self._notify(text)
            case RunCannotGoOn(reason=reason):
                if self.fatal is None:
                    self.fatal = reason
                    self.echo(f"run {self.prep.settings.run_id}: {reason}")
            case _:
                unexpected(event, "the supervisor")

    def _disk_full(self, exc: OSError) -> None:
        """The state folder's disk is full: the run cannot go on (Codex is
        stopped, the run reported `error`), and the room set aside at the
        start is given back for the run's last entries and its report."""
        if self.fatal is None:
            self.fatal = disk_full_reason(self.state, exc)
            self.echo(f"run {self.prep.settings.run_id}: {self.fatal}")

    def _check_disk(self) -> None:
        try:
            st = os.statvfs(self.state)
        except OSError:
            return
        full = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) == 0
        if full and self.fatal is None:
            self._disk_full(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    def _terminate_last_line(self, path: Path) -> None:
        try:
            terminate_last_line(path)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self._disk_full(exc)

    def _look_at_link(self) -> None:
        """One line when the backend stops answering the shipper, one when it is back."""
        now = time.monotonic()
        if now - self._link_looked < 1.0:
            return
        self._link_looked = now
        line = self.link_watch.look(link_of(ShipperState.load(self.state)), time.time())
        if line:
            self.echo(f"run {self.prep.settings.run_id}: {line}")

    def _notify(self, line: str) -> None:
        self.echo(f"run {self.prep.settings.run_id}: {line}")
        self.log.write("warning", line, "warning")

    def wait_for(self, worker: str, kind: type[AnswerT], job: str, deadline: float | None,
                 hopeless: Callable[[], bool] = lambda: False) -> AnswerT | None:
        """Supervise until `worker` answers `job` with a `kind` event, or the
        deadline, or until waiting longer is `hopeless()`."""
        while deadline is None or time.monotonic() < deadline:
            answer = self.answers.pop((kind, job), None)
            if answer is not None:
                assert isinstance(answer, kind)
                return answer
            if self.arbiter.gave_up(worker) or hopeless():
                return None
            timeout = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            self._poll(timeout)
            if self.interrupts.received and deadline is None and (kind, job) not in self.answers:
                raise Cancelled()
        return None

    # -- codex -----------------------------------------------------------------

    def run_codex(self, argv: list[str], stdin: Path | None, phase: str = "codex running",
                  after: str = "codex exited, reporting") -> tuple[CodexEnd, int]:
        """Start Codex, supervise until it ends (applying control commands on
        the way); returns how it ended and the codex.out offset where its
        output starts. `phase` and `after` are what the heartbeats say."""
        out = self.state / CODEX_OUT
        start = out.stat().st_size if out.exists() else 0
        if self.first_start is None:
            self.first_start = start
        self.log.write("info", "codex exec launched", "command_started", argv=argv[len(self.prep.codex.argv_prefix):-1])
        assert self.procs is not None
        proc = CodexProcess(argv, procs=self.procs, cwd=self.prep.workspace, env=self.env, stdin=stdin,
                            stdout=out, stderr=self.state / CODEX_ERR)
        self._start_workers()
        if not self.procs.holds(proc.popen.pid):
            self._notify(f"codex could not be placed in {self.procs.cgroup}; only its environment marker "
                         "identifies the processes it starts")
        started = time.time()
        self.arbiter.send(HEARTBEAT, Phase(phase, started), sticky=True)
        self.arbiter.send(CONTROL, ControlLive(), sticky=True)
        run_status.write(self.state, run_status.CODEX_RUNNING)
        limit = self.timing.codex_timeout
        deadline = proc.started + limit if limit else None
        end: CodexEnd | None = None
        try:
            while end is None:
                timeout = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
                self._poll(timeout, *proc.waitables())
                if self.arbiter.failures:
                    raise self.arbiter.failures[0]
                self._check_disk()  # Codex may fill it with nobody else writing
                self._take_commands(proc)
                if proc.returncode is not None:
                    end = CodexEnd(proc.returncode, cancelled_by=self._stopped_with_codex(proc.returncode))
                elif self.interrupts.received:
                    self.echo(f"run {self.prep.settings.run_id}: {self.interrupts.name} received, stopping codex")
                    end = CodexEnd(self._stop(proc), cancelled_by=self.interrupts.name)
                elif deadline is not None and time.monotonic() >= deadline:
                    end = CodexEnd(self._stop(proc), timed_out_after=limit)
                elif self.fatal is not None:
                    end = CodexEnd(self._stop(proc))
        finally:
            if end is None:  # a worker gave up: nothing will watch Codex any more
                proc.terminate(self.timing.kill_grace)
            if self._interactive():
                # Taken over, or a person's input: only Codex ends; what it
                # started runs on until the run ends (docs/control-channel.md).
                proc.signal_group(signal.SIGKILL)
                proc.popen.wait()
            else:
                # Whatever Codex left running (a setsid daemon, a `nohup … &`
                # job) must not outlive it, let alone keep holding a GPU.
                self._end_processes(proc)
            proc.close()
            self.flush.codex_stopped()
        self._check_disk()
        if self.fatal is not None:
            give_back(self.state)  # Codex and its processes are stopped: room for the end
        self._terminate_last_line(out)
        code = end.returncode
        how = f"code {code}" if code >= 0 else f"signal {-code}"
        self.log.write("info" if code == 0 else "error", f"codex exec exited with {how}", "command_finished",
                       exit_code=code, duration_s=round(time.time() - started, 3))
        self.arbiter.send(HEARTBEAT, Phase(after), sticky=True)
        return end, start

    def _stopped_with_codex(self, returncode: int) -> str | None:
        """The interrupt's name when Codex died of the signal that is stopping
        bootstrap too, else None. scancel and `systemctl stop` signal every
        process of the job one by one, so Codex may die before our own signal
        is here: after SIGTERM/SIGINT/SIGHUP/SIGQUIT to Codex, wait up to the
        kill grace for it, so the run is reported cancelled, not failed."""
        if -returncode in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
            deadline = time.monotonic() + self.timing.kill_grace
            while not self.interrupts.received and time.monotonic() < deadline:
                self._poll(min(0.5, deadline - time.monotonic()))
        return self.interrupts.name if returncode < 0 else None

    def _stop(self, proc: CodexProcess) -> int:
        """SIGTERM to Codex's group, SIGKILL to every process of the run after
        the grace period — sooner if a second signal arrives. In interactive
        mode (take_over) only Codex's group: the run goes on."""
        proc.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + self.timing.kill_grace
        seen = len(self.interrupts.received)
        while proc.returncode is None and time.monotonic() < deadline:
            self._poll(min(0.5, deadline - time.monotonic()), *proc.waitables())
            if len(self.interrupts.received) > seen:
                break
        assert self.procs is not None
        if self._interactive():
            proc.signal_group(signal.SIGKILL)
        else:
            self.procs.kill_all()
        return proc.popen.wait()

    def _end_processes(self, proc: CodexProcess) -> None:
        """Kill and await every process of the run (bounded)."""
        assert self.procs is not None
        self.procs.kill_all()
        proc.popen.wait()
        if not self.procs.wait_empty(self.timing.kill_grace):
            self._say_survivors()

    def _say_survivors(self) -> None:
        assert self.procs is not None
        self._notify(f"some processes of the run are still alive after SIGKILL: {self.procs.members()[:10]}")

    def _open_processes(self) -> None:
        """The run's containment, said once (stderr and a log entry), and kept
        in the state folder for the pool and for a later bootstrap's sweep."""
        opening, self._opening = self._opening or begin_run(self.prep.settings.run_id, self.prep.env), None
        self.procs = opening.finish()
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
            self._say_survivors()
        else:
            self.usage = usage

    # -- the flow --------------------------------------------------------------

    def run(self) -> int:
        """The run, phase by phase. The terminal report is guaranteed by this
        structure: whatever `_start` or `_work` raises becomes the reported
        reason; a start that failed before any worker existed, and a normal
        end (`_finish`) that fails, report directly."""
        try:
            decision = self._supervised_work()
            if self._arbiter is None:  # the start failed before any worker: no log-shipper to drain through
                decision = self._as_cancel(decision)
                return self._exit_status(decision) if self._report_directly(decision) else EXIT_UNREPORTED
            return self._finish(decision)
        except Exception as exc:  # noqa: BLE001 - any failure still ends with a report
            return self._report_crash(exc)
        finally:
            self._shut_down()

    def _supervised_work(self) -> Decision:
        """Start the run's processes and workers and do the work; how it ended
        (done, a worker given up on, an interrupt, a failure) is the decision."""
        try:
            self._start()
            decision = self._work()
            if self.arbiter.failures:
                raise self.arbiter.failures[0]
            return decision
        except WorkerGaveUp as exc:
            self.echo(f"run {self.prep.settings.run_id}: {exc}")
            return Decision(Action.ERROR, False, f"bootstrap failed: {exc}")
        except Cancelled:
            return self._cancelled()
        except Exception as exc:  # noqa: BLE001 - reported as the run's error, traceback kept
            return Decision(Action.ERROR, False, self._crashed(exc))

    def _start(self) -> None:
        for name in (CODEX_OUT, BOOTSTRAP_LOG):
            self._terminate_last_line(self.state / name)  # torn lines of a crashed earlier start
        set_aside(self.state)
        forget_outage(self.state)
        self.interrupts.install()
        fault_point("containment")
        self._open_processes()
        assert self.procs is not None
        self.control = RunControl(
            self.state, self._send_ack,
            lambda level, line: self.log.write(level, line, "codex_event" if level == "info" else "warning"))
        heartbeats = WorkerSpec(HEARTBEAT, heartbeat.main, (heartbeat.HeartbeatConfig(
            self.state, *self._link(), timing=self.timing),))
        self._arbiter = Arbiter(self.mp, [heartbeats], self.timing, self.state, self.procs, self._notify)
        self._arbiter.start()
        fault_point("start")

    def _work(self) -> Decision:
        for note in self.prep.notes:
            self.log.write("warning", note, "warning")
        self._prepare_repo()
        prompt_file = self._write_prompt()
        if self.interrupts.received:
            raise Cancelled()
        fault_point("work")
        decision, manifest = self._codex_phase(prompt_file)
        if decision.post_artifacts and has_artifacts(manifest):
            self._post_artifacts()
        self._persist_code(manifest.artifacts, failed=decision.action is Action.ERROR)
        if decision.warning:
            self.log.write("warning", decision.warning, "warning")
        return decision

    def _write_prompt(self) -> Path:
        p = self.prep
        prompt_file = p.workspace / PROMPT_NAME
        replace_file(prompt_file, build_prompt(self.payload["prompt"], p.config.instructions).encode("utf-8"))
        return prompt_file

    def _codex_phase(self, prompt_file: Path) -> tuple[Decision, ManifestRead]:
        """Run Codex; resume its session once if it exited 0 without artifacts.
        A person may take the run over meanwhile: then it is held (`_hold`)
        until they hand it back, and the autonomous resume that follows is
        decided like the first run (docs/control-channel.md)."""
        p = self.prep
        self.echo(f"run {p.settings.run_id}: codex running in {p.workspace}")
        start: int | None  # None: no Codex output to read back (see _hold)
        end, start = self.run_codex(exec_argv(p.codex.argv_prefix, p.workspace, p.sandbox), prompt_file)
        while True:
            if self._interactive():
                resumed = self._hold()
                end, start = resumed if resumed is not None else (CodexEnd(0), None)
            outcome = self._outcome(end, start)
            if outcome is not None:
                self._take_commands(None)  # one that came as Codex ended may still hold the run
                if not self._interactive():
                    self._stop_control()
                    return outcome

    def _outcome(self, end: CodexEnd, start: int | None) -> tuple[Decision, ManifestRead] | None:
        """Section 13 after an autonomous Codex ended; None when a person took
        the run over during the resume for a missing manifest."""
        p = self.prep
        manifest = read_manifest(p.workspace / MANIFEST_NAME)
        if self.fatal is not None:
            return Decision(Action.ERROR, False, self.fatal), manifest
        thread_id = find_thread_id(self.state / CODEX_OUT, start) if end.returncode == 0 and start is not None \
            else None
        tail = ""
        if end.returncode > 0 and start is not None:
            tail = failure_detail(stderr_tail(self.state / CODEX_ERR), last_failure(self.state / CODEX_OUT, start))
        decision = decide(end, has_artifacts=has_artifacts(manifest), resumed=False,
                          thread_id_known=bool(thread_id), stderr_tail=self.redactor.text(tail))
        if decision.action is Action.RESUME and thread_id:
            return self._resume(end, thread_id, manifest)
        return decision, manifest

    def _resume(self, end: CodexEnd, thread_id: str,
                manifest: ManifestRead) -> tuple[Decision, ManifestRead] | None:
        p = self.prep
        fix = build_fix_prompt(manifest.status, manifest.error, manifest.head)
        self.log.write("info", f"no artifacts in {MANIFEST_NAME} ({manifest.status}); resuming codex session "
                       f"{thread_id} once to write them", "codex_event")
        resumed, _ = self.run_codex(resume_argv(p.codex.argv_prefix, p.workspace, p.sandbox, thread_id, fix), None)
        if self._interactive():
            return None
        if resumed.cancelled_by or resumed.timed_out_after is not None:
            end = resumed
        manifest = read_manifest(p.workspace / MANIFEST_NAME)
        decision = decide(end, has_artifacts=has_artifacts(manifest), resumed=True, thread_id_known=True,
                          resume_returncode=resumed.returncode)
        return decision, manifest

    # -- control (docs/control-channel.md) -------------------------------------

    def _interactive(self) -> bool:
        return self.control is not None and self.control.interactive

    def _thread_known(self) -> bool:
        if self.thread_id is None and self.first_start is not None:
            self.thread_id = find_thread_id(self.state / CODEX_OUT, self.first_start)
        return self.thread_id is not None

    def _take_commands(self, proc: CodexProcess | None) -> None:
        """Apply the control commands that arrived; `proc` is the Codex running now."""
        if self.control is None or not self.control.inbox:
            return
        running = proc is not None and proc.returncode is None

        def stop_codex() -> None:
            if proc is not None and proc.returncode is None:
                self._stop(proc)

        self.control.take(running, self._thread_known, stop_codex)

    def _send_ack(self, command_id: str, ack: Ack) -> None:
        self.arbiter.send(CONTROL, ControlAck(command_id, ack.status.value, ack.detail), sticky=True)

    def _hold(self) -> tuple[CodexEnd, int] | None:
        """Interactive mode: the run is held (no report; heartbeats say so) and
        Codex runs only for a person's inputs, until resume_autonomous. Returns
        the autonomous resume's end and output offset, or None when there was
        no thread to resume (the run ends as it stands)."""
        control, p = self.control, self.prep
        assert control is not None
        self.echo(f"run {p.settings.run_id}: taken over by a person; interactive until handed back")
        waiting = "interactive: waiting for input"
        self.arbiter.send(HEARTBEAT, Phase(waiting), sticky=True)
        while True:
            if self.interrupts.received:
                raise Cancelled()
            self._take_commands(None)
            follow = control.next_follow_up()
            if follow is None:
                self._poll(1.0)
                if self.arbiter.failures:
                    raise self.arbiter.failures[0]
            elif follow.step is Step.RUN_INPUT and self.thread_id:
                control.input_started(follow.command_id)
                end, _ = self.run_codex(resume_argv(p.codex.argv_prefix, p.workspace, p.sandbox, self.thread_id,
                                                    follow.text), None,
                                        phase="interactive, input: codex running", after=waiting)
                control.input_ended(end)
            elif follow.step is Step.RESUME_AUTONOMOUS and self.thread_id:
                self.echo(f"run {p.settings.run_id}: handed back; codex resumes autonomously")
                return self.run_codex(resume_argv(p.codex.argv_prefix, p.workspace, p.sandbox, self.thread_id,
                                                  AUTONOMOUS_PROMPT), None)
            else:
                return None

    def _stop_control(self) -> None:
        """The run is ending: stop polling, once the acks on their way are delivered (bounded)."""
        self._stop_workers([CONTROL], min(5.0, self.timing.flush_timeout), self.flush.work_until)

    def _stop_workers(self, names: list[str] | None, timeout: float,
                      until: Callable[[], float | None] | None = None) -> None:
        """Stop workers, waiting up to `timeout` for them to finish what they
        do; after a signal no longer than the flush bound allows (`until`),
        even when the signal arrives during the wait."""
        self.arbiter.stop(names, timeout, until=until or (lambda: self.flush.at), wake=self.interrupts)

    def _post_artifacts(self) -> None:
        job = f"artifacts-{time.time_ns()}"  # a restarted run posts its artifacts again
        self.arbiter.send(WATCHER, PostArtifacts(job), sticky=True)
        # The watcher reports progress per artifact and per block sent, so it
        # is only replaced when it really stops; a job it keeps dying on (even
        # slowly, which the restart limit does not count) is given up.
        deaths = self.arbiter.deaths(WATCHER)

        def hopeless() -> bool:
            return self.arbiter.deaths(WATCHER) - deaths > self.timing.max_restarts

        try:
            done = self.wait_for(WATCHER, ArtifactsPosted, job, self.flush.work_until(), hopeless)
        except Cancelled:
            done = self.wait_for(WATCHER, ArtifactsPosted, job, self.flush.work_until(), hopeless)
        if done is None and hopeless():
            self._notify(f"artifacts not posted: the artifact-watcher died {self.timing.max_restarts + 1} times "
                         "while posting them")
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
        try:
            self._persist(artifacts, failed)
        except Aborted:
            self.log.write("warning", "code persistence stopped: interrupted, and the flush time is up", "warning")

    def _persist(self, artifacts: Any, failed: bool) -> None:
        assert self.repo is not None
        backend = Backend(self.prep.server, self.prep.settings.run_id, self.prep.settings.token, self.timing)

        def refresh() -> str | None:
            answer = backend.post("/github-token", {}, keep_trying=lambda: False)
            if answer.ok:
                token = answer.json().get("token")
                return token if isinstance(token, str) and token else None
            return None

        # A signal ends a git command within the flush bound's share for the
        # work (git does not watch our signal pipe).
        work_until = self.flush.work_until()
        with backend, self.interrupts.bounded(self.timing.flush_timeout * WORK_SHARE, work_until):
            notes = git_persist.persist(
                self.repo, self.prep.workspace, self.state, self.prep.settings.run_id, failed=failed,
                exclude=artifact_files(artifacts, self.prep.workspace), refresh_token=refresh,
                # A cancelled run still gets its WIP pushed, but within the flush bound.
                timeout=git_persist.NET_TIMEOUT if work_until is None else max(0.1, work_until - time.monotonic()),
                max_file_bytes=self.prep.git_max_file_bytes,
            )
        self._write_notes(notes)

    def _write_notes(self, notes: Iterable[git_persist.Note]) -> None:
        for note in notes:
            self.log.write(note.level, note.message, "warning" if note.level != "info" else "codex_event")

    def _cancelled(self) -> Decision:
        return Decision(Action.ERROR, False, f"cancelled ({self.interrupts.name})")

    # -- the end ---------------------------------------------------------------

    def _as_cancel(self, decision: Decision) -> Decision:
        """After an interrupt the run is cancelled, unless it had failed for a
        reason of its own (Codex killed by a signal is the same stop, not one)."""
        if self.interrupts.received and (decision.action is not Action.ERROR or decision.codex_signalled):
            return self._cancelled()
        return decision

    def _finish(self, decision: Decision) -> int:
        """Deliver every entry, then the terminal report, then stop heartbeats."""
        fault_point("finish")
        self._start_workers()  # when the run ends before Codex: the log still goes out
        self._stop_control()
        self._close_processes()
        if self.fatal is not None:
            give_back(self.state)
            if decision.action is Action.COMPLETE:
                decision = Decision(Action.ERROR, False, self.fatal)
        decision = self._as_cancel(decision)
        if decision.action is Action.ERROR:
            self.log.write("error", f"run failed: {decision.reason}", "error")
        else:
            self.log.write("info", "run complete", "codex_event")
        decision = self._drain(decision)
        report = report_for(decision, posted=self.posted, usage=self.usage.describe(),
                            said=last_agent_message(self.state / CODEX_OUT), redactor=self.redactor)
        self._deliver(report)
        self._stop_workers([HEARTBEAT], 2.0)
        return self._exit_status(decision)

    def _drain(self, decision: Decision) -> Decision:
        """Wait until the log-shipper delivered everything spooled; an
        interrupt meanwhile cancels the run and bounds the wait by the flush
        time (the spool still goes out, as far as it can in that time)."""
        self.arbiter.send(SHIPPER, Drain("final"), sticky=True)
        try:
            drained = self.wait_for(SHIPPER, Drained, "final", self.flush.at)
        except Cancelled:
            decision = self._as_cancel(decision)
            drained = self.wait_for(SHIPPER, Drained, "final", self.flush.at)
        if drained is None or drained.left:
            self.echo(f"run {self.prep.settings.run_id}: not every log entry could be delivered; "
                      f"they stay spooled in {self.state}")
        if self.fatal is not None and decision.action is Action.COMPLETE:
            decision = Decision(Action.ERROR, False, self.fatal)  # found while draining
        return decision

    def _deliver(self, report: Report) -> None:
        # For the pool's view: the outcome with the whole reason the backend gets.
        run_status.write(self.state, run_status.ENDED, codex_ran=(self.state / CODEX_OUT).exists(),
                         outcome="complete" if report.path == "/complete" else "error",
                         reason=report.body.get("reason") or report.body.get("summary", ""))

        def sleep(seconds: float) -> bool:
            # Keep supervising (and hear a Ctrl-C) between tries.
            self._poll(seconds)
            return False

        s = self.prep.settings
        with Backend(self.prep.server, s.run_id, s.token, self.timing) as backend:
            answer = backend.post(report.path, report.body, keep_trying=self.flush.keep_trying, sleep=sleep,
                                  attempt=lambda call: self._bounded_call(call, backend, self.flush.at))
        if answer.ok:
            self.reported = True
            return
        refused = f"could not deliver the {report.path[1:]} report (HTTP {answer.status or 'no answer'})"
        self.echo(f"run {s.run_id}: {refused}")
        # The pool shows this reason for the run it then reports itself.
        run_status.write(self.state, run_status.ENDED, codex_ran=(self.state / CODEX_OUT).exists(),
                         outcome="error", reason=f"bootstrap {refused}")

    def _bounded_call(self, call: Callable[[], Answer], backend: Backend, deadline: float | None) -> Answer:
        """One request of the supervisor's, under a total deadline (a backend
        that accepts and never answers cannot hold us), and ended within the
        flush bound by a signal."""
        per_request = time.monotonic() + self.timing.connect_timeout + self.timing.read_timeout
        try:
            with self.interrupts.bounded(self.timing.flush_timeout, min(per_request, deadline or per_request)):
                return call()
        except Aborted:
            backend.reset()  # the connection was left mid-request
            return Answer(0)

    def _exit_status(self, decision: Decision) -> int:
        run_id = self.prep.settings.run_id
        unreported = "" if self.reported else "; the run was not reported"
        if self.interrupts.received:
            # Whoever signalled asked bootstrap to stop, not to be asked to report.
            self.echo(f"run {run_id}: cancelled{unreported}")
            return self.interrupts.exit_code
        if not self.reported:
            # The backend keeps the run claimed until someone reports it.
            self.echo(f"run {run_id}: not reported (the backend did not take the report); exit "
                      f"{EXIT_UNREPORTED} asks whoever started bootstrap to report the run")
            return EXIT_UNREPORTED
        if decision.action is Action.COMPLETE:
            self.echo(f"run {run_id}: complete ({self.usage.describe()})")
            return EXIT_OK
        self.echo(f"run {run_id}: error: {self.redactor.text(decision.reason).splitlines()[0]}")
        return EXIT_RUN_ERROR

    # -- when bootstrap itself fails ---------------------------------------------

    def _crashed(self, exc: BaseException) -> str:
        """Keep the traceback in the crash file, say so; returns the reason to report."""
        reason = crash_reason(exc, self.redactor)
        where = write_crash_file(self.state, exc, self.redactor)
        self.echo(f"run {self.prep.settings.run_id}: {reason}"
                  + (f" (traceback in {where})" if where else " (no crash file could be written)"))
        return reason

    def _report_crash(self, exc: BaseException) -> int:
        """The normal end failed: report `error` straight away, without waiting
        for the log; EXIT_UNREPORTED when even that fails, for the pool."""
        reason = self._crashed(exc)
        if self.reported:
            return EXIT_RUN_ERROR
        return EXIT_RUN_ERROR if self._report_directly(Decision(Action.ERROR, False, reason)) else EXIT_UNREPORTED

    def _report_directly(self, decision: Decision) -> bool:
        """Send the terminal report now, not after the log; whether it was
        delivered (if not, exit EXIT_UNREPORTED: the pool reports the run)."""
        s = self.prep.settings
        report = report_for(decision, posted=self.posted, usage=self.usage.describe(), said=None,
                            redactor=self.redactor)
        deadline = FlushDeadline(self.interrupts, self.timing.flush_timeout)
        deadline.start()
        try:
            fault_point("report")
            with Backend(self.prep.server, s.run_id, s.token, self.timing) as backend:
                delivered = backend.post(report.path, report.body, keep_trying=deadline.keep_trying).ok
        except Exception as failure:  # noqa: BLE001 - the pool reports the run instead
            write_crash_file(self.state, failure, self.redactor)
            delivered = False
        if delivered:
            self.reported = True
        else:
            self.echo(f"run {s.run_id}: could not report the failure; exit {EXIT_UNREPORTED} "
                      "asks whoever started bootstrap to report the run")
        return delivered

    def _shut_down(self) -> None:
        """Workers stopped, the run's processes ended, signal handlers restored:
        each step tried even if another fails."""
        steps: list[Callable[[], object]] = [self.interrupts.restore]
        if self.procs is not None:
            procs = self.procs
            steps.insert(0, lambda: procs.end(self.state, self.timing.kill_grace))  # done already, normally
        if self._opening is not None:  # the start failed before _open_processes
            steps.insert(0, self._opening.cancel)
        if self._arbiter is not None:
            # Workers still busy when the flush bound is spent are SIGKILLed at once.
            steps.insert(0, lambda: self._stop_workers(None, 5.0))
        for step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - the exit status is decided already
                write_crash_file(self.state, exc, self.redactor)


def supervise(prep: Prepared, payload: dict[str, Any], echo: Callable[[str], None] | None = None,
              interrupts: Interrupts | None = None, opening: OpeningRun | None = None) -> int:
    say = echo or (lambda line: print(f"flywheel-bootstrap: {line}", file=sys.stderr, flush=True))
    return RunSupervisor(prep, payload, say, interrupts, opening).run()
