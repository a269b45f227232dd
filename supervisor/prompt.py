"""The text given to Codex: the run prompt (supervisor/prompt.py is its only definition) and the fix prompt
used to resume a run that ended without artifacts (docs/design.md: The run, step by step).

The wording is for a model: short imperative rules, one concrete example per
artifact type, nothing it has to guess.
"""

from __future__ import annotations

from workers.common.names import MANIFEST_NAME as MANIFEST

HEAD_LIMIT = 2000

# Problems build_fix_prompt knows how to explain; anything else is quoted as is.
MISSING = "missing"
EMPTY = "empty"
MALFORMED = "malformed"

MANIFEST_FORMAT = f"""\
Manifest format ($FLYWHEEL_WORKSPACE/{MANIFEST}):
- Valid JSON: a top-level array of objects
  {{"artifact_type": "<type>", "payload": {{...}}}}.
- "path" values are relative to the workspace and must stay inside it (no
  absolute paths, no ".."). Files named by "path" are uploaded with the artifact.
- Supported types, one example each:
  text:          {{"artifact_type": "text", "payload": {{"content": "Best val accuracy 0.913 at epoch 7"}}}}
                 (or {{"path": "results/summary.md"}})
  table:         {{"artifact_type": "table", "payload": {{"path": "results/metrics.csv", "format": "csv"}}}}
  json:          {{"artifact_type": "json", "payload": {{"path": "results/config.json"}}}}
  image:         {{"artifact_type": "image", "payload": {{"path": "plots/loss.png", "format": "png"}}}}
  html:          {{"artifact_type": "html", "payload": {{"path": "report/index.html"}}}}
  vega:          {{"artifact_type": "vega", "payload": {{"path": "plots/loss.vl.json"}}}}
                 (or "spec": an inline Vega-Lite object)
  diff_carousel: {{"artifact_type": "diff_carousel", "payload": {{"title": "Model changes",
                 "diffs": [{{"title": "Cosine LR schedule", "path": "train.py",
                 "summary": "Replace step decay", "diff": "--- a/train.py\\n+++ b/train.py\\n@@ ..."}}]}}}}
- Model checkpoints (.pt, .safetensors, ...) may be listed with a "path"; they are
  uploaded as checkpoints. Very large files (over 16 MiB by default) are not uploaded."""

ENGINEER_CONTEXT = f"""\
You are a Flywheel AI engineer running unattended on a GPU machine. Nobody will
answer questions or approve steps.
- Work autonomously until the task is done; make reasonable assumptions and note them.
- Execute, don't describe: run the commands, write the code, train, evaluate.
- Print short progress lines as you go (what you start, key numbers, what finished);
  everything you print is streamed to the user.
- Your working directory is $FLYWHEEL_WORKSPACE.
- Deliver your results as artifacts: list them in $FLYWHEEL_WORKSPACE/{MANIFEST}
  (the workspace root, nowhere else). Write it early and keep it up to date as
  results appear; it is read when you finish. Without it the user sees no results.

{MANIFEST_FORMAT}"""


def build_prompt(task: str, instructions: str) -> str:
    """The full prompt: engineer context, then the task, then the workspace
    instructions from the user's config."""
    return (
        f"{ENGINEER_CONTEXT}\n\n"
        f"Task Description:\n{task.strip()}\n\n"
        f"Workspace Instructions:\n{instructions.strip()}\n"
    )


def build_fix_prompt(problem: str, detail: str | None, head: str | None) -> str:
    """The prompt for ``codex exec resume`` after a run ended without artifacts.

    ``problem`` is ``MISSING``, ``EMPTY`` or ``MALFORMED`` (other text is used
    as is); ``detail`` is the parser's message; ``head`` is the start of the
    file (cut to 2,000 characters here as well; omitted when blank).
    """
    where = f"$FLYWHEEL_WORKSPACE/{MANIFEST}"
    if problem == MISSING:
        what = f"The artifact manifest {where} does not exist."
    elif problem == EMPTY:
        what = f"The artifact manifest {where} lists no artifacts."
    elif problem == MALFORMED:
        what = f"The artifact manifest {where} is malformed and could not be read."
    else:
        what = f"The artifact manifest {where} is not usable: {problem}."
    parts = [f"You finished, but no artifacts were collected. {what}"]
    if detail:
        parts.append(f"Parser message: {detail.strip()}")
    if head and head.strip():
        cut = head[:HEAD_LIMIT]
        more = " (cut)" if len(head) > HEAD_LIMIT else ""
        parts.append(f"The file begins with{more}:\n<<<\n{cut}\n>>>")
    parts.append(
        f"Write {where} now, listing the results you produced (files that exist in the "
        "workspace). Do not redo finished work. Then stop."
    )
    parts.append(MANIFEST_FORMAT)
    return "\n\n".join(parts) + "\n"
