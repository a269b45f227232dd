"""Code persistence against real git: bare repositories as remotes (file URLs), and a
smart-HTTP git server on 127.0.0.1 that demands the token, for the credential path."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from supervisor.git_persist import (
    CREDENTIALS_NAME,
    DEFAULT_MAX_COMMIT_FILE_BYTES,
    Note,
    RepoContext,
    RepoContextError,
    credential_config,
    credential_line,
    max_commit_file_bytes,
    persist,
    plan_persistence,
    prepare_repo,
)
from tests.loopback import serving
from workers.common.errors import ConfigError
from workers.common.redact import mask

TOKEN = "ghs_SECRETtoken0123456789"
NEW_TOKEN = "ghs_REFRESHEDtoken9876543210"
RUN_ID = "run-42"
SEED_ID = ["-c", "user.name=Seed", "-c", "user.email=seed@example.invalid"]


def git(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(["git", *SEED_ID, *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture(autouse=True)
def bare_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host with no git identity and no user/system git config."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in list(os.environ):
        if var.startswith(("GIT_AUTHOR", "GIT_COMMITTER")) or var.lower().endswith("_proxy"):
            monkeypatch.delenv(var)


@dataclass(frozen=True)
class Remote:
    path: Path
    url: str
    existing_tip: str

    def ctx(self, branch: str = "flywheel/run-42", base: str = "main") -> RepoContext:
        return RepoContext.from_payload(
            {
                "repo_url": self.url,
                "repo_owner": "acme",
                "repo_name": "model",
                "branch_name": branch,
                "base_branch": base,
            }
        )

    def files(self, ref: str) -> set[str]:
        return set(git("--git-dir", str(self.path), "ls-tree", "-r", "--name-only", ref).splitlines())

    def log(self, ref: str, fmt: str = "%s") -> str:
        return git("--git-dir", str(self.path), "log", "-1", f"--format={fmt}", ref)

    def has(self, ref: str) -> bool:
        proc = subprocess.run(
            ["git", "--git-dir", str(self.path), "rev-parse", "--verify", "-q", ref], capture_output=True
        )
        return proc.returncode == 0


def make_remote(root: Path) -> tuple[Path, str]:
    """A bare repository with `main` (README.md) and `existing` (one more file)."""
    bare = root / "remote.git"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    seed = root / "seed"
    git("clone", "-q", str(bare), str(seed))
    (seed / "README.md").write_text("hello\n")
    git("add", "README.md", cwd=seed)
    git("commit", "-q", "-m", "initial", cwd=seed)
    git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=seed)
    git("checkout", "-q", "-b", "existing", cwd=seed)
    (seed / "from-existing.txt").write_text("earlier run\n")
    git("add", "from-existing.txt", cwd=seed)
    git("commit", "-q", "-m", "earlier run", cwd=seed)
    git("push", "-q", "origin", "existing", cwd=seed)
    return bare, git("rev-parse", "HEAD", cwd=seed)


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    bare, tip = make_remote(tmp_path)
    return Remote(bare, bare.as_uri(), tip)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    workspace = tmp_path / "runs" / RUN_ID
    workspace.mkdir(parents=True)
    state = tmp_path / "state" / RUN_ID
    state.mkdir(parents=True, mode=0o700)
    return workspace, state


def do_persist(ctx: RepoContext, workspace: Path, state: Path, **kw: object) -> list[Note]:
    opts: dict[str, object] = {
        "failed": False,
        "exclude": set(),
        "refresh_token": lambda: NEW_TOKEN,
        "max_file_bytes": DEFAULT_MAX_COMMIT_FILE_BYTES,
    }
    opts.update(kw)
    return persist(ctx, workspace, state, RUN_ID, **opts)  # type: ignore[arg-type]


def levels(notes: list[Note]) -> list[str]:
    return [n.level for n in notes]


def assert_no_token_in(root: Path, *tokens: str) -> None:
    for dirpath, _, names in os.walk(root):
        for name in names:
            data = (Path(dirpath) / name).read_bytes()
            for token in tokens:
                assert token.encode() not in data, f"token found in {Path(dirpath) / name}"


# ------------------------------------------------------------------ file remotes


def test_clone_new_branch_commit_and_push(remote: Remote, dirs: tuple[Path, Path]) -> None:
    workspace, state = dirs
    ctx = remote.ctx()
    notes = prepare_repo(ctx, TOKEN, workspace, state)
    assert levels(notes) == ["info"] and "new branch flywheel/run-42" in notes[0].message
    assert (workspace / "README.md").read_text() == "hello\n"
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=workspace) == "flywheel/run-42"
    assert git("rev-parse", "--is-shallow-repository", cwd=workspace) == "true"
    assert git("config", "--local", "user.name", cwd=workspace) == "Flywheel Bot"
    cred = state / CREDENTIALS_NAME
    assert stat.S_IMODE(cred.stat().st_mode) == 0o600
    helpers = subprocess.run(
        ["git", "config", "--local", "--get-all", "credential.helper"], cwd=workspace, capture_output=True, text=True
    ).stdout
    assert helpers == f"\nstore --file={cred}\n"

    # What Codex leaves behind.
    (workspace / "flywheel_prompt.txt").write_text("the prompt\n")
    (workspace / "flywheel_artifacts.json").write_text("[]")
    (workspace / "train.py").write_text("print('hi')\n")
    (workspace / "results").mkdir()
    (workspace / "results" / "plot.png").write_bytes(b"\x89PNG")
    (workspace / "results" / "table.csv").write_text("a,b\n")
    (workspace / "outputs").mkdir()
    (workspace / "outputs" / "log.txt").write_text("x\n")
    (workspace / "model.pt").write_bytes(b"\0" * 5000)
    (workspace / "README.md").unlink()

    notes = do_persist(
        ctx,
        workspace,
        state,
        exclude={Path("results/plot.png"), workspace / "outputs"},
        max_file_bytes=1000,
    )
    assert levels(notes) == ["warning", "info"], notes
    assert "model.pt" in notes[0].message and "FLYWHEEL_GIT_MAX_COMMIT_FILE_SIZE_BYTES" in notes[0].message
    assert "Pushed" in notes[1].message

    ref = "refs/heads/flywheel/run-42"
    assert remote.files(ref) == {"train.py", "results/table.csv"}
    assert remote.log(ref, "%s|%an|%ae") == f"Flywheel experiment run: {RUN_ID}|Flywheel Bot|bot@flywheel.invalid"
    assert not cred.exists()  # no token left on disk after the push
    assert TOKEN not in git("remote", "-v", cwd=workspace)
    assert_no_token_in(workspace, TOKEN, NEW_TOKEN)
    assert all(TOKEN not in n.message for n in notes)


def test_a_file_name_that_is_not_utf8_is_committed_with_the_rest(remote: Remote, dirs: tuple[Path, Path]) -> None:
    # Its name used to come back from `git status` mangled, so `git add` of
    # the whole list failed and none of the run's changes were pushed.
    workspace, state = dirs
    ctx = remote.ctx()
    prepare_repo(ctx, TOKEN, workspace, state)
    (workspace / "train.py").write_text("print('hi')\n")
    odd = os.fsdecode(b"data-\xff.txt")
    (workspace / odd).write_text("x\n")
    (workspace / os.fsdecode(b"big-\xfe.bin")).write_bytes(b"\0" * 5000)
    notes = do_persist(ctx, workspace, state, max_file_bytes=1000)
    assert levels(notes) == ["warning", "info"], notes
    assert "big-\ufffd.bin" in notes[0].message and "Pushed" in notes[1].message
    ls = subprocess.run(["git", "--git-dir", str(remote.path), "ls-tree", "-r", "-z", "--name-only",
                         "refs/heads/flywheel/run-42"], capture_output=True, check=True).stdout
    assert set(ls.split(b"\0")) - {b""} == {b"README.md", b"train.py", b"data-\xff.txt"}


def test_existing_branch_is_checked_out_from_remote(remote: Remote, dirs: tuple[Path, Path]) -> None:
    workspace, state = dirs
    ctx = remote.ctx(branch="existing")
    notes = prepare_repo(ctx, TOKEN, workspace, state)
    assert "existing branch existing" in notes[-1].message
    assert (workspace / "from-existing.txt").exists()
    assert git("rev-parse", "HEAD", cwd=workspace) == remote.existing_tip
    assert git("rev-parse", "--abbrev-ref", "@{upstream}", cwd=workspace) == "origin/existing"

    (workspace / "more.txt").write_text("more\n")
    assert levels(do_persist(ctx, workspace, state)) == ["info"]
    assert remote.log("existing", "%P") == remote.existing_tip  # history continues
    assert remote.files("existing") == {"README.md", "from-existing.txt", "more.txt"}


def test_failed_run_is_committed_as_wip(remote: Remote, dirs: tuple[Path, Path]) -> None:
    workspace, state = dirs
    ctx = remote.ctx()
    prepare_repo(ctx, TOKEN, workspace, state)
    (workspace / "half.py").write_text("# unfinished\n")
    do_persist(ctx, workspace, state, failed=True)
    assert remote.log("flywheel/run-42") == f"[WIP] Flywheel experiment run (failed): {RUN_ID}"


def test_nothing_to_commit_means_no_push(remote: Remote, dirs: tuple[Path, Path]) -> None:
    workspace, state = dirs
    ctx = remote.ctx()
    prepare_repo(ctx, TOKEN, workspace, state)
    (workspace / "flywheel_prompt.txt").write_text("p")
    (workspace / "flywheel_artifacts.json").write_text("[]")
    (workspace / "art.txt").write_text("artifact only")
    refreshed: list[bool] = []
    notes = do_persist(ctx, workspace, state, exclude={Path("art.txt")}, refresh_token=lambda: refreshed.append(True))
    assert notes == [Note("info", "Code persistence: no changes to commit; nothing pushed.")]
    assert not remote.has("refs/heads/flywheel/run-42")
    assert refreshed == []


def test_files_codex_staged_itself_are_still_filtered(remote: Remote, dirs: tuple[Path, Path]) -> None:
    workspace, state = dirs
    ctx = remote.ctx()
    prepare_repo(ctx, TOKEN, workspace, state)
    (workspace / "art.txt").write_text("artifact")
    (workspace / "big.bin").write_bytes(b"\1" * 300)
    (workspace / "code [v2]*.py").write_text("x = 1\n")  # glob characters are literal
    git("add", "-A", cwd=workspace)
    notes = do_persist(ctx, workspace, state, exclude={workspace / "art.txt"}, max_file_bytes=100)
    assert levels(notes) == ["warning", "info"] and "big.bin" in notes[0].message
    assert remote.files("flywheel/run-42") == {"README.md", "code [v2]*.py"}


def test_commits_codex_made_are_pushed(remote: Remote, dirs: tuple[Path, Path]) -> None:
    workspace, state = dirs
    ctx = remote.ctx()
    prepare_repo(ctx, TOKEN, workspace, state)
    (workspace / "a.py").write_text("a\n")
    git("add", "a.py", cwd=workspace)
    git("commit", "-q", "-m", "codex did this", cwd=workspace)
    notes = do_persist(ctx, workspace, state)
    assert "pushing the commits" in notes[0].message
    assert remote.log("flywheel/run-42") == "codex did this"


def test_push_rejected_is_a_warning(remote: Remote, dirs: tuple[Path, Path]) -> None:
    workspace, state = dirs
    hook = remote.path / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'denied by policy' >&2\nexit 1\n")
    hook.chmod(0o755)
    ctx = remote.ctx()
    prepare_repo(ctx, TOKEN, workspace, state)
    (workspace / "x.py").write_text("x\n")
    notes = do_persist(ctx, workspace, state)
    assert levels(notes) == ["warning"]
    assert "git push of flywheel/run-42" in notes[0].message and "denied by policy" in notes[0].message
    assert not remote.has("refs/heads/flywheel/run-42")
    # The commit exists locally: nothing Codex did is lost.
    assert git("log", "-1", "--format=%s", cwd=workspace) == f"Flywheel experiment run: {RUN_ID}"


def boom() -> str:
    raise RuntimeError(f"backend down, token {TOKEN}")


@pytest.mark.parametrize("refresh", [lambda: None, boom], ids=["no-token", "raises"])
def test_refresh_failure_pushes_with_old_token(remote: Remote, dirs: tuple[Path, Path], refresh: object) -> None:
    workspace, state = dirs
    ctx = remote.ctx()
    prepare_repo(ctx, TOKEN, workspace, state)
    (workspace / "x.py").write_text("x\n")
    notes = do_persist(ctx, workspace, state, refresh_token=refresh)
    assert levels(notes) == ["warning", "info"]
    assert "Could not refresh the GitHub token" in notes[0].message and TOKEN not in notes[0].message
    assert remote.has("refs/heads/flywheel/run-42")


def test_workspace_not_empty_skips_persistence(remote: Remote, dirs: tuple[Path, Path]) -> None:
    workspace, state = dirs
    (workspace / "mine.txt").write_text("user data")
    notes = prepare_repo(remote.ctx(), TOKEN, workspace, state)
    assert levels(notes) == ["warning"] and "not empty (mine.txt)" in notes[0].message
    assert sorted(p.name for p in workspace.iterdir()) == ["mine.txt"]
    assert not (state / CREDENTIALS_NAME).exists()
    notes = do_persist(remote.ctx(), workspace, state)
    assert levels(notes) == ["info"] and "skipped" in notes[0].message


def test_persist_never_touches_a_repository_it_did_not_prepare(remote: Remote, dirs: tuple[Path, Path]) -> None:
    workspace, state = dirs
    git("clone", "-q", remote.url, str(workspace))  # the user's own checkout
    (workspace / "x.py").write_text("x\n")
    notes = do_persist(remote.ctx(branch="main"), workspace, state)
    assert levels(notes) == ["info"] and "not set up" in notes[0].message
    assert git("status", "--porcelain", cwd=workspace) == "?? x.py"


def test_clone_failure_is_a_warning_and_disables_persist(remote: Remote, dirs: tuple[Path, Path]) -> None:
    workspace, state = dirs
    ctx = remote.ctx(base="no-such-branch")
    notes = prepare_repo(ctx, TOKEN, workspace, state)
    assert levels(notes) == ["warning"] and "git clone of no-such-branch failed" in notes[0].message
    assert not (state / CREDENTIALS_NAME).exists()
    assert levels(do_persist(ctx, workspace, state)) == ["info"]


def test_restart_reuses_the_clone(remote: Remote, dirs: tuple[Path, Path]) -> None:
    workspace, state = dirs
    ctx = remote.ctx()
    prepare_repo(ctx, TOKEN, workspace, state)
    (workspace / "work.py").write_text("from the first start\n")
    notes = prepare_repo(ctx, NEW_TOKEN, workspace, state)
    assert levels(notes) == ["info"] and "Reusing" in notes[0].message
    assert (workspace / "work.py").exists()
    do_persist(ctx, workspace, state)
    assert "work.py" in remote.files("flywheel/run-42")


def test_branch_equal_to_base(remote: Remote, dirs: tuple[Path, Path]) -> None:
    workspace, state = dirs
    ctx = remote.ctx(branch="main")
    assert "base branch" in prepare_repo(ctx, TOKEN, workspace, state)[0].message
    (workspace / "y.py").write_text("y\n")
    do_persist(ctx, workspace, state)
    assert remote.log("main") == f"Flywheel experiment run: {RUN_ID}"


# ------------------------------------------------------------- https credential path


@dataclass
class GitHttpState:
    root: Path
    token: str
    unauthorized: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def http_remote(tmp_path: Path) -> Iterator[tuple[Remote, GitHttpState]]:
    """Smart-HTTP git (git http-backend as CGI) that wants Basic x-access-token:<token>."""
    bare, tip = make_remote(tmp_path)
    state = GitHttpState(root=tmp_path, token=TOKEN)

    class Handler(BaseHTTPRequestHandler):
        def handle_git(self) -> None:
            want = base64.b64encode(f"x-access-token:{state.token}".encode()).decode()
            if self.headers.get("Authorization") != f"Basic {want}":
                with state.lock:
                    state.unauthorized += 1
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path, _, query = self.path.partition("?")
            env = {
                "PATH": os.environ["PATH"],
                "HOME": os.environ["HOME"],
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_PROJECT_ROOT": str(state.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "REQUEST_METHOD": self.command,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_USER": "x-access-token",
                "REMOTE_ADDR": "127.0.0.1",
            }
            if self.headers.get("Content-Encoding"):
                env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
            if self.headers.get("Git-Protocol"):
                env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
            out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
            head, _, payload = out.partition(b"\r\n\r\n")
            status, headers = 200, []
            for line in head.decode().split("\r\n"):
                key, _, value = line.partition(":")
                if key.lower() == "status":
                    status = int(value.split()[0])
                elif key and key.lower() != "content-length":
                    headers.append((key, value.strip()))
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = handle_git

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as base:
        yield Remote(bare, f"{base}/remote.git", tip), state


def test_token_goes_through_the_credential_store(
    http_remote: tuple[Remote, GitHttpState], dirs: tuple[Path, Path]
) -> None:
    remote, server = http_remote
    workspace, state = dirs
    ctx = remote.ctx()
    notes = prepare_repo(ctx, TOKEN, workspace, state)
    assert levels(notes) == ["info"], notes
    assert server.unauthorized >= 1  # git asked without credentials first, then used ours
    cred = state / CREDENTIALS_NAME
    # git's store helper rewrites the file after a good login (it spells the port
    # as %3a), so compare the line's start only.
    lines = cred.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"http://x-access-token:{TOKEN}@127.0.0.1")
    assert stat.S_IMODE(cred.stat().st_mode) == 0o600
    assert git("remote", "get-url", "origin", cwd=workspace) == remote.url
    assert_no_token_in(workspace, TOKEN)

    # The backend rotates the token: only the refreshed one is accepted for the push.
    server.token = NEW_TOKEN
    (workspace / "z.py").write_text("z\n")
    notes = do_persist(ctx, workspace, state, refresh_token=lambda: NEW_TOKEN)
    assert levels(notes) == ["info"], notes
    assert remote.files("flywheel/run-42") == {"README.md", "z.py"}
    assert_no_token_in(workspace, TOKEN, NEW_TOKEN)
    assert not cred.exists()


def test_rejected_token_is_redacted_from_the_warning(
    http_remote: tuple[Remote, GitHttpState], dirs: tuple[Path, Path]
) -> None:
    remote, server = http_remote
    workspace, state = dirs
    ctx = remote.ctx()
    prepare_repo(ctx, TOKEN, workspace, state)
    server.token = "something-else"
    (workspace / "z.py").write_text("z\n")
    notes = do_persist(ctx, workspace, state, refresh_token=lambda: None)
    assert levels(notes) == ["warning", "warning"]
    assert "git push" in notes[1].message
    assert all(TOKEN not in n.message for n in notes)


# ------------------------------------------------------------------ pure functions


def payload(**overrides: object) -> dict[str, object]:
    ctx: dict[str, object] = {
        "repo_url": "https://github.com/acme/model.git",
        "repo_owner": "acme",
        "repo_name": "model",
        "branch_name": "flywheel/run-1",
        "base_branch": "main",
        "fork_owner": "someone",
        "unknown_key": {"ignored": True},
    }
    ctx.update(overrides)
    return {"repo_context": ctx, "github_token": TOKEN}


def test_plan_persistence_accepts_a_good_context() -> None:
    ctx, notes = plan_persistence(payload())
    assert notes == [] and ctx is not None
    assert (ctx.repo_url, ctx.branch_name, ctx.base_branch) == (
        "https://github.com/acme/model.git",
        "flywheel/run-1",
        "main",
    )
    assert ctx.fork_fields == (("fork_owner", "someone"),)
    assert plan_persistence({"prompt": "x"}) == (None, [])


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"branch_name": None}, "branch_name is missing"),
        ({"repo_owner": 3}, "repo_owner is missing"),
        ({"repo_url": "git@github.com:acme/model.git"}, "only https and file"),
        ({"repo_url": "http://github.com/acme/model.git"}, "unencrypted"),
        ({"repo_url": f"ftp://x-access-token:{TOKEN}@host/r"}, "only https and file"),
        ({"branch_name": "--upload-pack=evil"}, "starts with '-'"),
        ({"base_branch": "a..b"}, "not a branch name"),
        ({"branch_name": "x y"}, "space"),
    ],
)
def test_plan_persistence_rejects_bad_contexts(overrides: dict[str, object], needle: str) -> None:
    ctx, notes = plan_persistence(payload(**overrides))
    assert ctx is None and levels(notes) == ["warning"]
    assert needle in notes[0].message and TOKEN not in notes[0].message


def test_plan_persistence_needs_a_token_and_an_object() -> None:
    p = payload()
    del p["github_token"]
    assert "no github_token" in plan_persistence(p)[1][0].message
    assert "not an object" in plan_persistence({"repo_context": ["x"], "github_token": "t"})[1][0].message
    with pytest.raises(RepoContextError):
        RepoContext.from_payload({})


def test_loopback_http_is_allowed() -> None:
    ctx, notes = plan_persistence(payload(repo_url="http://127.0.0.1:8080/r.git"))
    assert ctx is not None and notes == []


def test_credential_line() -> None:
    assert credential_line("https://github.com/a/b.git", "tok") == "https://x-access-token:tok@github.com"
    assert credential_line("https://git.example.com:8443/a/b", "tok") == "https://x-access-token:tok@git.example.com:8443"
    assert credential_line("https://me:old@ghe.corp/a", "t/k@n:") == "https://x-access-token:t%2Fk%40n%3A@ghe.corp"
    assert credential_line("file:///srv/repo.git", "tok") is None


def test_credential_config_resets_user_helpers(tmp_path: Path) -> None:
    cred = tmp_path / "my state" / "git-credentials"
    assert credential_config(cred) == [
        ("credential.helper", ""),
        ("credential.helper", f"store --file='{cred}'"),
    ]


def test_max_commit_file_bytes() -> None:
    assert max_commit_file_bytes({}) == 95 * 1024 * 1024
    assert max_commit_file_bytes({"FLYWHEEL_GIT_MAX_COMMIT_FILE_SIZE_BYTES": "1000"}) == 1000
    with pytest.raises(ConfigError, match="FLYWHEEL_GIT_MAX_COMMIT_FILE_SIZE_BYTES"):
        max_commit_file_bytes({"FLYWHEEL_GIT_MAX_COMMIT_FILE_SIZE_BYTES": "big"})
    with pytest.raises(ConfigError):
        max_commit_file_bytes({"FLYWHEEL_GIT_MAX_COMMIT_FILE_SIZE_BYTES": "-1"})


def test_mask() -> None:
    text = f"fatal: https://x-access-token:{TOKEN}@github.com/a: auth {TOKEN} a%2Fb"
    out = mask(text, [TOKEN, "a/b"])
    assert TOKEN not in out and "a%2Fb" not in out
    assert out == "fatal: https://***@github.com/a: auth *** ***"
