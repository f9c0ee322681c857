"""Where a command's CPU goes, process by process: runs the command and, every ``--every``
seconds, prints each process that used more than ``--min`` CPU seconds since the last sample
(its pid, the cores it may run on, its command line: Ray names its workers ``ray::<Actor>.<method>``
or ``ray::IDLE``). How docs/results.md found the actors' start and the end-of-job write in the
prediction job's timeline, and which node the trainer and the decode tasks landed on in
benchmarks/ingest.py.

    python -m benchmarks.proctime [--every 1] [--min 0.2] [--log PATH] -- COMMAND [ARGS...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def snapshot() -> dict[int, tuple[float, str, list[int]]]:
    """pid -> (CPU seconds so far, command line, allowed cores), for every process readable."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline") as f:
                cmd = f.read().replace("\0", " ").strip()[:90]
            cores = sorted(os.sched_getaffinity(int(name)))
        except (OSError, IndexError):
            continue  # gone meanwhile, or not ours to read
        out[int(name)] = ((int(fields[11]) + int(fields[12])) / tick, cmd, cores)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.proctime", description=__doc__)
    p.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    p.add_argument("--min", type=float, default=0.2, help="CPU seconds a line needs")
    p.add_argument("--log", default=None, help="the timeline's file (default: stderr)")
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        p.error("give the command to run after --")
    log = open(a.log, "w") if a.log else sys.stderr  # noqa: SIM115 (closed at the end)
    t0, before = time.monotonic(), snapshot()
    proc = subprocess.Popen(cmd)
    while proc.poll() is None:
        time.sleep(a.every)
        now = snapshot()
        rows = sorted(
            (
                (cpu - before.get(pid, (0.0,))[0], pid, cores, line)
                for pid, (cpu, line, cores) in now.items()
                if pid != os.getpid()
            ),
            reverse=True,
        )
        print(f"--- t={time.monotonic() - t0:.0f}s", file=log)
        for used, pid, cores, line in rows:
            if used >= a.min:
                print(f"{used:5.2f} {pid:>7} {cores} {line}", file=log)
        log.flush()
        before = now
    if a.log:
        log.close()
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
