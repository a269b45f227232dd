"""Wake a worker when files it follows change, using watchdog (inotify on Linux)
instead of polling — and polling when inotify has run out (each run holds two
inotify instances; at the default limit of 128 a host running some 64 runs at
once has none left)."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from workers.common.spool import EntryLog
from workers.common.wake import WakePipe

POLL_INTERVAL = 0.5
# Tests simulate an exhausted inotify: FLYWHEEL_FAULT_INOTIFY=EMFILE or ENOSPC.
FAULT_ENV = "FLYWHEEL_FAULT_INOTIFY"
_EXHAUSTED = {errno.EMFILE: "instances", errno.ENFILE: "instances", errno.ENOSPC: "watches"}


class _Poke(FileSystemEventHandler):
    def __init__(self, names: frozenset[str], wake: WakePipe) -> None:
        self.names = names
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path and os.path.basename(os.fsdecode(path)) in self.names:
                self.wake.poke()
                return


def _start(observer: BaseObserver, handler: _Poke, folder: Path) -> BaseObserver:
    observer.daemon = True
    observer.schedule(handler, str(folder), recursive=False)
    observer.start()
    return observer


def _inotify() -> BaseObserver:
    fault = os.environ.get(FAULT_ENV, "")
    if fault in ("EMFILE", "ENOSPC"):
        code = getattr(errno, fault)
        raise OSError(code, os.strerror(code))
    return Observer()


def watch_files(folder: Path, names: set[str], wake: WakePipe,
                on_fallback: Callable[[str], None] | None = None) -> BaseObserver:
    """Start an observer on `folder` (not recursive) that pokes `wake` whenever
    one of `names` is created, written, moved or deleted there. When inotify
    is exhausted it polls instead, and says why through `on_fallback`."""
    handler = _Poke(frozenset(names), wake)
    try:
        return _start(_inotify(), handler, folder)
    except OSError as exc:
        what = _EXHAUSTED.get(exc.errno or 0)
        if what is None:
            raise
    if on_fallback is not None:
        on_fallback(f"inotify has no {what} left (fs.inotify.max_user_{what}); watching files by polling "
                    f"every {POLL_INTERVAL:g} s instead")
    return _start(PollingObserver(timeout=POLL_INTERVAL), handler, folder)


def warn_once_per_run(state_dir: Path) -> Callable[[str], None]:
    """An `on_fallback` that says it once per run, whichever worker (and
    incarnation) falls back first: a warning entry and a line in the worker's
    log. A marker file in the state folder remembers it was said."""

    def warn(message: str) -> None:
        try:
            os.close(os.open(state_dir / "inotify-fallback", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return
        print(f"file watch: {message}", file=sys.stderr, flush=True)
        EntryLog(state_dir).write("warning", message, "warning")

    return warn
