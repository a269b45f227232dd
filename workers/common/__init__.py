"""Libraries the supervisor and the workers both use; the bottom layer. Nothing
here imports from the rest of `workers/` or from `supervisor/`."""
