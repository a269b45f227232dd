"""Names bootstrap relies on: the files it and Codex share in the workspace,
and the one rule for a run id (the command line and the local backend both
apply it)."""

from __future__ import annotations

MANIFEST_NAME = "flywheel_artifacts.json"  # Codex lists its artifacts here
PROMPT_NAME = "flywheel_prompt.txt"  # bootstrap writes Codex's prompt here
# In the run's state folder: the GitHub token for git, while a push may need it.
CREDENTIALS_NAME = "git-credentials"

MAX_RUN_ID_LENGTH = 128

# A run id becomes a path component and a URL path segment, so only characters
# that are safe in both are allowed; the first must be a letter or digit, which
# also rules out ".", ".." and ids that look like command-line options. (Sets,
# not a regular expression: `re` would cost the mock agent, which imports this
# module, a third of its start.)
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_RUN_ID_CHARS = _ALNUM | frozenset("._-")


def run_id_problem(run_id: str) -> str | None:
    """What is wrong with `run_id` (in words, naming it), or None when it is
    1-128 characters of ``[A-Za-z0-9._-]`` starting with a letter or digit and
    without ``..``."""
    if not run_id:
        return "run id is empty"
    shown = repr(run_id) if len(run_id) <= 80 else repr(run_id[:80]) + "…"
    if len(run_id) > MAX_RUN_ID_LENGTH:
        return f"run id {shown} is {len(run_id)} characters long; at most {MAX_RUN_ID_LENGTH} allowed"
    if any(c.isspace() for c in run_id):
        return f"run id {shown} contains white space"
    if any(ord(c) < 32 or ord(c) == 127 for c in run_id):
        return f"run id {shown} contains control characters"
    if "/" in run_id or "\\" in run_id:
        return f"run id {shown} contains a slash; it must be a single path component"
    if ".." in run_id:
        return f"run id {shown} contains '..'"
    if run_id[0] not in _ALNUM or not _RUN_ID_CHARS.issuperset(run_id):
        return f"run id {shown} is not valid: use letters, digits, '.', '_' and '-', starting with a letter or digit"
    return None
