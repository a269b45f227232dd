"""Names of the files bootstrap and Codex share in the workspace."""

MANIFEST_NAME = "flywheel_artifacts.json"  # Codex lists its artifacts here
PROMPT_NAME = "flywheel_prompt.txt"  # bootstrap writes Codex's prompt here
