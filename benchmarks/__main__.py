"""`python -m benchmarks [NAME ...] [--quick] [--out DIR]`: run benchmarks, each in its own process.

Each benchmark runs in a fresh Python process, as a user would run it alone: its compile caches,
memory and timings do not depend on which benchmark ran before it. The results land under `--out`
(default `benchmarks/results/`) as `<name>.json`, `<name>.md` and `<name>.png`, and each table is
printed as the benchmark finishes.

    python -m benchmarks                      # the issue's suite: compare, accuracy, scale
    python -m benchmarks --quick              # the same on CI-sized settings
    python -m benchmarks overhead estimators  # named benchmarks only
    python -m benchmarks all --quick          # every benchmark
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

#: What each benchmark measures, in the order `all` runs them.
BENCHMARKS = {
    "compare": "per-step cost and compile time against NumPyro, Blackjax and a hand-written limit",
    "accuracy": "time-to-accuracy on posteriordb and inference-gym posteriors; final accuracy by family",
    "scale": "cost and memory as the latent dimension, the data and the number of problems grow",
    "overhead": "fit's per-step cost over a hand-written fused loop (logistic regression)",
    "estimators": "gradient variance and ELBO per second of the estimators and control variates",
}
DEFAULT = ("compare", "accuracy", "scale")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    listing = "\n".join(f"  {name:<11} {what}" for name, what in BENCHMARKS.items())
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run bbvi's benchmarks, each in a fresh process.",
        epilog=f"benchmarks:\n{listing}\n  all         every one of them",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"default: {' '.join(DEFAULT)}")
    parser.add_argument("--quick", action="store_true", help="CI-sized settings (each under a minute)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"output folder (default {RESULTS})")
    args = parser.parse_args(argv)
    names = list(args.names or DEFAULT)
    if "all" in names:
        names = list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)} or 'all'")
    args.names = list(dict.fromkeys(names))
    return args


def command(name: str, quick: bool, out: Path) -> list[str]:
    # overhead's --out names its JSON file; the others take the folder.
    target = out / "overhead.json" if name == "overhead" else out
    return [sys.executable, "-m", f"benchmarks.{name}", *(["--quick"] if quick else []), "--out", str(target)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    failed = []
    for name in args.names:
        print(f"\n## {name}: {BENCHMARKS[name]}\n", flush=True)
        started = time.perf_counter()
        code = subprocess.run(command(name, args.quick, args.out)).returncode
        outcome = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"\n{name}: {outcome} in {time.perf_counter() - started:.0f} s")
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
