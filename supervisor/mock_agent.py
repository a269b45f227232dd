"""The built-in mock agent used when BOOTSTRAP_MOCK_CODEX is set (README: Configuration, BOOTSTRAP_MOCK_CODEX).

It stands where `codex` stands and takes the same command line, so mock runs
go through exactly the pipeline real runs do (stdout shipped line by line,
manifest read, resume on a missing manifest):

    python -m supervisor.mock_agent exec --json --cd DIR --skip-git-repo-check [sandbox flags] -
    python -m supervisor.mock_agent exec --json --skip-git-repo-check [sandbox flags] --cd DIR resume THREAD_ID PROMPT

It reads its prompt from stdin to EOF (as Codex does), prints a thread id and a
few realistic JSON Lines events over about 0.05 s, writes `mock_report.md` and
a manifest listing it as a text artifact, and exits 0. No model is called.
It is deliberately self-contained (stdlib only) and separate from the richer
`tests/fake_codex` test tool. With BOOTSTRAP_MOCK_WORK_S=S the first run keeps
"training" for S seconds (an event every quarter second), long enough for
`demo --take-over` to take it over.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

if not __package__:
    # Started as a file with `-S` (see `command`): the folder above ours holds
    # `workers` too, and is on no path without site-packages.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from workers.common.names import MANIFEST_NAME as MANIFEST  # noqa: E402

REPORT = "mock_report.md"
VERSION = "0.169.0"
# The whole demo takes about this long: enough to see events stream in.
_PAUSE = 0.01
_VALUE_FLAGS = frozenset({"--cd", "-C", "--sandbox", "-s", "--model", "-m", "--profile", "-p", "--color"})
_MULTI_FLAGS = frozenset({"-c", "--config", "--image", "-i", "--add-dir", "--enable", "--disable"})
_BOOL_FLAGS = frozenset({
    "--json", "--experimental-json", "--skip-git-repo-check", "--full-auto",
    "--dangerously-bypass-approvals-and-sandbox", "--yolo", "--oss",
})
# After `resume` Codex accepts only its global flags: not --cd, not --sandbox.
_RESUME_FLAGS = frozenset({
    "--json", "--experimental-json", "--skip-git-repo-check", "--full-auto",
    "--dangerously-bypass-approvals-and-sandbox", "--yolo", "--last", "--model", "-m", "-c", "--config",
})


class UsageError(Exception):
    """Bad command line: message on stderr, exit 2 (as Codex's parser does)."""


def command() -> tuple[str, ...]:
    """How bootstrap starts the mock agent where it would start `codex`: as a
    file, without `site` (no site-packages, no editable-install finder: half of
    this short-lived process's start-up; it needs only the standard library and
    `workers.common.names`)."""
    return (sys.executable, "-S", os.path.abspath(__file__))


class Invocation:
    """What the command line asked for. (A plain class: `dataclasses` would
    import `inspect` and more, `typing` and `pathlib` a few ms each, a large
    share of this short-lived process's start-up.)"""

    __slots__ = ("cd", "resume_thread", "prompt_arg")

    def __init__(self, cd: str, resume_thread: str | None, prompt_arg: str | None) -> None:
        self.cd = cd
        self.resume_thread = resume_thread
        self.prompt_arg = prompt_arg


def _take_value(args: list[str], i: int, flag: str) -> tuple[str, int]:
    if "=" in flag:
        return flag.split("=", 1)[1], i
    if i >= len(args):
        raise UsageError(f"error: a value is required for '{flag}' but none was supplied")
    return args[i], i + 1


def parse(argv: list[str]) -> Invocation:
    """The exec/resume command line, validated like Codex validates it."""
    args = argv[1:] if argv[:1] == ["exec"] else list(argv)
    cd: str | None = None
    positionals: list[str] = []
    resumed = False
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "resume" and not resumed and not positionals:
            resumed = True
            continue
        if arg == "-" or not arg.startswith("-"):
            positionals.append(arg)
            continue
        name = arg.split("=", 1)[0]
        allowed = _RESUME_FLAGS if resumed else _VALUE_FLAGS | _MULTI_FLAGS | _BOOL_FLAGS
        if name not in allowed:
            raise UsageError(f"error: unexpected argument '{arg}' found")
        if name in _BOOL_FLAGS or name == "--last":
            continue
        value, i = _take_value(args, i, arg)
        if name in ("--cd", "-C"):
            cd = value
    if resumed:
        if not positionals:
            raise UsageError("error: resume needs a SESSION_ID")
        thread, prompt = positionals[0], (positionals[1] if len(positionals) > 1 else None)
        if len(positionals) > 2:
            raise UsageError(f"error: unexpected argument '{positionals[2]}' found")
        return Invocation(os.path.abspath(cd or "."), thread, prompt)
    if len(positionals) > 1:
        raise UsageError(f"error: unexpected argument '{positionals[1]}' found")
    return Invocation(os.path.abspath(cd or "."), None, positionals[0] if positionals else None)


def _read_stdin() -> str:
    # Codex reads stdin to EOF even with the prompt as an argument; so do we,
    # which also spares the writer of the prompt a broken pipe.
    if sys.stdin is None or sys.stdin.isatty():
        return ""
    try:
        return sys.stdin.buffer.read().decode("utf-8", "replace")
    except OSError:
        return ""


def task_line(prompt: str) -> str:
    """The first line of the task in a Flywheel prompt (or of the prompt)."""
    lines = prompt.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("Task Description:"):
            rest = line.split("Task Description:", 1)[1].strip()
            following = [ln.strip() for ln in lines[i + 1 :] if ln.strip()]
            return rest or (following[0] if following else "")
    return next((ln.strip() for ln in lines if ln.strip()), "")


def _emit(event: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    time.sleep(_PAUSE)


def _write_atomic(folder: str, name: str, text: str) -> None:
    # The artifact watcher may read at any moment: never show it half a file.
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(folder, name))


def _listing(folder: str) -> str:
    try:
        return "".join(f"{name}\n" for name in sorted(os.listdir(folder)))
    except OSError as exc:
        return f"ls: cannot open directory '{folder}': {exc.strerror}\n"


def _train(seconds: float) -> None:
    """Paced command events, like a training loop that reports each epoch."""
    deadline = time.monotonic() + seconds
    epoch = 0
    while time.monotonic() < deadline:
        command = f"bash -lc 'python train.py --epoch {epoch}'"
        _emit({"type": "item.completed", "item": {"id": f"item_t{epoch}", "type": "command_execution",
               "command": command, "aggregated_output": f"epoch {epoch}: loss={1 / (epoch + 1):.3f}\n",
               "exit_code": 0, "status": "completed"}})
        epoch += 1
        time.sleep(0.25)


def _uuid4() -> str:
    """A random (version 4) UUID, as `uuid.uuid4()` gives, without importing
    `uuid` (and `platform` with it)."""
    value = (int.from_bytes(os.urandom(16), "big") & ~(0xC000 << 48 | 0xF000 << 64)) | (0x8000 << 48 | 0x4000 << 64)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def run(invocation: Invocation, prompt: str) -> int:
    named = os.environ.get("FLYWHEEL_WORKSPACE")
    workspace = named if named and os.path.isdir(named) else invocation.cd
    thread_id = invocation.resume_thread or _uuid4()
    resumed = invocation.resume_thread is not None
    _emit({"type": "thread.started", "thread_id": thread_id})
    _emit({"type": "turn.started"})
    _emit({"type": "item.completed", "item": {"id": "item_0", "type": "reasoning",
           "text": f"**Resumed: {task_line(prompt)[:200]}**" if resumed else "**Planning a mock run**"}})
    command = "bash -lc ls"
    _emit({"type": "item.started", "item": {"id": "item_1", "type": "command_execution", "command": command,
           "aggregated_output": "", "exit_code": None, "status": "in_progress"}})
    _emit({"type": "item.completed", "item": {"id": "item_1", "type": "command_execution", "command": command,
           "aggregated_output": _listing(workspace), "exit_code": 0, "status": "completed"}})
    if not resumed:
        try:
            _train(float(os.environ.get("BOOTSTRAP_MOCK_WORK_S") or 0))
        except ValueError:
            pass
    report = (
        "# Mock agent report\n\n"
        "This run used bootstrap's built-in mock agent (BOOTSTRAP_MOCK_CODEX); no model was called.\n\n"
        f"- run: {os.environ.get('FLYWHEEL_RUN_ID', '(unknown)')}\n"
        f"- thread: {thread_id}{' (resumed)' if resumed else ''}\n"
        f"- task: {task_line(prompt)[:300] or '(empty)'}\n"
    )
    _write_atomic(workspace, REPORT, report)
    manifest = [{"artifact_type": "text", "payload": {"path": REPORT, "title": "Mock agent report"}}]
    _write_atomic(workspace, MANIFEST, json.dumps(manifest, indent=2) + "\n")
    _emit({"type": "item.completed", "item": {"id": "item_2", "type": "file_change", "status": "completed",
           "changes": [{"path": REPORT, "kind": "add"}, {"path": MANIFEST, "kind": "add"}]}})
    _emit({"type": "item.completed", "item": {"id": "item_3", "type": "agent_message",
           "text": f"Mock run finished: wrote {REPORT} and listed it in {MANIFEST}."}})
    _emit({"type": "turn.completed", "usage": {"input_tokens": 1200, "cached_input_tokens": 0, "output_tokens": 90}})
    return 0


def _on_signal(signum: int, _frame: object) -> None:
    os._exit(128 + signum)  # what Codex does: 143 on SIGTERM, 130 on SIGINT


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["--version"], ["-V"]):
        print(f"codex-cli {VERSION} (flywheel-bootstrap mock agent)")
        return 0
    if args[:2] == ["login", "status"]:
        print("Logged in (mock agent: no login needed)", file=sys.stderr)
        return 0
    try:
        invocation = parse(args)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    stdin_text = _read_stdin()
    prompt = stdin_text if invocation.prompt_arg in (None, "-") else invocation.prompt_arg
    if not os.path.isdir(invocation.cd):
        print(f"Error: --cd {invocation.cd}: No such file or directory", file=sys.stderr)
        return 1
    try:
        return run(invocation, prompt)
    except BrokenPipeError:
        os._exit(1)  # the reader is gone; nothing left to say


if __name__ == "__main__":
    sys.exit(main())
