"""Runs a Python module with this process's wall clock moved (tests of clock skew only):

    python tests/skewed_clock.py SECONDS -m MODULE [ARGS...]

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
    if sys.argv[2:3] != ["-m"] or len(sys.argv) < 4:
        raise SystemExit("usage: skewed_clock.py SECONDS -m MODULE [ARGS...]")
    real_time, real_time_ns = time.time, time.time_ns
    time.time = lambda: real_time() + offset
    time.time_ns = lambda: real_time_ns() + int(offset * 1e9)
    module = sys.argv[3]
    sys.argv = [module, *sys.argv[4:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
