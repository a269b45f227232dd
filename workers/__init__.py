"""Worker processes of a run: heartbeat, log-shipper, artifact-watcher.

Imports go one way: `supervisor` -> `workers` -> `workers.common`.
- `workers/` never imports `supervisor/`: a worker is started by the supervisor
  and talks to it only through `workers.messages` over its queues.
- `workers.common` holds the libraries both sides use (errors and exit
  statuses, Timing, the backend client, redaction, private/atomic file
  writers, the on-disk spool, shared file names, the wake-up pipe); it imports
  nothing from the rest of `workers/` nor from `supervisor/`.
tests/test_layers.py checks this.
"""
