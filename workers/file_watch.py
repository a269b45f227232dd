"""Wake a worker when files it follows change: inotify on Linux instead of
polling — and polling when inotify has run out (each run holds two inotify
instances; at the default limit of 128 a host running some 64 runs at once
has none left).

Three ways: `watch_files` (a watchdog observer whose threads poke a WakePipe;
any platform, files that may be replaced), `follow_files` (the log-shipper's
append-only spool files: watchdog's inotify bindings read by the worker's own
loop, no thread, the folder's other files unwatched) and `watch_names` (the
artifact-watcher's manifest, which may be replaced: the folder's inotify read
by the worker's own loop, no thread)."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Protocol

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver
from watchdog.utils import UnsupportedLibcError

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
    try:
        return _start(_inotify(), _Poke(frozenset(names), wake), folder)
    except OSError as exc:
        what = _EXHAUSTED.get(exc.errno or 0)
        if what is None:
            raise
    return _polling(folder, names, wake, what, on_fallback)


def _polling(folder: Path, names: set[str], wake: WakePipe, what: str,
             on_fallback: Callable[[str], None] | None) -> BaseObserver:
    if on_fallback is not None:
        on_fallback(f"inotify has no {what} left (fs.inotify.max_user_{what}); watching files by polling "
                    f"every {POLL_INTERVAL:g} s instead")
    return _start(PollingObserver(timeout=POLL_INTERVAL), _Poke(frozenset(names), wake), folder)


class FileChanges(Protocol):
    """What a worker's loop waits on (`fileno`) and asks (`changed`)."""

    def fileno(self) -> int: ...

    def changed(self) -> bool:
        """Whether a followed file changed since the last call (no wait)."""
        ...

    def close(self) -> None: ...


class _Watched:
    """A watchdog observer poking a WakePipe (polling, or a platform without
    inotify): the same face as `_Inotify`."""

    def __init__(self, observer: BaseObserver, wake: WakePipe) -> None:
        self._observer = observer
        self._wake = wake

    def fileno(self) -> int:
        return self._wake.fileno()

    def changed(self) -> bool:
        return self._wake.clear()

    def close(self) -> None:
        self._observer.stop()
        self._wake.close()


_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name
_READ = 64 * 1024


def _inotify_calls() -> ModuleType | None:
    """watchdog's own ctypes bindings of inotify(7); None where libc has none."""
    try:
        from watchdog.observers import inotify_c
    except (ImportError, OSError, UnsupportedLibcError):
        return None
    return inotify_c


def _check(result: int) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def _events(fd: int) -> Iterator[tuple[int, int, bytes]]:
    """(watch descriptor, mask, name) of each event queued on inotify `fd`,
    until none is left."""
    while True:
        try:
            data = os.read(fd, _READ)
        except BlockingIOError:
            return
        pos = 0
        while pos < len(data):
            wd, mask, _, size = _EVENT.unpack_from(data, pos)
            yield wd, mask, data[pos + _EVENT.size:pos + _EVENT.size + size].rstrip(b"\0")
            pos += _EVENT.size + size


def _open_inotify(calls: ModuleType) -> int:
    """A non-blocking inotify fd, not inherited by children."""
    fault = os.environ.get(FAULT_ENV, "")
    if fault in ("EMFILE", "ENOSPC"):
        code = getattr(errno, fault)
        raise OSError(code, os.strerror(code))
    fd = _check(calls.inotify_init())
    os.set_blocking(fd, False)
    os.set_inheritable(fd, False)
    return fd


class _Inotify:
    """inotify read by the worker's own loop: no thread, and the kernel merges
    the many writes of a burst into one event while the worker is busy. Only
    the followed files are watched (IN_MODIFY), so the worker's own writes to
    the folder never wake it; the folder itself only while a followed file is
    still missing (to see it appear)."""

    def __init__(self, folder: Path, names: frozenset[str], calls: ModuleType) -> None:
        self._calls = calls
        flags = calls.InotifyConstants
        self._file_mask = flags.IN_MODIFY
        self._folder_mask = flags.IN_CREATE | flags.IN_MOVED_TO | flags.IN_ONLYDIR
        self._ignored, self._overflow = flags.IN_IGNORED, flags.IN_Q_OVERFLOW
        self._fd = _open_inotify(calls)
        self._folder = folder
        self._names = names
        self._files: dict[int, str] = {}  # watch descriptor -> name
        self._folder_wd: int | None = None
        try:
            self._arm()
        except OSError:
            os.close(self._fd)
            raise

    def _arm(self) -> None:
        """Watch each followed file that exists; the folder while one does not."""
        if self._folder_wd is None:
            # First the folder, then the files: one created in between is seen.
            self._folder_wd = _check(self._calls.inotify_add_watch(self._fd, os.fsencode(self._folder),
                                                                   self._folder_mask))
        for name in self._names - set(self._files.values()):
            try:
                wd = _check(self._calls.inotify_add_watch(self._fd, os.fsencode(self._folder / name),
                                                          self._file_mask))
            except FileNotFoundError:
                continue
            self._files[wd] = name
        if len(self._files) == len(self._names):
            self._calls.inotify_rm_watch(self._fd, self._folder_wd)
            self._folder_wd = None

    def fileno(self) -> int:
        return self._fd

    def changed(self) -> bool:
        seen = rearm = False
        for wd, mask, name in _events(self._fd):
            if wd in self._files:
                seen = True
                if mask & self._ignored:
                    del self._files[wd]  # deleted: wait for it to come back
                    rearm = True
            elif mask & self._overflow or (wd == self._folder_wd and os.fsdecode(name) in self._names):
                seen = rearm = True
        if rearm:
            try:
                self._arm()
            except OSError:
                pass  # no watch left: the worker still reads its files every few seconds
        return seen

    def close(self) -> None:
        os.close(self._fd)


class _NamesInFolder:
    """inotify on a folder, read by the worker's own loop (no thread): says
    when one of `names` was created, written, closed, moved in or out, or
    deleted there, so a file that is replaced (written aside, renamed over)
    is seen too. The folder's other files wake the loop but are not reported."""

    def __init__(self, folder: Path, names: frozenset[str], calls: ModuleType) -> None:
        flags = calls.InotifyConstants
        mask = (flags.IN_CREATE | flags.IN_MODIFY | flags.IN_CLOSE_WRITE | flags.IN_MOVED_TO
                | flags.IN_MOVED_FROM | flags.IN_DELETE | flags.IN_ONLYDIR)
        self._overflow = flags.IN_Q_OVERFLOW
        self._names = {os.fsencode(name) for name in names}
        self._fd = _open_inotify(calls)
        try:
            _check(calls.inotify_add_watch(self._fd, os.fsencode(folder), mask))
        except OSError:
            os.close(self._fd)
            raise

    def fileno(self) -> int:
        return self._fd

    def changed(self) -> bool:
        seen = False
        for _, mask, name in _events(self._fd):
            seen = seen or name in self._names or bool(mask & self._overflow)
        return seen

    def close(self) -> None:
        os.close(self._fd)


def _in_loop(make: Callable[[frozenset[str], ModuleType], FileChanges], folder: Path, names: set[str],
             on_fallback: Callable[[str], None] | None) -> FileChanges:
    """`make(names, inotify calls)`, else a watchdog observer: where libc has
    no inotify, or polling when inotify is exhausted (said through `on_fallback`)."""
    calls = _inotify_calls()
    if calls is None:
        wake = WakePipe()
        return _Watched(watch_files(folder, names, wake, on_fallback), wake)
    try:
        return make(frozenset(names), calls)
    except OSError as exc:
        what = _EXHAUSTED.get(exc.errno or 0)
        if what is None:
            raise
    wake = WakePipe()
    return _Watched(_polling(folder, names, wake, what, on_fallback), wake)


def follow_files(folder: Path, names: set[str],
                 on_fallback: Callable[[str], None] | None = None) -> FileChanges:
    """Follow `names` in `folder`: files only ever appended to, never
    replaced (a deleted one is followed again once it is back). Polls when
    inotify is exhausted, and says why through `on_fallback`."""
    return _in_loop(lambda found, calls: _Inotify(folder, found, calls), folder, names, on_fallback)


def watch_names(folder: Path, names: set[str],
                on_fallback: Callable[[str], None] | None = None) -> FileChanges:
    """Watch `names` in `folder` (not recursive): files that may be written in
    place or replaced, like Codex's manifest. Polls when inotify is exhausted,
    and says why through `on_fallback`."""
    return _in_loop(lambda found, calls: _NamesInFolder(folder, found, calls), folder, names, on_fallback)


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
