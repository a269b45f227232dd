"""Worker processes of a run: heartbeat, log-shipper, artifact-watcher."""
