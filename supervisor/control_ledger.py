"""The run's control commands as the state folder remembers them: which ids
were applied (and their acks) and the run's mode, in `control.json`.

Written atomically before a command is carried out and again when it is done,
so a command is applied at most once per run even when its ack is lost, the
control worker is restarted or bootstrap itself is restarted. The `--runs`
status view reads the mode from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from supervisor.control_decision import Ack, AckStatus, Delivery, Mode, on_delivery
from workers.common.files import write_private

LEDGER = "control.json"
RESTARTED = Ack(AckStatus.FAILED, "bootstrap restarted while this command was being carried out")


def read_mode(state_dir: Path) -> str | None:
    """The run's mode as last recorded, or None when it never had a command."""
    try:
        mode = orjson.loads((state_dir / LEDGER).read_bytes()).get("mode")
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return None
    return mode if mode in (Mode.AUTONOMOUS.value, Mode.INTERACTIVE.value) else None


class ControlLedger:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LEDGER
        self.mode = Mode.AUTONOMOUS
        # command id -> its ack, None while it is being carried out
        self.acks: dict[str, Ack | None] = {}
        self._load()
        self._save()  # a restarted run starts autonomous: the status view must say so

    def _load(self) -> None:
        try:
            raw: Any = orjson.loads(self.path.read_bytes())
            commands = raw["commands"]
            for command_id, entry in commands.items():
                ack = entry.get("ack")
                # Begun by an earlier bootstrap that died: never to be applied again.
                self.acks[str(command_id)] = Ack.from_json(ack) if ack else RESTARTED
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
            # A torn or foreign file: start afresh rather than fail the run.
            self.acks = {}

    def delivery(self, command_id: str) -> Delivery:
        return on_delivery(self.acks.get(command_id), command_id in self.acks)

    def begin(self, command_id: str) -> None:
        self.acks[command_id] = None
        self._save()

    def finish(self, command_id: str, ack: Ack) -> None:
        self.acks[command_id] = ack
        self._save()

    def set_mode(self, mode: Mode) -> None:
        if mode is not self.mode:
            self.mode = mode
            self._save()

    def _save(self) -> None:
        commands = {cid: {"ack": ack.to_json() if ack else None} for cid, ack in self.acks.items()}
        write_private(self.path, orjson.dumps({"mode": self.mode.value, "commands": commands}))
