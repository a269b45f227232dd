"""flywheel-bootstrap: run Flywheel jobs with Codex on your own machine."""

__version__ = "0.2.0"
