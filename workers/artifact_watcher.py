"""The artifact-watcher worker: watches the manifest while Codex runs (so a
malformed one is reported early, as a warning entry), and at the end posts the
artifacts, one request each, embedding the files they name.

Each artifact is encoded on its own (workers/artifacts.py: encode_artifact):
one that JSON cannot carry is coerced or skipped with a warning entry, and the
others are posted; its warnings are cleaned of lone surrogates too, since the
entry log is JSON as well.

Which artifacts were already posted is committed to `artifacts.json` after each
one, so a replacement worker carries on where a killed one stopped instead of
posting everything twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from workers.artifacts import encode_artifact, enrich, manifest_fingerprint, read_manifest, scrub
from workers.common.backend_client import Backend
from workers.common.files import open_private, write_all, write_private
from workers.common.names import MANIFEST_NAME
from workers.common.redact import Redactor
from workers.common.spool import EntryLog, terminate_last_line
from workers.common.timing import Timing
from workers.file_watch import warn_once_per_run, watch_names
from workers.messages import ArtifactsPosted, Command, PostArtifacts, Stop, unexpected
from workers.runtime import Mailbox

POSTED_STATE = "artifacts.json"
IDLE_WAIT = 5.0


@dataclass(frozen=True)
class WatcherConfig:
    state_dir: Path
    workspace: Path
    server: str
    run_id: str
    token: str = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False, default=())
    blob_threshold: int = 16 * 1024 * 1024
    timing: Timing = field(default_factory=Timing)


class PostedList:
    """Which artifacts of a job were posted: `artifacts.json` holds the job on
    its first line, then one line per artifact done, appended (rewriting the
    whole list after each artifact would cost time quadratic in their number).
    A torn last line (a worker killed mid-append) is ignored."""

    def __init__(self, path: Path, job: str) -> None:
        self.path = path
        loaded = self._load(job)
        if loaded is None:
            write_private(path, orjson.dumps({"job": job}) + b"\n")
            loaded = set()
        else:
            terminate_last_line(path)  # a torn line must not run into the next
        self.done: set[int] = loaded

    def _load(self, job: str) -> set[int] | None:
        try:
            lines = self.path.read_bytes().split(b"\n")
            if orjson.loads(lines[0]).get("job") != job:
                return None
        except (FileNotFoundError, orjson.JSONDecodeError, AttributeError):
            return None
        return {int(line) for line in lines[1:] if line.isdigit()}

    def add(self, index: int) -> None:
        fd = open_private(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            write_all(fd, b"%d\n" % index)
        finally:
            os.close(fd)
        self.done.add(index)


class Watcher:
    def __init__(self, mailbox: Mailbox, cfg: WatcherConfig) -> None:
        self.mb = mailbox
        self.cfg = cfg
        self.manifest = cfg.workspace / MANIFEST_NAME
        # A warning the full disk refused is lost with the run (the supervisor
        # reports the disk full); the watcher goes on posting.
        self.log = EntryLog(cfg.state_dir, Redactor(cfg.secrets), on_disk_full=lambda exc: None)
        self.seen: Any = None
        self.reported: str | None = None
        self.stopping = False

    def check_early(self) -> None:
        """While Codex runs: say once per distinct problem that the manifest is
        malformed, so the user need not wait for the end to find out."""
        fingerprint = manifest_fingerprint(self.manifest)
        if fingerprint is None or fingerprint == self.seen:
            return
        self.seen = fingerprint
        read = read_manifest(self.manifest)
        if read.status == "malformed" and read.error != self.reported:
            self.reported = read.error
            self._warn(f"artifact manifest {MANIFEST_NAME} is malformed so far: {read.error}",
                       manifest=MANIFEST_NAME)

    def _warn(self, message: str, **extra: Any) -> None:
        # A manifest's keys and types, quoted in a warning, may hold lone surrogates.
        self.log.write("warning", scrub(message), "warning", **extra)

    def post_all(self, job: str, backend: Backend) -> tuple[int, int]:
        """Post every artifact of the manifest; returns (posted, skipped)."""
        read = read_manifest(self.manifest)
        for warning in read.warnings:
            self._warn(f"artifact manifest: {warning}")
        done = PostedList(self.cfg.state_dir / POSTED_STATE, job)
        posted = skipped = 0
        for index, artifact in enumerate(read.artifacts):
            self.mb.tick()  # progress: one artifact more
            if index in done.done:
                posted += 1
                continue
            label = f"artifact #{index + 1} ({artifact.get('artifact_type')})"
            body = self._body(index, label, artifact)
            if body is None:
                skipped += 1
                continue
            # Progress is counted per block of the body sent, so a long upload
            # that keeps moving is never taken for a hang.
            answer = backend.post("/artifacts", body, sleep=self._sleep, progress=self.mb.tick)
            if answer.ok:
                posted += 1
            elif not self.stopping:
                skipped += 1
                self._warn(f"{label} was refused by the backend (HTTP {answer.status})")
            if self.stopping:
                break
            done.add(index)
        return posted, skipped

    def _body(self, index: int, label: str, artifact: dict[str, Any]) -> bytes | None:
        """The artifact enriched and encoded; None when it is skipped (said)."""
        result = enrich(artifact, self.cfg.workspace, self.cfg.blob_threshold)
        for warning in result.warnings:
            self._warn(f"artifact #{index + 1}: {warning}")
        if result.artifact is None:
            return None
        encoded = encode_artifact(result.artifact, label)
        for warning in encoded.warnings:
            self._warn(warning)
        return encoded.body

    def _sleep(self, seconds: float) -> bool:
        self._handle(self.mb.wait(seconds))
        return self.stopping

    def _handle(self, messages: list[Command]) -> None:
        for message in messages:
            match message:
                case Stop():
                    self.stopping = True
                case PostArtifacts(job=job):
                    self.jobs.append(job)
                case _:
                    unexpected(message, "the artifact-watcher")

    def run(self) -> None:
        self.jobs: list[str] = []
        # Read in this loop (no observer threads): a run's mock or short
        # Codex made starting and stopping them a quarter of this worker's CPU.
        changes = watch_names(self.cfg.workspace, {MANIFEST_NAME}, warn_once_per_run(self.cfg.state_dir))
        try:
            with Backend(self.cfg.server, self.cfg.run_id, self.cfg.token, self.cfg.timing) as backend:
                while not self.stopping:
                    changes.changed()
                    if self.jobs:
                        job = self.jobs.pop(0)
                        posted, skipped = self.post_all(job, backend)
                        if not self.stopping:
                            self.mb.put(ArtifactsPosted(job, posted, skipped))
                        continue
                    self.check_early()
                    self._handle(self.mb.wait(IDLE_WAIT, [changes]))
        finally:
            changes.close()


def main(mailbox: Mailbox, cfg: WatcherConfig) -> None:
    Watcher(mailbox, cfg).run()
