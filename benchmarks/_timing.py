"""Timing helpers shared by the benchmarks: alternate the contenders, take medians, say the machine.

A shared, noisy machine drifts (other jobs start and stop, clocks change), so contenders are run
in turn within each repeat rather than one after the other: drift then hits them all alike, and
the medians and per-repeat (paired) ratios compare like with like.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """`(wall seconds, process CPU seconds, result)` of `fn()`, up to the moment its result exists.

    Wall time (`time.perf_counter`) is what a user waits for. Process CPU time (all threads) is
    recorded too because on a shared machine it barely moves when other jobs take the cores away,
    while wall time can double; the two agree on an idle machine. JAX dispatch is asynchronous, so
    the clock stops only after `jax.block_until_ready`.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    result = jax.block_until_ready(fn())
    return time.perf_counter() - wall, time.process_time() - cpu, result


def alternate(
    contenders: Mapping[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds per call of each contender, run in turn `repeats` times.

    Returns `(wall, cpu)`, each `{name: [seconds per repeat]}`. The order rotates from one repeat
    to the next, so no contender always runs right after the same other one.
    """
    names = list(contenders)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            w, c, _ = timed(contenders[name])
            wall[name].append(w)
            cpu[name].append(c)
    return wall, cpu


def warm_up() -> None:
    """Pay the process's one-time JAX costs (backend start, first compile of a loop, of the PRNG),
    so that they are not charged to whichever contender's first call happens to come first."""

    def body(i, carry):
        key, x = carry
        return key, x + jax.random.normal(jax.random.fold_in(key, i), (4, 4)) @ x

    jax.block_until_ready(
        jax.jit(lambda key: jax.lax.fori_loop(0, 2, body, (key, jax.numpy.eye(4))))(jax.random.key(0))
    )


def median(values) -> float:
    return float(statistics.median(values))


def paired_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """Per-repeat ratios: within one repeat both ran back to back, so slow spells mostly cancel."""
    return [a / b for a, b in zip(numerator, denominator)]


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on; a ratio means little without it."""
    import jaxlib
    import numpyro
    import optax

    import bbvi

    device = jax.devices()[0]
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable_cpus = os.cpu_count()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "optax": optax.__version__,
        "numpyro": numpyro.__version__,
        "bbvi": bbvi.__version__,
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
    }


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write atomically (a `.tmp` sibling, then rename), so an interrupted run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def write_results(
    out: Path, name: str, result: Mapping[str, Any], table: str, plot: Callable[[Path], None]
) -> None:
    """A benchmark's outputs under `out`: `<name>.json`, `.md` (the table, also printed) and `.png`."""
    write_json(out / f"{name}.json", result)
    (out / f"{name}.md").write_text(table + "\n")
    plot(out / f"{name}.png")
    print(table)
    print(f"\nwrote {out}/{name}.{{json,md,png}}", file=sys.stderr)
