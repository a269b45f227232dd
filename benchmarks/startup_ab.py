#!/usr/bin/env python3
"""Start-up A/B: this tool from two (or more) checkouts and the bare batched
client, interleaved run by run so that a burst of load on the machine hits
all alike (bench.py runs one checkout per invocation).

    python benchmarks/startup_ab.py OLD_CHECKOUT . --reps 11 [--lines 20000]
    python benchmarks/startup_ab.py . --installed pip=/venv/bin/flywheel-bootstrap \
        --installed "uvx=uvx --from . flywheel-bootstrap"

Each repetition runs the bare client (batches of 500), then one log_batch run
of each checkout, against one local backend with the fake codex of bench.py.
Printed per checkout: medians (and minimums) of the wall time until every
entry is stored and of Codex's first line after the process started (the
bare client: its first request), and the tool's CPU seconds (every process but
Codex). Numbers for benchmarks/README.md, section "Batching and start-up".
A checkout runs as `python -m supervisor` of this interpreter (the venv's
editable install) with the checkout first on PYTHONPATH; `--installed` adds a
command run as a user runs an installed copy (no PYTHONPATH).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=Path, help="checkouts of this project to compare")
    parser.add_argument("--reps", type=int, default=11)
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--installed", action="append", default=[], metavar="NAME=COMMAND",
                        help="also run an installed copy, e.g. pip=/venv/bin/flywheel-bootstrap")
    args = parser.parse_args()
    roots = [r.resolve() for r in args.roots]
    tools = {"ours": bench.Tool("ours", (sys.executable, "-m", "supervisor"))}
    for item in args.installed:
        name, _, command = item.partition("=")
        tools[name] = bench.Tool(name, tuple(shlex.split(command)))
    session = bench.Bench(Path(tempfile.mkdtemp(prefix="startup-ab-")), tools, print, roots[0])
    runs: dict[Path | str, list[bench.RunResult]] = {root: [] for root in roots}
    runs.update({name: [] for name in tools if name != "ours"})
    bare = []
    try:
        for _ in range(args.reps):
            bare.append(session.bare(args.lines, bench.BARE_BATCH))
            for root in roots:
                session.ours_root = root
                runs[root].append(session.run("ours", "ab", lines=args.lines, log_batch=True))
            for name in [n for n in tools if n != "ours"]:
                runs[name].append(session.run(name, "ab", lines=args.lines, log_batch=True))
    finally:
        session.close()
    med = statistics.median
    bare_wall = med(b["wall"] for b in bare)
    print(f"bare client: all stored after {bare_wall:.3f} s (min {min(b['wall'] for b in bare):.3f}), "
          f"first request after {med(b['startup'] for b in bare):.3f} s")
    for label, results in runs.items():
        wall = med(r.wall for r in results)
        first = [r.extra["first_line"] for r in results]
        print(f"{label}: all stored after {wall:.3f} s ({wall / bare_wall:.2f}x bare; min "
              f"{min(r.wall for r in results):.3f}), Codex's first line after {med(first):.3f} s (min "
              f"{min(first):.3f}), tool CPU {med(r.tool_cpu for r in results):.2f} s")


if __name__ == "__main__":
    main()
