"""Code persistence (README: Code persistence): clone before Codex, commit and push after.

Everything here is best effort. A bad `repo_context`, a clone that fails or a push
that is rejected becomes a `Note` (a log entry for the caller to ship) and never an
exception: a git problem must not turn a completed run into an error.

The token is handled so that it cannot leak into what Codex or the user sees: it
sits in a git credential-store file (0600) in the run's private state folder, the
repository's *local* config points its credential helper at that file, and the
remote URL stays exactly as given (minus any password). Any git output quoted in a
note is redacted first.

Git is run as a subprocess with prompts disabled, with a timeout, and without
touching the user's global config. The user's system/global config is still read
(proxies, CA bundles), but the keys that could prompt, sign, run hooks Codex may
have planted in `.git/hooks`, or hand our token to a keychain helper are overridden
per command with `-c`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shlex
import signal
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from workers.common.errors import ConfigError
from workers.common.files import write_private
from workers.common.names import CREDENTIALS_NAME, MANIFEST_NAME, PROMPT_NAME
from workers.common.redact import mask, mask_url_userinfo

# Written once the clone is ready; persist() refuses to touch a repository without
# it, so a workspace that merely happens to be a git repository is never pushed.
MARKER_NAME = "git-persist.json"

ENV_MAX_FILE = "FLYWHEEL_GIT_MAX_COMMIT_FILE_SIZE_BYTES"
DEFAULT_MAX_COMMIT_FILE_BYTES = 95 * 1024 * 1024

BOT_NAME = "Flywheel Bot"
BOT_EMAIL = "bot@flywheel.invalid"
TOKEN_USER = "x-access-token"

NET_TIMEOUT = 600.0
LOCAL_TIMEOUT = 120.0
_STDERR_TAIL = 1500

_REQUIRED = ("repo_url", "repo_owner", "repo_name", "branch_name", "base_branch")

# Variables that would point git at another repository, index or identity, or
# inject config: inherited from a parent git process they would silently redirect
# every command below.
_STRIP_ENV = frozenset(
    {
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_NAMESPACE",
        "GIT_COMMON_DIR",
        "GIT_PREFIX",
        "GIT_CONFIG",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT",
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_AUTHOR_DATE",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
        "GIT_COMMITTER_DATE",
    }
)

# Per-command overrides (command scope beats every config file).
_SAFE_CONFIG = (
    "core.hooksPath=" + os.devnull,  # hooks in .git/hooks are Codex-writable
    "core.fsmonitor=false",
    "commit.gpgSign=false",
    "core.askPass=",
    "advice.detachedHead=false",
)


@dataclass(frozen=True)
class Note:
    """Something to report as a log entry (`level` is the entry's level)."""

    level: Literal["info", "warning"]
    message: str


def _info(message: str) -> Note:
    return Note("info", message)


def _warning(message: str) -> Note:
    return Note("warning", message)


class RepoContextError(ValueError):
    """The payload's repo_context cannot be used; the message says why."""


# ------------------------------------------------------------------ repo context


def ref_problem(name: str) -> str | None:
    """Why `name` is not a usable branch name (the rules of git check-ref-format), or None."""
    if not name:
        return "it is empty"
    if name.startswith("-"):
        return "it starts with '-'"
    if name == "@" or "@{" in name or ".." in name or "//" in name:
        return "it contains '@{', '..' or '//', or is '@'"
    if name.startswith("/") or name.endswith(("/", ".", ".lock")):
        return "it starts with '/' or ends with '/', '.' or '.lock'"
    if any(ord(c) < 0x20 or ord(c) == 0x7F or c in " ~^:?*[\\" for c in name):
        return "it contains a space, a control character or one of ~^:?*[\\"
    if any(part.startswith(".") or part.endswith(".lock") for part in name.split("/")):
        return "a component starts with '.' or ends with '.lock'"
    return None


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_problem(url: str) -> str | None:
    """Why a repo_url cannot be cloned with a token, or None.

    https anywhere; http only on this machine (a token must not travel in clear);
    file URLs for local repositories.
    """
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        # A NUL cannot go in git's argv at all; CR/LF would split its config.
        return "it contains a control character"
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        return f"it is not a valid URL ({exc})"
    scheme = parts.scheme.lower()
    if scheme == "file":
        return None if parts.path else "the file URL has no path"
    if scheme == "https":
        return None if host else "the URL has no host"
    if scheme == "http":
        return None if _is_loopback(host) else "plain http would send the token unencrypted; use https"
    return "only https and file URLs are supported"


def _strip_password(url: str) -> str:
    """The URL without a user:password part (a token must not land in .git/config)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


@dataclass(frozen=True)
class RepoContext:
    """Where the run's code lives: the payload's `repo_context`."""

    repo_url: str
    repo_owner: str
    repo_name: str
    branch_name: str
    base_branch: str
    # Optional fork-related fields, kept verbatim for reporting; they change
    # nothing here (the clone and push use repo_url as given).
    fork_fields: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_payload(cls, d: object) -> RepoContext:
        """Validate the payload's `repo_context`; RepoContextError says what is wrong."""
        if not isinstance(d, Mapping):
            raise RepoContextError(f"repo_context is a {type(d).__name__}, not an object")
        values: dict[str, str] = {}
        for key in _REQUIRED:
            value = d.get(key)
            if not isinstance(value, str) or not value.strip():
                raise RepoContextError(f"repo_context.{key} is missing or not a non-empty string")
            values[key] = value.strip()
        why = url_problem(values["repo_url"])
        if why:
            raise RepoContextError(f"repo_context.repo_url {mask_url_userinfo(values['repo_url'])!r}: {why}")
        for key in ("branch_name", "base_branch"):
            why = ref_problem(values[key])
            if why:
                raise RepoContextError(f"repo_context.{key} {values[key]!r} is not a branch name: {why}")
        forks = tuple(
            sorted((k, str(v)) for k, v in d.items() if "fork" in k and isinstance(v, (str, int, bool)))
        )
        return cls(fork_fields=forks, **values)


def plan_persistence(payload: Mapping[str, Any]) -> tuple[RepoContext | None, list[Note]]:
    """Whether this run persists code: (context, []) when it does; (None, notes) when not.

    No repo_context: silently off. A bad one, or one without a github_token: off,
    with one warning, and the run goes on.
    """
    raw = payload.get("repo_context")
    if raw is None:
        return None, []
    try:
        ctx = RepoContext.from_payload(raw)
    except RepoContextError as exc:
        return None, [_warning(f"Code persistence skipped: {exc}.")]
    token = payload.get("github_token")
    if not isinstance(token, str) or not token.strip():
        return None, [_warning("Code persistence skipped: the payload has repo_context but no github_token.")]
    return ctx, []


def max_commit_file_bytes(env: Mapping[str, str]) -> int:
    """The per-file commit cap (bytes) from FLYWHEEL_GIT_MAX_COMMIT_FILE_SIZE_BYTES."""
    raw = (env.get(ENV_MAX_FILE) or "").strip()
    if not raw:
        return DEFAULT_MAX_COMMIT_FILE_BYTES
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(
            f"{ENV_MAX_FILE}={raw[:40]!r} is not a number of bytes. "
            f"Set it to a whole number (default {DEFAULT_MAX_COMMIT_FILE_BYTES}) or unset it."
        )
    return value


# ------------------------------------------------------------------- credentials


def credential_line(repo_url: str, token: str) -> str | None:
    """The credential-store line for the URL's host; None for a file URL (no host)."""
    parts = urlsplit(repo_url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme.lower()}://{TOKEN_USER}:{quote(token, safe='')}@{host}"


def credential_helper(cred_file: Path) -> str:
    """The credential.helper value reading our store file (run through a shell by git)."""
    return f"store --file={shlex.quote(str(cred_file))}"


def credential_config(cred_file: Path) -> list[tuple[str, str]]:
    """Local config entries for credentials: the empty value first drops every
    helper from the user's config, so our token is neither answered from nor
    saved into their keychain or cache."""
    return [("credential.helper", ""), ("credential.helper", credential_helper(cred_file))]


def write_credentials(cred_file: Path, repo_url: str, token: str) -> None:
    line = credential_line(repo_url, token)
    write_private(cred_file, (f"{line}\n" if line else "").encode())


def _stored_tokens(cred_file: Path) -> set[str]:
    """Tokens in our store file, for redaction in persist() (which is not handed one)."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        for line in cred_file.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                password = urlsplit(line.strip()).password
                if password:
                    found.add(unquote(password))
    return found


# --------------------------------------------------------------------- running git


def git_env(base: Mapping[str, str]) -> dict[str, str]:
    """The environment for every git command: never prompts, never redirected."""
    env = {
        k: v
        for k, v in base.items()
        if k not in _STRIP_ENV and not k.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_"))
    }
    env.update(
        GIT_TERMINAL_PROMPT="0",
        # Empty (not unset) stops git from falling back to a desktop askpass dialog.
        GIT_ASKPASS="",
        SSH_ASKPASS="",
        GCM_INTERACTIVE="never",
        # Paths from Codex are file names, never glob patterns.
        GIT_LITERAL_PATHSPECS="1",
    )
    return env


@dataclass(frozen=True)
class _Result:
    code: int
    out: str
    err: str


class _GitFailed(Exception):
    def __init__(self, what: str, result: _Result) -> None:
        super().__init__(what)
        self.what = what
        self.result = result


def _git(
    args: list[str],
    *,
    cwd: Path | None,
    env: Mapping[str, str],
    timeout: float,
    stdin: bytes | None = None,
) -> _Result:
    cmd = ["git"]
    for item in _SAFE_CONFIG:
        cmd += ["-c", item]
    cmd += args
    try:
        # Own session: on timeout the whole group goes (git-remote-https included).
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        return _Result(127, "", f"cannot run git: {exc.strerror or exc}")
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return _Result(124, "", f"git {args[0]} did not finish within {timeout:g} s and was stopped")
    except BaseException:
        # The wait was ended from outside (a signal's grace ran out): git must
        # not outlive it.
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    # File names in the output go back to git as pathspecs: decoded so that a
    # name that is not UTF-8 round-trips (os.fsencode) instead of being mangled.
    return _Result(proc.returncode, os.fsdecode(out), err.decode("utf-8", "replace"))


def _check(what: str, result: _Result) -> _Result:
    if result.code != 0:
        raise _GitFailed(what, result)
    return result


def _failure_note(prefix: str, exc: _GitFailed, secrets: Iterable[str]) -> Note:
    tail = mask(exc.result.err.strip(), secrets)[-_STDERR_TAIL:]
    detail = f" (exit {exc.result.code})" + (f": {tail}" if tail else "")
    return _warning(f"{prefix}: {exc.what} failed{detail}")


def _cred_args(cred_file: Path) -> list[str]:
    args: list[str] = []
    for key, value in credential_config(cred_file):
        args += ["-c", f"{key}={value}"]
    return args


# ------------------------------------------------------------------ before Codex


@dataclass(frozen=True)
class _Marker:
    repo_url: str
    branch: str
    start: str


def _read_marker(state_dir: Path) -> _Marker | None:
    try:
        data = json.loads((state_dir / MARKER_NAME).read_text(encoding="utf-8"))
        return _Marker(str(data["repo_url"]), str(data["branch"]), str(data["start"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def prepare_repo(
    ctx: RepoContext,
    token: str,
    workspace: Path,
    state_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = NET_TIMEOUT,
) -> list[Note]:
    """Clone base_branch (depth 1) into the empty workspace and check out branch_name.

    On any problem: warning notes, and persist() will later do nothing.
    """
    genv = git_env(os.environ if env is None else env)
    secrets = {token}
    cred_file = state_dir / CREDENTIALS_NAME
    url = _strip_password(ctx.repo_url)
    shown = mask_url_userinfo(ctx.repo_url)
    prefix = f"Code persistence ({shown}) disabled"
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        previous = _read_marker(state_dir)
        if previous is not None and (workspace / ".git").is_dir():
            # A restart of the same run: keep the clone (and Codex's work in it).
            write_credentials(cred_file, url, token)
            return [_info(f"Reusing the clone of {shown} on branch {previous.branch} from an earlier start.")]
        entries = sorted(p.name for p in workspace.iterdir()) if workspace.is_dir() else []
        if entries:
            listed = ", ".join(entries[:5]) + (", …" if len(entries) > 5 else "")
            return [
                _warning(
                    f"{prefix}: the workspace {workspace} is not empty ({listed}), so the "
                    "repository cannot be cloned into it. Point `cd`/`workspace_dir` at an empty folder."
                )
            ]
        write_credentials(cred_file, url, token)
    except OSError as exc:
        return [_warning(f"{prefix}: cannot prepare {exc.filename or state_dir}: {exc.strerror or exc}")]

    notes: list[Note] = []
    if url != ctx.repo_url:
        notes.append(_warning("repo_context.repo_url carried credentials; they were removed from the clone URL."))

    def local(*args: str, what: str, net: bool = False) -> _Result:
        return _check(what, _git(list(args), cwd=workspace, env=genv, timeout=timeout if net else LOCAL_TIMEOUT))

    branch, base = ctx.branch_name, ctx.base_branch
    try:
        _check(
            f"git clone of {base}",
            _git(
                [*_cred_args(cred_file), "clone", "-q", "--depth", "1", "--branch", base, "--", url, str(workspace)],
                cwd=None,
                env=genv,
                timeout=timeout,
            ),
        )
        local("config", "--local", "user.name", BOT_NAME, what="git config")
        local("config", "--local", "user.email", BOT_EMAIL, what="git config")
        (key, empty), (_, helper) = credential_config(cred_file)
        local("config", "--local", "--replace-all", key, empty, what="git config")
        local("config", "--local", "--add", key, helper, what="git config")
        if branch == base:
            kind = "the base branch"
        else:
            found = _git(
                ["ls-remote", "--exit-code", "--heads", "origin", f"refs/heads/{branch}"],
                cwd=workspace,
                env=genv,
                timeout=timeout,
            )
            if found.code not in (0, 2):
                raise _GitFailed(f"git ls-remote for {branch}", found)
            local("remote", "set-branches", "--add", "origin", branch, what="git remote set-branches")
            if found.code == 0:
                local(
                    "fetch", "-q", "--depth", "1", "origin",
                    f"+refs/heads/{branch}:refs/remotes/origin/{branch}",
                    what=f"git fetch of {branch}", net=True,
                )  # fmt: skip
                local("checkout", "-q", "-b", branch, "--track", f"origin/{branch}", what=f"git checkout of {branch}")
                kind = "existing branch"
            else:
                local("checkout", "-q", "-b", branch, what=f"git checkout -b {branch}")
                kind = "new branch"
        start = local("rev-parse", "HEAD", what="git rev-parse").out.strip()
        marker = {"repo_url": url, "branch": branch, "start": start}
        write_private(state_dir / MARKER_NAME, json.dumps(marker).encode())
    except _GitFailed as exc:
        notes.append(_failure_note(prefix, exc, secrets))
    except OSError as exc:
        notes.append(_warning(f"{prefix}: {exc.strerror or exc} ({exc.filename})"))
    else:
        notes.append(_info(f"Cloned {shown} ({base}, depth 1) into {workspace}; working on {kind} {branch}."))
        return notes
    # No marker was written, so persist() will not run: the token is not needed.
    with contextlib.suppress(OSError):
        cred_file.unlink()
    return notes


# ------------------------------------------------------------------- after Codex


def _excluded_set(workspace: Path, paths: Iterable[Path]) -> set[str]:
    """Workspace-relative POSIX paths to keep out of the commit (files or folders)."""
    roots = {os.path.normpath(workspace)}
    with contextlib.suppress(OSError):
        roots.add(str(workspace.resolve()))
    out = {MANIFEST_NAME, PROMPT_NAME}
    for p in paths:
        candidates = {os.path.normpath(p if p.is_absolute() else workspace / p)}
        with contextlib.suppress(OSError, RuntimeError):
            candidates.add(str((p if p.is_absolute() else workspace / p).resolve()))
        for cand in candidates:
            for root in roots:
                rel = os.path.relpath(cand, root)
                if rel != "." and not rel.startswith(".." + os.sep) and rel != "..":
                    out.add(Path(rel).as_posix())
    return out


def _is_excluded(rel: str, excluded: set[str]) -> bool:
    parts = rel.rstrip("/").split("/")
    return any("/".join(parts[:i]) in excluded for i in range(1, len(parts) + 1))


def _too_big(workspace: Path, rel: str, cap: int) -> bool:
    try:
        st = os.lstat(workspace / rel)
    except OSError:
        return False
    return st.st_size > cap and not os.path.islink(workspace / rel) and os.path.isfile(workspace / rel)


def _shown(name: str) -> str:
    """A file name for a message: one that is not UTF-8 with its odd bytes as �."""
    return os.fsencode(name).decode("utf-8", "replace")


def _nul_list(text: str) -> list[str]:
    return [p for p in text.split("\0") if p]


def _changed_paths(status: str) -> list[str]:
    """Paths of `git status --porcelain=v1 -z --no-renames` entries."""
    return [entry[3:] for entry in _nul_list(status) if len(entry) > 3]


def persist(
    ctx: RepoContext,
    workspace: Path,
    state_dir: Path,
    run_id: str,
    *,
    failed: bool,
    exclude: set[Path],
    refresh_token: Callable[[], str | None],
    max_file_bytes: int,
    env: Mapping[str, str] | None = None,
    timeout: float = NET_TIMEOUT,
) -> list[Note]:
    """Commit Codex's changes (minus artifacts, manifest, prompt, oversized files) and push.

    Never raises: every problem is a warning note. The credential file is removed
    at the end — the token is not needed after the push.
    """
    cred_file = state_dir / CREDENTIALS_NAME
    marker = _read_marker(state_dir)
    if marker is None or not (workspace / ".git").exists():
        return [_info("Code persistence skipped: the repository was not set up before Codex ran.")]
    secrets = _stored_tokens(cred_file)
    notes: list[Note] = []
    try:
        _persist(ctx, workspace, state_dir, run_id, marker, notes, secrets, failed=failed, exclude=exclude,
                 refresh_token=refresh_token, max_file_bytes=max_file_bytes,
                 genv=git_env(os.environ if env is None else env), timeout=timeout)  # fmt: skip
    except _GitFailed as exc:
        notes.append(_failure_note("Code persistence", exc, secrets))
    except Exception as exc:  # noqa: BLE001 - persistence must never fail the run
        notes.append(_warning(f"Code persistence failed unexpectedly: {mask(repr(exc), secrets)[:500]}"))
    finally:
        with contextlib.suppress(OSError):
            cred_file.unlink()
    return notes


def _persist(
    ctx: RepoContext,
    workspace: Path,
    state_dir: Path,
    run_id: str,
    marker: _Marker,
    notes: list[Note],
    secrets: set[str],
    *,
    failed: bool,
    exclude: set[Path],
    refresh_token: Callable[[], str | None],
    max_file_bytes: int,
    genv: Mapping[str, str],
    timeout: float,
) -> None:
    def git(*args: str, what: str, stdin: bytes | None = None, net: bool = False) -> _Result:
        result = _git(list(args), cwd=workspace, env=genv, timeout=timeout if net else LOCAL_TIMEOUT, stdin=stdin)
        return _check(what, result)

    excluded = _excluded_set(workspace, [*exclude, state_dir, state_dir / CREDENTIALS_NAME])
    status = git("status", "--porcelain=v1", "-z", "--no-renames", "--untracked-files=all", what="git status")
    oversized: set[str] = set()
    to_add: list[str] = []
    for rel in _changed_paths(status.out):
        if _is_excluded(rel, excluded):
            continue
        if _too_big(workspace, rel, max_file_bytes):
            oversized.add(rel)
            continue
        to_add.append(rel)
    # Filter before staging: hashing a multi-GB checkpoint only to unstage it
    # would cost minutes and disk.
    if to_add:
        git("add", "-A", "--pathspec-from-file=-", "--pathspec-file-nul", what="git add",
            stdin=b"\0".join(os.fsencode(p) for p in to_add))  # fmt: skip
    # Codex may have run `git add` itself: whatever it staged is checked too.
    staged = _nul_list(git("diff", "--cached", "--name-only", "-z", "--no-renames", what="git diff").out)
    unstage = [p for p in staged if _is_excluded(p, excluded) or _too_big(workspace, p, max_file_bytes)]
    oversized.update(p for p in unstage if not _is_excluded(p, excluded))
    if unstage:
        git("reset", "-q", "--pathspec-from-file=-", "--pathspec-file-nul", what="git reset",
            stdin=b"\0".join(os.fsencode(p) for p in unstage))  # fmt: skip
    if oversized:
        listed = ", ".join(_shown(p) for p in sorted(oversized))
        notes.append(
            _warning(f"Not committed, larger than {max_file_bytes} bytes ({ENV_MAX_FILE}): {listed}")
        )

    quiet = _git(["diff", "--cached", "--quiet"], cwd=workspace, env=genv, timeout=LOCAL_TIMEOUT)
    if quiet.code not in (0, 1):
        raise _GitFailed("git diff --cached", quiet)
    has_staged = quiet.code == 1
    if has_staged:
        message = (
            f"[WIP] Flywheel experiment run (failed): {run_id}" if failed else f"Flywheel experiment run: {run_id}"
        )
        git("-c", f"user.name={BOT_NAME}", "-c", f"user.email={BOT_EMAIL}",
            "commit", "-q", "--no-verify", "--no-gpg-sign", "-m", message, what="git commit")  # fmt: skip
    head = git("rev-parse", "HEAD", what="git rev-parse").out.strip()
    if head == marker.start:
        notes.append(_info("Code persistence: no changes to commit; nothing pushed."))
        return
    if not has_staged:
        notes.append(_info("Code persistence: nothing new to commit; pushing the commits made during the run."))

    cred_file = state_dir / CREDENTIALS_NAME
    try:
        fresh = refresh_token()
        problem = None if fresh else "the backend returned no token"
    except Exception as exc:  # noqa: BLE001 - any refresh failure means "use the old token"
        fresh, problem = None, type(exc).__name__
    if fresh:
        secrets.add(fresh)
        write_credentials(cred_file, marker.repo_url, fresh)
    else:
        notes.append(_warning(f"Could not refresh the GitHub token ({problem}); pushing with the current one."))

    branch = ctx.branch_name
    shown = mask_url_userinfo(marker.repo_url)
    # Push to the URL we cloned, not whatever `origin` now says: .git/config is
    # writable by Codex, and the token must only ever go to the repository's host.
    git(*_cred_args(cred_file), "push", "--no-verify", marker.repo_url, f"HEAD:refs/heads/{branch}",
        what=f"git push of {branch} to {shown}", net=True)  # fmt: skip
    notes.append(_info(f"Pushed {head[:12]} to branch {branch} of {shown}."))
