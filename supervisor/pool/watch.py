"""`--runs DIR --watch`: a pool that keeps taking runs files dropped into a folder
(SPEC section 16), for a host run as a service.

- Only `*.runs` files are read (not dotfiles), and only once complete: when no
  process has it open for writing (a read lease, F_SETLEASE, can be taken on
  it), or — where leases cannot be taken (a file of another user, NFS) — once
  it has not changed for SETTLE seconds. Write it in one go (`cp`), or under
  another name and `mv` it in; a file written in several opens (`echo >>`
  twice) may be read between them. watchdog wakes the watcher when a file
  arrives; every turn of the pool's loop also looks, so a missed event only
  delays a file.
- A file's runs join the pool's queue and start as GPUs free up. When every run
  of a file has ended the file moves to `DIR/done/` (all complete) or
  `DIR/failed/` (any error or cancel). A file that cannot be read, or whose runs
  cannot be run here (bad line, bad config, GPUs the host does not have, a run id
  taken before), goes to `DIR/failed/` at once with the reason in
  `NAME.error` beside it; none of its runs starts. Whatever reading or checking
  one file raises stays with that file: the service and the other files' runs
  go on. When `failed/` or `done/` cannot be made (a plain file has its name),
  that is said once and the files stay in DIR (a refused one with its
  `NAME.error` beside it).
- The journal (supervisor/pool/journal.py) records each step first, so a
  restart never runs a run twice: a run that had started when the watcher died
  is reported `error` to the backend (the backend answers 409 if its supervisor
  reported it already), and only runs that never started are started.
- SIGTERM cancels the running runs as the pool does; runs not started yet stay
  in their file, for the next start.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from supervisor.pool import states
from supervisor.pool.decisions import GpuRequest
from supervisor.pool.journal import Journal, Known
from supervisor.pool.runs_file import RunSpec
from workers.common.errors import BootstrapError

SUFFIX = ".runs"
DONE, FAILED = "done", "failed"
# A file whose writers cannot be seen is read once it has not changed for this long.
SETTLE = 5.0

# Reads one runs file (raising BootstrapError with the reason).
ReadRuns = Callable[[Path], list[RunSpec]]
# Checks what a file's runs need (configs, GPUs) and returns each run's GPU
# request; raises BootstrapError with the reason.
PlanRuns = Callable[[Sequence[RunSpec]], Mapping[str, GpuRequest]]
# Reports a run that had started when the watcher died; returns a note.
ReportLost = Callable[[RunSpec, str], str]

LOST_REASON = "bootstrap stopped while the run was in progress (found when the watcher restarted)"


# -- decisions (pure)


def is_runs_name(name: str) -> bool:
    return name.endswith(SUFFIX) and not name.startswith(".")


@dataclass(frozen=True)
class Look:
    """One runs file as the watcher last saw it."""

    mtime: float
    # Some process has it open for writing; None when that cannot be known.
    writing: bool | None


def ready_files(listing: Mapping[str, Look], known: Set[str], now: float) -> list[str]:
    """The runs files to read now, in name order: not read before (`known`), and
    complete — no writer has them open, or, where writers cannot be seen,
    unchanged for SETTLE seconds."""
    return sorted(
        name for name, look in listing.items()
        if is_runs_name(name) and name not in known
        and (look.writing is False or (look.writing is None and now - look.mtime >= SETTLE))
    )


def open_for_writing(path: Path) -> bool | None:
    """Whether some process has `path` open for writing: a read lease is refused
    (EAGAIN) exactly then. None where leases are not allowed (not the file's
    owner, a filesystem without them)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        return True if exc.errno == errno.EAGAIN else None
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


def destination(run_ids: Sequence[str], ended: Mapping[str, str]) -> str | None:
    """Where a file goes once every run of it ended (None while one has not)."""
    if any(run_id not in ended for run_id in run_ids):
        return None
    return DONE if all(ended[run_id] == states.COMPLETE for run_id in run_ids) else FAILED


def already_taken(
    run_ids: Sequence[str], taken: Set[str], active: Mapping[str, Sequence[str]]
) -> str | None:
    """Why a new file cannot be taken because a run of it was taken before
    (`taken`: every run id ever taken; `active`: the files still being run)."""
    for run_id in run_ids:
        if run_id in taken:
            owner = next((name for name, runs in active.items() if run_id in runs), None)
            where = f"from {owner}, which is still being run" if owner else "from an earlier file"
            return f"run {run_id!r} was already taken {where}; a run is never run twice"
    return None


def shown(text: str) -> str:
    """`text` safe to print and to write as UTF-8: the bytes of a file name
    that is not UTF-8 (os.listdir's lone surrogates) as \\xNN."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


class _Unrunnable(Exception):
    """Why one runs file cannot be run; it goes to failed/ with this reason."""


def free_name(folder: Path, name: str) -> Path:
    """`folder/name`, or `folder/stem.N.runs` when that exists already."""
    target = folder / name
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    number = 1
    while target.exists():
        target = folder / f"{stem}.{number}{SUFFIX}"
        number += 1
    return target


# -- the feed


class _Arrivals(FileSystemEventHandler):
    """Wakes the pool when a runs file may have arrived or been completed (not on
    the watcher's own opens and reads, which would wake it again and again)."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("created", "moved", "closed"):
            self.wake()


@dataclass
class FolderFeed:
    """The runs of the files in `folder`, handed to the pool as they arrive
    (the pool's Feed), with their ends routed back to the files."""

    folder: Path
    journal: Journal
    read_runs: ReadRuns
    plan_runs: PlanRuns
    report_lost: ReportLost
    echo: Callable[[str], None]
    wake: Callable[[], None] = lambda: None
    _seen: set[str] = field(default_factory=set)
    # Every run id ever taken (from the journal, then as files come).
    _taken: set[str] = field(default_factory=set)
    # Active files: name -> their run ids (in file order); and each ended run's state.
    _files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _ended: dict[str, str] = field(default_factory=dict)
    _pending: list[tuple[RunSpec, GpuRequest]] = field(default_factory=list)
    # done/ or failed/ when it cannot be made, said once until it can again.
    _unusable: set[str] = field(default_factory=set)
    _observer: BaseObserver | None = None

    def open(self) -> None:
        """Pick up where the journal left off, then watch the folder."""
        known = self.journal.read()
        self._taken.update(known.taken)
        self._ended.update(known.ended)
        for name, run_ids in known.active.items():
            self._resume(name, run_ids, known)
        observer = Observer()
        observer.daemon = True
        observer.schedule(_Arrivals(lambda: self.wake()), str(self.folder), recursive=False)
        observer.start()
        self._observer = observer

    def close(self) -> None:
        """Stop watching and close the journal; again is a no-op."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        self.journal.close()

    def _listing(self) -> dict[str, Look]:
        """The runs files not read yet."""
        listing: dict[str, Look] = {}
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return listing
        for entry in entries:
            if not is_runs_name(entry.name) or entry.name in self._seen:
                continue
            try:
                if entry.is_file():
                    listing[entry.name] = Look(entry.stat().st_mtime, open_for_writing(Path(entry.path)))
            except OSError:
                continue
        return listing

    # -- the pool's Feed

    def arrivals(self) -> list[tuple[RunSpec, GpuRequest]]:
        for name in ready_files(self._listing(), self._seen, time.time()):
            self._seen.add(name)
            self._take(name)
        arrived, self._pending = self._pending, []
        return arrived

    def started(self, spec: RunSpec) -> None:
        self.journal.started(spec.run_id)

    def ended(self, spec: RunSpec, state: str) -> None:
        self.journal.ended(spec.run_id, state)
        self._ended[spec.run_id] = state
        owner = next((name for name, runs in self._files.items() if spec.run_id in runs), None)
        if owner is not None:
            self._route(owner)

    # -- files

    def _take(self, name: str) -> None:
        try:
            specs, requests = self._read(name)
        except _Unrunnable as refused:
            self._refuse(name, str(refused))
            return
        ids = [spec.run_id for spec in specs]
        self.journal.taken(name, ids)
        self._taken.update(ids)
        self._files[name] = tuple(ids)
        self._say(f"{name}: {len(specs)} run{'s' if len(specs) != 1 else ''} taken")
        self._pending += [(spec, requests.get(spec.run_id)) for spec in specs]

    def _read(self, name: str, only: Set[str] | None = None) -> tuple[list[RunSpec], Mapping[str, GpuRequest]]:
        """A file's runs (those in `only` for a file taken before a restart, else
        all, none of them taken before) and their GPU requests. Raises
        _Unrunnable with the reason the file cannot be run."""
        try:
            specs = self.read_runs(self.folder / name)
            if only is not None:
                specs = [spec for spec in specs if spec.run_id in only]
            else:
                refused = already_taken([spec.run_id for spec in specs], self._taken, self._files)
                if refused:
                    raise BootstrapError(refused)
            return specs, self.plan_runs(specs)
        except BootstrapError as exc:
            raise _Unrunnable(exc.message) from None
        except RecursionError:
            # json and tomllib recurse once per level of nesting.
            raise _Unrunnable("it, or a config it names, is nested too deeply to be read") from None
        except (OSError, ValueError) as exc:
            # A path with a NUL byte or a name too long, in a line or a config.
            raise _Unrunnable(f"it could not be read: {type(exc).__name__}: {exc}") from None
        except Exception as exc:
            # A bug of ours: it stays with this one file, so the service and the
            # runs in progress go on; the traceback is what a report needs.
            self._say(f"{name}: unexpected error while reading it (a bug in bootstrap):")
            for line in traceback.format_exc().splitlines():
                self._say(f"  {line}")
            raise _Unrunnable(f"bootstrap failed while reading it: {type(exc).__name__}: {exc} "
                              "(a bug in bootstrap; the traceback is in the watcher's output)") from None

    def _resume(self, name: str, run_ids: tuple[str, ...], known: Known) -> None:
        """A file the watcher had taken before it stopped."""
        self._seen.add(name)
        path = self.folder / name
        if not path.exists():
            self._say(f"warning: {name} was taken before the restart but is gone from {self.folder}; "
                      "its runs that had not started are not run")
            self.journal.moved(name, "gone")
            return
        try:
            specs, requests = self._read(name, only=set(run_ids))
        except _Unrunnable as refused:
            self._refuse(name, str(refused))
            return
        self._files[name] = run_ids
        for run_id in sorted(set(run_ids) - {spec.run_id for spec in specs} - set(known.ended)):
            self._say(f"warning: run {run_id} is no longer in {name}; it is not run")
            self.journal.ended(run_id, states.CANCELLED)
            self._ended[run_id] = states.CANCELLED
        for spec in specs:
            if spec.run_id in known.ended:
                continue
            if spec.run_id in known.started:
                note = self.report_lost(spec, LOST_REASON)
                self._say(f"run {spec.run_id}: had started before the restart: reported as error ({note})")
                self.journal.ended(spec.run_id, states.ERROR)
                self._ended[spec.run_id] = states.ERROR
            else:
                self._pending.append((spec, requests.get(spec.run_id)))
        waiting = sum(1 for spec in specs if spec.run_id not in self._ended)
        self._say(f"{name}: resumed after a restart, {waiting} run{'s' if waiting != 1 else ''} still to start")
        self._route(name)

    def _route(self, name: str) -> None:
        run_ids = self._files[name]
        where = destination(run_ids, self._ended)
        if where is None:
            return
        del self._files[name]
        target = self._move(name, where)
        tally = Counter(self._ended.pop(run_id) for run_id in run_ids)
        said = ", ".join(f"{count} {state}" for state, count in sorted(tally.items()))
        place = f"{where}/{target.name}" if target else f"left in {self.folder}"
        self._say(f"{name}: every run ended ({said}) -> {place}")

    def _refuse(self, name: str, why: str) -> None:
        target = self._move(name, FAILED)
        kept = target or self.folder / name
        note = kept.with_name(kept.name + ".error")
        try:
            note.write_text(shown(why) + "\n", encoding="utf-8")
        except OSError:
            pass
        place = f"moved to {FAILED}/{target.name}" if target else f"left in {self.folder}"
        self._say(f"{name}: not run, {place}: {why.splitlines()[0]}")
        for line in why.splitlines()[1:]:
            self._say(f"  {line}")

    def _move(self, name: str, where: str) -> Path | None:
        """Move a file into `where`/; None when it stays where it is."""
        folder = self.folder / where
        try:
            folder.mkdir(exist_ok=True, mode=0o700)
        except OSError as exc:
            self._unusable_folder(folder, exc)
            target = None
        else:
            self._unusable.discard(where)
            target = free_name(folder, name)
            try:
                os.rename(self.folder / name, target)
            except OSError as exc:
                self._say(f"warning: could not move {name} to {where}/: {exc.strerror}")
                target = None
        self.journal.moved(name, where)
        return target

    def _unusable_folder(self, folder: Path, exc: OSError) -> None:
        if folder.name in self._unusable:
            return
        self._unusable.add(folder.name)
        what = ("is not a folder" if isinstance(exc, FileExistsError)
                else f"cannot be made ({exc.strerror or exc})")
        self._say(f"warning: {folder} {what}, so runs files that end stay in {self.folder} "
                  "(a refused one with NAME.error beside it); remove or rename it")

    def _say(self, text: str) -> None:
        self.echo(shown(text))
