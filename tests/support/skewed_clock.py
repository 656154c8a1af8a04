"""Runs a Python module with this process's wall clock moved (tests of clock skew only):

    python tests/skewed_clock.py SECONDS -m MODULE [ARGS...]
    python tests/skewed_clock.py SECONDS -c CODE [ARGS...]

``time.time()`` and ``time.time_ns()`` read SECONDS later (earlier when negative) than the
host's clock, as on a host whose clock is off; the monotonic clocks are left alone (nothing
may compare them across hosts). Nothing in the package reads a test hook: the process is a
real worker or client whose clock is simply wrong.
"""

from __future__ import annotations

import runpy
import sys
import time


def main() -> None:
    offset = float(sys.argv[1])
    if sys.argv[2:3] not in (["-m"], ["-c"]) or len(sys.argv) < 4:
        raise SystemExit("usage: skewed_clock.py SECONDS (-m MODULE | -c CODE) [ARGS...]")
    real_time, real_time_ns = time.time, time.time_ns
    time.time = lambda: real_time() + offset
    time.time_ns = lambda: real_time_ns() + int(offset * 1e9)
    kind, target = sys.argv[2], sys.argv[3]
    sys.argv = [target if kind == "-m" else "-c", *sys.argv[4:]]
    if kind == "-m":
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        exec(compile(target, "<skewed -c>", "exec"), {"__name__": "__main__"})


if __name__ == "__main__":
    main()
