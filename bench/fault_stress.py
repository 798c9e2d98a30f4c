"""The fault tests under CPU contention: R runs of `pytest tests/faults` while busy-looping processes keep
every core busy, as a loaded CI machine does. The fault tests wait on states (srlm.progress.hold_point), not
on timing, so every run should pass; a failure here is a real one (or a race to fix).

    python bench/fault_stress.py [ROUNDS] [--burners N] [-- PYTEST_ARGS...]
"""

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def burn() -> None:
    while True:
        pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("rounds", type=int, nargs="?", default=5)
    ap.add_argument(
        "--burners",
        type=int,
        default=(os.cpu_count() or 1) + 1,
        help="busy-looping processes (default: one more than the cores)",
    )
    ap.add_argument("pytest_args", nargs="*", help="after --: more pytest arguments, e.g. -k SIGINT")
    a = ap.parse_args()
    burners = [mp.Process(target=burn, daemon=True) for _ in range(a.burners)]
    for b in burners:
        b.start()
    print(f"{a.burners} burner processes on {os.cpu_count()} cores; {a.rounds} runs of tests/faults", flush=True)
    total = {"passed": 0, "failed": 0, "error": 0}
    failed_runs = 0
    try:
        for r in range(1, a.rounds + 1):
            t0 = time.time()
            p = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "tests/faults",
                    "-p",
                    "no:cacheprovider",
                    "-q",
                    "-rfE",
                    *a.pytest_args,
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|error)", p.stdout)}
            for k in total:
                total[k] += counts.get(k, 0)
            failed_runs += p.returncode != 0
            print(
                f"run {r}: exit {p.returncode}, {counts.get('passed', 0)} passed, {counts.get('failed', 0)} failed, "
                f"{counts.get('error', 0)} errors, {time.time() - t0:.0f} s, load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            if p.returncode != 0:  # the failures' asserts carry the stage's stderr
                print(p.stdout[-6000:], p.stderr[-2000:], sep="\n", flush=True)
    finally:
        for b in burners:
            b.terminate()
        for b in burners:
            b.join()
    print(
        f"total: {a.rounds} runs, {failed_runs} failed; {total['passed']} tests passed, {total['failed']} failed, "
        f"{total['error']} errors"
    )
    return 1 if failed_runs else 0


if __name__ == "__main__":
    sys.exit(main())
