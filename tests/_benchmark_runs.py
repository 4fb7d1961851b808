"""Running a benchmark's `--quick` mode as CI does: a fresh process, as a user runs it.

A smoke run checks that a benchmark works and checks its own work, not how fast anything is (its
timings at these sizes mean nothing). Compiling its programs is most of its time, so they compile
at XLA's lowest optimisation level.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_quick(name: str, out: Path, *, entry_point: bool = False) -> subprocess.CompletedProcess:
    """`python -m benchmarks.<name> --quick --out <out>` (or through `python -m benchmarks`); must succeed."""
    env = {
        **os.environ,
        "MPLBACKEND": "Agg",
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
        + " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
    }
    module = ["benchmarks", name] if entry_point else [f"benchmarks.{name}"]
    proc = subprocess.run(
        [sys.executable, "-m", *module, "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def positive(value) -> bool:
    """A finite, positive number (not a bool, not NaN)."""
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )
