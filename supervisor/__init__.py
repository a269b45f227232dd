"""flywheel-bootstrap: run Flywheel jobs with Codex on your own machine.

`supervisor/` is the top layer: the command line, the one-run supervisor
(`run`), the `--runs` pool (`pool/`) and the local backend. It imports
`workers/` (the worker processes and `workers.common`); nothing below imports
it back (see the `workers` package docstring).
"""

__version__ = "0.2.0"
