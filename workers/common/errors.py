"""Expected failures, each carrying the exit status of the README's Exit status table.

Anything raised as a BootstrapError is shown to the user as its message alone:
no traceback. The message must name the file, key or value at fault and say
what to do about it.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUN_ERROR = 1
EXIT_USAGE = 2
EXIT_BACKEND = 3
EXIT_PROVISION = 4
# The supervisor failed and could not even report the run: whoever started
# it (the --runs pool) reports the run instead.
EXIT_UNREPORTED = 70
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class BootstrapError(Exception):
    """A failure we expected and can explain in a line or two."""

    exit_code = EXIT_RUN_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(BootstrapError):
    """Bad usage or bad config, found before any request to the backend."""

    exit_code = EXIT_USAGE


class BackendUnavailable(BootstrapError):
    """The backend refused the bootstrap fetch or could not be reached."""

    exit_code = EXIT_BACKEND


class ProvisionError(BootstrapError):
    """Codex could not be provisioned (download failed)."""

    exit_code = EXIT_PROVISION
