"""Wake a worker when files it follows change, using watchdog (inotify on Linux)
instead of polling."""

from __future__ import annotations

import os
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from workers.common.wake import WakePipe


class _Poke(FileSystemEventHandler):
    def __init__(self, names: frozenset[str], wake: WakePipe) -> None:
        self.names = names
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path and os.path.basename(os.fsdecode(path)) in self.names:
                self.wake.poke()
                return


def watch_files(folder: Path, names: set[str], wake: WakePipe) -> BaseObserver:
    """Start an observer on `folder` (not recursive) that pokes `wake` whenever
    one of `names` is created, written, moved or deleted there."""
    observer = Observer()
    observer.daemon = True
    observer.schedule(_Poke(frozenset(names), wake), str(folder), recursive=False)
    observer.start()
    return observer
