"""The pool's launcher (docs/design.md: Many runs): one process that imports what
a run's supervisor needs once, then forks each run's supervisor on request, so a
run does not pay for a fresh interpreter and its imports.

It is exec'd by the pool (`python -m supervisor.pool.launcher FD ROOM`: FD its
end of a socketpair, ROOM spare room for the children's command lines) and is
single-threaded, so every fork is of a process without threads. It talks to the
pool in JSON datagrams (`launched.py` is the pool's side):

  pool → launcher  {"op": "start", "argv": [...], "env": {...}} + the output log's fd
                   {"op": "signal", "pid": P, "sig": S, "group": bool}
  launcher → pool  {"op": "started", "pid": P} | {"op": "failed", "why": "..."}
                   {"op": "exited", "pid": P, "code": C}   (Popen's returncode)

The supervisors are the launcher's children, so the launcher is the one that
reaps them and signals them: a pid it has not reaped cannot have been reused.
When one exits, the launcher SIGKILLs what it left in its process group while
its zombie still pins the group id, then reaps it and says so. A start whose
argv is this interpreter's `-m supervisor …` runs the supervisor in the forked
child; any other argv (tests' fake supervisors) is exec'd there.

Each child gets what `children.spawn` gives an exec'd supervisor: its own
session, stdin from /dev/null, stdout and stderr to its output log,
PR_SET_PDEATHSIG (SIGTERM when the launcher dies; the launcher itself gets
SIGKILL when the pool dies, so a SIGKILLed pool still takes its runs down), its
run's environment in `os.environ` (so in everything it starts), and its own
command line in `ps`. /proc/PID/environ of a forked supervisor shows the
launcher's start-up environment (the pool's base environment: no run's token).
The launcher exits when the pool's end of the socket closes.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import selectors
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

# What a run's supervisor imports (cli.run_single's and the workers' late imports included).
PRELOAD = (
    "supervisor.cli",
    "supervisor.preflight",
    "supervisor.run",
    "supervisor.signals",
    "workers.common.backend_client",
    "workers.run_processes",
    "workers.artifact_watcher",
    "workers.control_poller",
    "workers.log_shipper",
    # What multiprocess imports when the supervisor makes its workers' queues.
    "multiprocess.popen_fork",
    "multiprocess.queues",
    "multiprocess.sharedctypes",
    "multiprocess.synchronize",
    "encodings.utf_8_sig",
)
# A datagram's limit (an environment larger than this is started by exec instead).
MAX_MESSAGE = 1 << 18


@dataclass(frozen=True)
class Job:
    """What a forked child runs once it has left the launcher's loop."""

    args: list[str]


def send(sock: socket.socket, message: dict[str, object], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def supervisor_args(argv: list[str]) -> list[str] | None:
    """The single-run arguments when `argv` is this interpreter's `-m supervisor …`."""
    if len(argv) >= 3 and argv[0] == sys.executable and argv[1:3] == ["-m", "supervisor"]:
        return argv[3:]
    return None


class Launcher:
    def __init__(self, sock: socket.socket, death_hook: Callable[[], None] | None) -> None:
        self.sock = sock
        self.death_hook = death_hook
        self.children: set[int] = set()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.selector = selectors.DefaultSelector()
        self.selector.register(sock, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)

    def serve(self) -> Job | None:
        """Serve until the pool goes away (None); in a forked supervisor, return its Job."""
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        while True:
            for key, _ in self.selector.select():
                if key.fd == self.wake_r:
                    self._drain_wakeups()
                    self._reap()
                    continue
                data, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, 1)
                if not data:
                    return None
                job = self._handle(json.loads(data), fds)
                if job is not None:
                    return job

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            pid = info.si_pid
            # What it left in its group goes with it, while its zombie pins the group id.
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            _, status = os.waitpid(pid, 0)
            if pid in self.children:
                self.children.discard(pid)
                send(self.sock, {"op": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status)})

    def _handle(self, message: dict[str, object], fds: list[int]) -> Job | None:
        op = message.get("op")
        if op == "signal":
            pid, sig = message["pid"], message["sig"]
            if isinstance(pid, int) and isinstance(sig, int) and pid in self.children:
                kills = (os.killpg, os.kill) if message.get("group") else (os.kill,)
                for kill in kills:
                    try:
                        kill(pid, sig)
                    except (ProcessLookupError, PermissionError):
                        pass
            return None
        if op != "start" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            return None
        argv = [str(arg) for arg in message["argv"]]  # type: ignore[attr-defined]
        env = {str(k): str(v) for k, v in message["env"].items()}  # type: ignore[attr-defined]
        try:
            return self._start(argv, env, fds[0])
        finally:
            os.close(fds[0])

    def _start(self, argv: list[str], env: dict[str, str], log_fd: int) -> Job | None:
        args = supervisor_args(argv)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(err_r)
            os.close(err_w)
            send(self.sock, {"op": "failed", "why": exc.strerror or str(exc)})
            return None
        if pid == 0:
            os.close(err_r)
            self._become_child(log_fd, env, argv)
            if args is not None:
                os.close(err_w)
                return Job(args)
            _exec(argv, env, err_w)
        os.close(err_w)
        with os.fdopen(err_r, "rb") as pipe:
            failed = pipe.read()  # empty once the exec succeeded (the pipe closes on exec)
        if failed:
            os.waitpid(pid, 0)
            send(self.sock, {"op": "failed", "why": failed.decode("utf-8", "replace")})
            return None
        self.children.add(pid)
        send(self.sock, {"op": "started", "pid": pid})
        return None

    def _become_child(self, log_fd: int, env: dict[str, str], argv: list[str]) -> None:
        """In the forked child: leave the launcher behind and become the run's process."""
        os.setsid()  # a Ctrl-C on the pool's terminal reaches only the pool
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.selector.close()
        self.sock.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        if self.death_hook is not None:
            self.death_hook()
        os.environ.clear()
        os.environ.update(env)
        from supervisor.pool.proc_title import set_title

        set_title(argv)


def _exec(argv: list[str], env: dict[str, str], err_w: int) -> None:
    """In the forked child: exec `argv` (as Popen would), or say why not and exit."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    os.closerange(3, err_w)
    os.closerange(err_w + 1, os.sysconf("SC_OPEN_MAX"))
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        os.write(err_w, (exc.strerror or str(exc)).encode())
    os._exit(127)


def _death_hook(sig: int) -> Callable[[], None] | None:
    from supervisor.pool.children import parent_death_hook

    return parent_death_hook(sig)


def main(argv: list[str]) -> None:
    import importlib

    from supervisor.pool.proc_title import set_title

    sock = socket.socket(fileno=int(argv[1]))
    set_title([sys.executable, "-m", "supervisor.pool.launcher", f"(the run supervisors of pool {os.getppid()})"])
    for name in PRELOAD:
        importlib.import_module(name)
    # Out of the collector's sight: a collection in a supervisor (or in a worker
    # it forks) would otherwise walk every imported object, writing to (and so
    # copying) the pages the launcher's children share. About a quarter of a
    # forked run's CPU (benchmarks/README.md: Many runs on one host).
    gc.freeze()
    job = Launcher(sock, _death_hook(signal.SIGTERM)).serve()
    if job is None:
        return
    import supervisor

    sys.argv = [os.path.join(os.path.dirname(supervisor.__file__), "__main__.py"), *job.args]
    from supervisor.cli import main as supervisor_main

    _exit_without_teardown(supervisor_main, job.args)


def _exit_without_teardown(run: Callable[[list[str]], None], args: list[str]) -> None:
    """Run a forked supervisor to its end, then leave as a forked multiprocessing
    child does: atexit handlers run and the standard streams are flushed, but the
    interpreter is not torn down. Tearing it down would deallocate every object
    it inherited from the launcher, writing to (so copying) each page it still
    shares with the launcher and the other runs: about a quarter of the
    supervisor's CPU (benchmarks/README.md: Many runs on one host). An uncaught
    exception other than SystemExit still ends it the ordinary way."""
    try:
        run(args)
        code = 0
    except SystemExit as exc:
        code = exit_status(exc.code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def exit_status(code: object) -> int:
    """The exit status the interpreter gives `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    main(sys.argv)
