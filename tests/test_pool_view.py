"""What the pool shows: the table, redrawn in place on a terminal."""

from __future__ import annotations

from supervisor.pool import states
from supervisor.pool import status_view as sv


def test_render_table() -> None:
    rows = [
        sv.RunRow("r1", states.RUNNING, 75.2, 1234, ("0", "1"), "", 12.5, 3 * 2**29),
        sv.RunRow("run-two", states.WAITING, None, None, None, "needs 2 free GPUs"),
        sv.RunRow("r3", states.ERROR, 3725, 7, None, "x" * 100),
    ]
    text = sv.render(rows, max_result=20)
    lines = text.split("\n")
    assert lines[0].split() == ["RUN", "STATE", "MODE", "ELAPSED", "ENTRIES", "GPUS", "CPU", "PEAK", "RESULT"]
    assert lines[1].split() == ["r1", "running", "-", "1m15s", "1,234", "0,1", "12.5s", "1.5", "GiB", "-"]
    assert lines[2].split()[:6] == ["run-two", "waiting", "-", "-", "-", "-"]
    assert lines[3].split()[3] == "1h02m05s"
    assert lines[3].endswith("x" * 19 + "…")
    # Columns line up.
    assert len({line.index(line.split()[1]) for line in lines}) == 1
    assert sv.tally(rows) == "3 runs: 1 error, 1 running, 1 waiting"


def test_live_view_redraws_in_place() -> None:
    out: list[str] = []
    view = sv.LiveView(out.append, width=80, height=30, interval=0.25)
    rows = [sv.RunRow("r1", states.RUNNING), sv.RunRow("r2", states.WAITING)]
    view.update(rows, 10.0)
    view.update(rows, 10.1)  # too soon: skipped
    view.update(rows, 10.3)
    assert len(out) == 2
    assert not out[0].startswith("\x1b")
    assert out[1].startswith("\x1b[3F\x1b[J")  # up over header + 2 rows, clear
    view.message("SIGINT: cancelling")
    assert out[2] == "\x1b[3F\x1b[JSIGINT: cancelling"
    view.update(rows, 10.31)  # a message forces the next frame
    assert not out[3].startswith("\x1b")


def test_live_view_fits_a_short_terminal() -> None:
    rows = [sv.RunRow(f"r{i}", states.COMPLETE) for i in range(20)] + [sv.RunRow("busy", states.RUNNING)]
    out: list[str] = []
    sv.LiveView(out.append, width=80, height=8).update(rows, 0.0)
    lines = out[0].split("\n")
    assert len(lines) <= 7
    assert any(line.startswith("busy") for line in lines)
    assert lines[-1].startswith("… and 16 more")




def test_a_taken_over_run_shows_its_mode() -> None:
    rows = [sv.RunRow("r1", states.RUNNING, mode="interactive"), sv.RunRow("r2", states.RUNNING, mode="autonomous")]
    lines = sv.render(rows).split("\n")
    assert lines[1].split()[:3] == ["r1", "running", "interactive"]
    assert lines[2].split()[:3] == ["r2", "running", "autonomous"]
    out: list[str] = []
    view = sv.PlainView(out.append)
    view.update([sv.RunRow("r1", states.RUNNING, mode="autonomous")], 0.0)
    view.update([sv.RunRow("r1", states.RUNNING, mode="interactive")], 1.0)
    view.update([sv.RunRow("r1", states.RUNNING, mode="interactive")], 2.0)
    view.update([sv.RunRow("r1", states.RUNNING, mode="autonomous")], 3.0)
    assert out == ["run r1: running", "run r1: running, taken over by a person (interactive)", "run r1: running"]
    # Its mode becoming known is no change: one line per state change (a job's output file).
    out.clear()
    view.update([sv.RunRow("r2", states.RUNNING)], 0.0)
    view.update([sv.RunRow("r2", states.RUNNING, mode="autonomous")], 1.0)
    assert out == ["run r2: running"]
