"""The run prompt and the fix prompt (docs/design.md: The run, step by step)."""

from __future__ import annotations

import json
import re

import pytest

from supervisor.prompt import EMPTY, MALFORMED, MISSING, build_fix_prompt, build_prompt

TYPES = ("text", "table", "json", "image", "html", "vega", "diff_carousel")


def test_prompt_sections_in_order() -> None:
    prompt = build_prompt("Train a ResNet on CIFAR-10.\n", "\nUse /mnt/work.\n")
    context_end = prompt.index("Task Description:")
    instructions_at = prompt.index("Workspace Instructions:")
    assert 0 < context_end < instructions_at
    assert prompt[context_end:instructions_at].strip() == "Task Description:\nTrain a ResNet on CIFAR-10."
    assert prompt[instructions_at:] == "Workspace Instructions:\nUse /mnt/work.\n"


def test_engineer_context_rules() -> None:
    context = build_prompt("t", "i").split("Task Description:")[0]
    low = context.lower()
    assert "autonomous" in low
    assert "execute, don't describe" in low
    assert "progress" in low
    assert "$FLYWHEEL_WORKSPACE/flywheel_artifacts.json" in context
    assert "top-level array" in low
    assert "relative to the workspace" in low
    for t in TYPES:
        assert f'"artifact_type": "{t}"' in context, t


def _examples(text: str) -> dict[str, str]:
    """Each example line's JSON object, by artifact type (continuation lines joined)."""
    found: dict[str, str] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s+(\w+):\s+(\{.*)", line)
        if not m:
            continue
        body = m.group(2)
        j = i + 1
        while body.count("{") != body.count("}") and j < len(lines):
            body += " " + lines[j].strip()
            j += 1
        found[m.group(1)] = body
    return found


def test_every_example_is_valid_json_of_its_type() -> None:
    examples = _examples(build_prompt("t", "i"))
    assert set(examples) == set(TYPES)
    for kind, body in examples.items():
        obj = json.loads(body)
        assert obj["artifact_type"] == kind
        assert isinstance(obj["payload"], dict)
        path = obj["payload"].get("path")
        assert path is None or not path.startswith(("/", ".."))
    diff = json.loads(examples["diff_carousel"])["payload"]
    assert set(diff["diffs"][0]) == {"title", "path", "summary", "diff"}


def test_task_and_instructions_kept_verbatim() -> None:
    task = 'Use {braces} and "quotes" and $HOME\nsecond line'
    instructions = "{0} {name} %s"
    prompt = build_prompt(task, instructions)
    assert task in prompt and instructions in prompt


def test_fix_prompt_missing() -> None:
    text = build_fix_prompt(MISSING, None, None)
    assert "flywheel_artifacts.json" in text
    assert "does not exist" in text
    assert "top-level array" in text.lower()
    assert "begins with" not in text


def test_fix_prompt_empty() -> None:
    text = build_fix_prompt(EMPTY, None, "[]")
    assert "lists no artifacts" in text
    assert "[]" in text


def test_fix_prompt_malformed_with_message_and_head() -> None:
    head = '{"artifact_type": "text", payload: oops'
    text = build_fix_prompt(MALFORMED, "Expecting property name enclosed in double quotes: line 1 column 28", head)
    assert "malformed" in text
    assert "Expecting property name" in text
    assert head in text
    for t in TYPES:
        assert f'"artifact_type": "{t}"' in text


def test_fix_prompt_head_cut_to_2000_chars() -> None:
    head = "a" * 1999 + "bZZZZ"
    text = build_fix_prompt(MALFORMED, "bad", head)
    assert "a" * 1999 + "b" in text
    quoted = text.split("<<<\n")[1].split("\n>>>")[0]
    assert quoted == "a" * 1999 + "b"
    assert "(cut)" in text


@pytest.mark.parametrize("problem", ["a scalar, not a list", "unreadable"])
def test_fix_prompt_other_problem_text_used(problem: str) -> None:
    assert problem in build_fix_prompt(problem, None, None)


def test_fix_prompt_fits_on_a_command_line() -> None:
    # It is passed to `codex exec resume` as one argument.
    text = build_fix_prompt(MALFORMED, "x" * 300, "y" * 5000)
    assert len(text.encode()) < 8000


def test_fix_prompt_blank_head_not_quoted() -> None:
    text = build_fix_prompt(EMPTY, None, "  \n")
    assert "<<<" not in text
    assert "lists no artifacts" in text
