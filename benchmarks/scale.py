"""Scale: cost per step and peak memory as the latent dimension and the data grow; many problems at once.

Three measurements, each against what a user would write instead, in one process:

1. **Latent dimension.** A mean-field Gaussian q over d = 10 ... 10^6 latents fitted to an isotropic
   Gaussian target, `log p(z) = -sum((z - 1)^2) / 8`, whose cost is linear in d and negligible beside
   the loop's own work (drawing S x d normals, the reparameterised ELBO and its gradient, Adam), so
   the loop is what is measured. Reparameterisation gradients with the analytic entropy, S = 8 and
   S = 1, Adam(1e-2), the per-step ELBO recorded. `bbvi.fit` runs against a hand-written fused
   `lax.scan` drawing its noise from fit's key stream (`benchmarks.overhead.matched_noise`); the
   two are checked to compute the same iterates before anything is timed. Reported: per-step time
   of each (a whole call over its steps, so fit's fixed cost per call is included), fit's marginal
   per-step cost (a long fit less a one-step fit, over the extra steps), the ratios to the limit,
   and peak memory: XLA's compiled memory analysis (arguments + outputs + temporaries) of the limit
   and of `fit` under `jax.jit` (one loop, as fit runs under jit / vmap; its chunked program
   differs only in the length of the ELBO buffer), and, in full runs, the peak resident set of a
   fresh process that runs one fit or one limit, less that of a process that only starts JAX and
   compiles a trivial loop.
2. **Data size.** Bayesian logistic regression, D = 10, N = 10^3 ... 10^7 rows, a minibatch of
   B = 256 rows drawn on device at every step (`fit(..., data=, batch_size=B)`), the likelihood
   scaled by N / B. Contenders: fit; the limit drawing the same minibatches with fit's sampler
   (`bbvi.fit.sample_rows`, exact and O(B log B); iterates checked equal); and full-data fit steps
   (every row at every step) up to `full_data_max` rows.
   A contender whose single step takes longer than `step_cap_s` is timed once, on one step.
3. **Many problems.** `jax.jit(jax.vmap(fit))` over P keys (restarts on one data set) and over P
   data sets, P = 1, 4, 16, 64, against a Python loop of P fits doing the same work: each vmapped
   problem is checked to give its looped fit's ELBO trace and parameters, and the loop is checked
   to compile nothing after its first fit. The best restart is a one-liner,
   `jnp.argmax(fits.elbo[:, -100:].mean(1))`.

Timing follows `benchmarks._timing`: every contender is compiled and run once first (reported as
its first call), then the contenders of a case run in turn, `repeats` times, each call timed up to
`jax.block_until_ready`; medians and per-repeat (paired) ratios are reported, never absolute
thresholds. The number of steps per call is chosen per case from a short probe so that a call takes
about `budget_s`: many steps where a step is cheap, a few where it is dear.

What scales how, measured on 2 shared CPU cores (`benchmarks/results/scale.md` has the numbers):

- Latent dimension: a step costs a fixed few microseconds (RNG, optimiser and loop bookkeeping)
  up to d ~ 100 (S = 8) or d ~ 1000 (S = 1), and grows linearly in d above (S x d normals and
  the ELBO's passes over them dominate). At S = 8 fit's marginal cost per step is at most the
  limit's up to d = 10^5 and 2-13% above it at 10^6; at S = 1 and d >= 10^5 it is 7-17% above,
  because MeanFieldGaussian's entropy goes through numpyro's Normal, log(exp(log_scale)), extra
  passes over d per step that the limit does not make. fit's fixed cost per call (its first step
  runs alone and is checked on the host) is a few milliseconds, growing with d to a large part of
  a step at d = 10^6, which only short fits notice. XLA's memory analysis gives fit 6-9% more
  than the limit above d ~ 10^4; with `sample_chunk_size=1` it needs less than half the limit's
  and, at d >= 10^5, is faster than the limit too (less memory traffic).
- Data size: a minibatch step costs the same at every N, with constant temporaries: fit draws its
  rows with an exact O(B log B) sampler (`bbvi.fit.sample_rows`). Its first version used
  `jax.random.choice(replace=False)`, which permutes all N rows at every step: 0.78 s per step at
  N = 10^6 and 19.5 s at 10^7, with 191 MiB of temporaries; this benchmark found it. Full-data
  steps grow linearly in N (faster, through the cache sizes), as they must.
- Many problems: on CPU a vmapped fit of P problems costs about P times one problem's steps (a
  step of these small problems is compute, about 10 microseconds, and the cores are the limit,
  not dispatch); what vmap saves is fit's fixed cost per call, milliseconds per problem for a
  loop of fits, so it wins by 1.2-4x at 500 steps per fit. On an accelerator the P problems
  also run in parallel.
- The limit, a `lax.scan` stacking the ELBO trace, is itself 10-30% slower per step than fit's
  chunk (a `fori_loop` writing into a preallocated trace) for small d on this CPU, so fit / limit
  falls below 1 there.

Usage:
    python -m benchmarks.scale                       # the full run, 8-9 min on 2 loaded CPU cores
    python -m benchmarks.scale --quick               # small sizes for CI, 30-50 s (compiling)
    python -m benchmarks.scale --parts dim,many --out /tmp/scale   # writes scale.{json,md,png}
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import json
import math
import os
import resource
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax

import bbvi
from bbvi.fit import sample_rows
from bbvi.models import logistic_regression
from benchmarks import _timing
from benchmarks.overhead import check_same_work, matched_noise

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
PARTS = ("dim", "data", "many")

#: fit gains an option to process the Monte Carlo samples in chunks (`lax.map`); where it exists,
#: the latent-dimension sweep adds a memory row for it.
SAMPLE_CHUNK_SUPPORTED = "sample_chunk_size" in inspect.signature(bbvi.fit).parameters

# Entropy of N(0, 1): the per-coordinate constant of the mean-field Gaussian's entropy.
_STD_NORMAL_ENTROPY = 0.5 * (1.0 + math.log(2.0 * math.pi))
_PROBE_MAX_STEPS = 1280  # fit's chunk is 64 steps up to here


@dataclasses.dataclass(frozen=True)
class Settings:
    """The benchmark's sizes; `FULL` is the default run, `QUICK` the CI smoke run."""

    dims: tuple[int, ...] = (10, 100, 1_000, 10_000, 100_000, 1_000_000)
    dim_samples: tuple[int, ...] = (8, 1)
    data_sizes: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000, 10_000_000)
    full_data_max: int = 1_000_000  # full-data steps up to this many rows
    data_dim: int = 10
    batch_size: int = 256
    data_samples: int = 8
    problems: tuple[int, ...] = (1, 4, 16, 64)
    problem_data: tuple[int, int] = (100, 5)  # (num_data, dim) of each of the many problems
    problem_samples: int = 8
    problem_steps: int = 500
    budget_s: float = 0.3  # target wall time of one timed call
    min_steps: int = 4
    max_steps: int = 20_000
    step_cap_s: float = 2.0  # a contender slower than this per step is timed once, on one step
    repeats: int = 5
    rss_dims: tuple[int, ...] = (10_000, 100_000, 1_000_000)  # fresh-process peak RSS at these d (S=8)
    time_sample_chunk: bool = True  # time fit(sample_chunk_size=1) too, where fit has the option
    learning_rate: float = 1e-2
    seed: int = 0


FULL = Settings()
QUICK = Settings(
    dims=(100, 10_000),
    dim_samples=(8,),
    data_sizes=(1_000, 100_000),
    full_data_max=1_000,
    problems=(1, 4),
    problem_steps=100,
    budget_s=0.03,
    max_steps=1280,  # fit's chunk stays at 64 steps: one compiled program per case
    repeats=2,
    rss_dims=(),
    time_sample_chunk=False,
)


# --- shared measurement helpers -----------------------------------------------------------------


class CompileCounter:
    """Counts XLA compilations in this process (jax's monitoring events), to check for recompiles."""

    _EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **kwargs) -> None:
        if event == self._EVENT:
            self.count += 1


_COUNTER: CompileCounter | None = None


def compile_counter() -> CompileCounter:
    global _COUNTER
    if _COUNTER is None:
        _COUNTER = CompileCounter()
    return _COUNTER


def memory_of(compiled) -> dict[str, int | None] | None:
    """XLA's memory analysis of a compiled program: bytes of arguments, outputs and temporaries.

    `total` is what the program needs at once on the device: arguments + outputs + temporaries, less
    the outputs that alias (reuse) argument buffers. `None` where the backend does not say.
    """
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    out = {
        name: int(getattr(stats, f"{name}_size_in_bytes"))
        for name in ("argument", "output", "temp", "alias", "generated_code")
    }
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    peak = getattr(stats, "peak_memory_in_bytes", 0)
    out["peak"] = int(peak) if peak else None  # not every backend reports it
    return out


def lowered_memory(fn: Callable, *args) -> tuple[dict | None, float]:
    """The memory analysis of `jax.jit(fn)` at `args`, and how long compiling it took."""
    (compile_s, _, compiled) = _timing.timed(lambda: jax.jit(fn).lower(*args).compile())
    return memory_of(compiled), compile_s


def probe_steps(call: Callable[[int], Any], settings: Settings, min_steps: int | None = None) -> dict:
    """Steps per timed call for about `budget_s` a call, from a few short calls of `call(n)` (n steps).

    `call` must be compiled already (its first call done). The per-step cost is the difference
    between an n-step and a one-step call over n - 1, without the fixed cost per call; n grows
    eightfold, up to `_PROBE_MAX_STEPS` (so fit keeps its 64-step chunk: no recompile), until the
    steps dominate. A single step slower than `step_cap_s` marks the contender as capped: it is
    timed once, on one step.
    """
    min_steps = settings.min_steps if min_steps is None else min_steps
    one, _, _ = _timing.timed(lambda: call(1))
    if one > settings.step_cap_s:
        return {"steps": 1, "capped": True, "one_step_s": one, "per_step_estimate_s": one}
    per_step, num = one, 1
    # A step slower than half the budget dwarfs fit's fixed cost per call (milliseconds): done.
    while one < settings.budget_s / 2 and num < _PROBE_MAX_STEPS:
        num = min(8 * num, _PROBE_MAX_STEPS)
        several, _, _ = _timing.timed(lambda num=num: call(num))
        per_step = max(several - one, 1e-9) / (num - 1)
        if several - one > settings.budget_s / 4:
            break
    steps = int(min(settings.max_steps, max(min_steps, round(settings.budget_s / per_step))))
    return {"steps": steps, "capped": False, "one_step_s": one, "per_step_estimate_s": per_step}


def max_abs_diffs(params_a, elbos_a, params_b, elbos_b) -> dict[str, float]:
    """Largest differences in each parameter (absolute) and in the ELBO trace (relative to its scale).

    As `benchmarks.overhead.max_abs_diffs`, except that the ELBO differences are relative to the
    largest |ELBO| of the trace rather than step by step: with d latents the ELBO is a sum of O(d)
    terms of both signs, whose float32 rounding is relative to their size, not to the sum's, and
    the sum crosses zero during these fits.
    """
    diffs = {
        f"params{jax.tree_util.keystr(path)}": float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(params_a)[0], jax.tree.leaves(params_b))
    }
    elbos_a, elbos_b = np.asarray(elbos_a), np.asarray(elbos_b)
    scale = max(float(np.max(np.abs(elbos_b))), 1.0)
    diffs["elbo_rel"] = float(np.max(np.abs(elbos_a - elbos_b)) / scale)
    return diffs


def summarise_times(times: dict[str, list[float]], steps: dict[str, int], reference: str) -> dict:
    """Per-step microseconds: medians, and the ratios to `reference` (of medians and paired)."""
    per_step = {name: [t / steps[name] * 1e6 for t in ts] for name, ts in times.items()}
    medians = {name: _timing.median(v) for name, v in per_step.items()}
    out = {"per_step_us": per_step, "median_per_step_us": medians}
    if reference in times:
        out["ratio_of_medians"] = {name: medians[name] / medians[reference] for name in times}
        out["median_paired_ratio"] = {
            name: _timing.median(_timing.paired_ratios(per_step[name], per_step[reference]))
            for name in times
            if len(per_step[name]) == len(per_step[reference])
        }
    return out


# --- the hand-written limit ---------------------------------------------------------------------


def make_limit(
    log_joint: Callable,
    dim: int,
    num_samples: int,
    num_steps: int,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int | None = None,
    sampler: Callable[[jax.Array, int, int], jax.Array] | None = None,
) -> Callable:
    """The fused loop `(params, run_key, data) -> (params, opt_state, elbos)`, one scan, one jit.

    Written for a mean-field Gaussian over a vector and nothing else. Its keys are fit's: step `i`
    uses `fold_in(run_key, i)`, split into a noise key and a minibatch key when minibatching, and
    the noise comes from `matched_noise`, so with `sampler` fit's own (`choice` without
    replacement) both loops compute the same iterates. `data=None` calls `log_joint(z)`; otherwise
    `log_joint(z, batch)` with the whole data or, with `batch_size`, `sampler(key, num_rows, batch_size)`
    rows of it. The data are an argument, not a constant folded into the program.
    """

    def elbo(params, eps, batch):
        z = params["loc"] + eps * jnp.exp(params["log_scale"])  # reparameterisation, (S, d)
        entropy = jnp.sum(params["log_scale"]) + dim * _STD_NORMAL_ENTROPY
        one = log_joint if batch is None else (lambda w: log_joint(w, batch))
        return jnp.mean(jax.vmap(one)(z)) + entropy

    def run(params, run_key, data=None):
        def step(carry, i):
            params, opt_state = carry
            step_key = jax.random.fold_in(run_key, i)
            batch = data
            if batch_size is not None:
                step_key, batch_key = jax.random.split(step_key)
                rows = sampler(batch_key, jax.tree.leaves(data)[0].shape[0], batch_size)
                batch = jax.tree.map(lambda a: a[rows], data)
            eps = matched_noise(step_key, num_samples, dim)
            value, grad = jax.value_and_grad(elbo)(params, eps, batch)
            # optax minimises: hand it the negated ELBO gradient, as fit does.
            updates, opt_state = optimizer.update(jax.tree.map(jnp.negative, grad), opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        carry = (params, optimizer.init(params))
        (params, opt_state), elbos = jax.lax.scan(step, carry, jnp.arange(num_steps))
        return params, opt_state, elbos

    return run


def fit_sampler(key: jax.Array, num_rows: int, batch_size: int) -> jax.Array:
    """The rows `bbvi.fit` draws for a minibatch: `bbvi.fit.sample_rows`, O(B log B)."""
    return sample_rows(key, num_rows, batch_size)


# --- 1. latent dimension ------------------------------------------------------------------------


def gaussian_log_joint(z: jax.Array) -> jax.Array:
    """An isotropic Gaussian target N(1, 2^2 I): linear in d and cheap beside the loop's own work."""
    return -0.125 * jnp.sum((z - 1.0) ** 2)


def dim_case(dim: int, num_samples: int, settings: Settings, optimizer) -> dict[str, Any]:
    """One latent dimension and S: check fit against the limit, time both, measure their memory."""
    family = bbvi.MeanFieldGaussian((dim,))
    key = jax.random.key(settings.seed)
    _, run_key = jax.random.split(key)  # fit's step keys are fold_in(run_key, step)
    init_params = bbvi.init(family, jax.random.key(settings.seed + 1))

    def fit_steps(num_steps, **extra):
        # estimator="reparam" is what "auto" picks for a Gaussian; said outright.
        return run_fit(
            gaussian_log_joint, family, optimizer, num_samples, num_steps, init_params, key, **extra
        )

    first_fit_1, _, _ = _timing.timed(lambda: fit_steps(1))  # compiles fit's chunk program
    probe = probe_steps(fit_steps, settings)
    steps = probe["steps"]

    limit_fn = make_limit(gaussian_log_joint, dim, num_samples, steps, optimizer)
    limit_compile_s, _, compiled = _timing.timed(
        lambda: jax.jit(limit_fn).lower(init_params, run_key).compile()
    )

    def limit():
        return compiled(init_params, run_key)

    # fit under jax.jit: how it runs under jit / vmap, one loop over all steps with no host work per
    # call. Compiled here for its memory analysis; its calls reuse that compilation.
    fit_jit = jax.jit(lambda p, k: run_fit(gaussian_log_joint, family, optimizer, num_samples, steps, p, k))
    fit_memory_compile_s, _, fit_jit_compiled = _timing.timed(
        lambda: fit_jit.lower(init_params, key).compile()
    )

    contenders = {
        "limit": limit,
        "fit": lambda: fit_steps(steps),
        "fit_1_step": lambda: fit_steps(1),
        "fit_jit": lambda: fit_jit(init_params, key),
    }
    # Samples one at a time through lax.map: the least memory, at some cost per step (the samples
    # are recomputed in the backward pass). Timed only where asked: it is one more compile per case.
    chunked = SAMPLE_CHUNK_SUPPORTED and num_samples > 1
    if chunked and settings.time_sample_chunk:
        contenders["fit_sample_chunk_1"] = lambda: fit_steps(steps, sample_chunk_size=1)
    first_call, checks = {"fit_1_step": first_fit_1}, {}
    first_call["limit"], _, (limit_params, _, limit_elbos) = _timing.timed(limit)
    for name in contenders:
        if name.startswith("fit") and name != "fit_1_step":
            first_call[name], _, fitted = _timing.timed(contenders[name])
            checks[name] = max_abs_diffs(limit_params, limit_elbos, fitted.params, fitted.elbo)
            check_same_work(checks[name])

    memory = {"limit": memory_of(compiled), "fit": memory_of(fit_jit_compiled)}
    # Where fit has no sample_chunk_size option, SAMPLE_CHUNK_SUPPORTED is False and this row is left out.
    if chunked:
        memory["fit_sample_chunk_1"], _ = lowered_memory(
            lambda p, k: run_fit(
                gaussian_log_joint, family, optimizer, num_samples, steps, p, k, sample_chunk_size=1
            ),
            init_params,
            key,
        )

    wall, cpu = _timing.alternate(contenders, settings.repeats)
    step_counts = {name: 1 if name == "fit_1_step" else steps for name in contenders}
    summary = summarise_times(wall, step_counts, "limit")
    marginal_us = (
        (_timing.median(wall["fit"]) - _timing.median(wall["fit_1_step"])) / max(steps - 1, 1) * 1e6
        if steps > 1
        else float("nan")
    )
    fit_mem, limit_mem = memory["fit"], memory["limit"]
    return {
        "dim": dim,
        "num_samples": num_samples,
        "steps": steps,
        "probe": probe,
        "check": checks,
        "first_call_s": first_call,
        "limit_compile_s": limit_compile_s,
        "fit_memory_compile_s": fit_memory_compile_s,
        "times_s": wall,
        "cpu_s": cpu,
        **summary,
        "fit_marginal_per_step_us": marginal_us,
        "marginal_ratio": marginal_us / summary["median_per_step_us"]["limit"],
        "fit_fixed_per_call_ms": _timing.median(wall["fit_1_step"]) * 1e3,
        "memory": memory,
        "memory_ratio": (fit_mem["total"] / limit_mem["total"]) if fit_mem and limit_mem else None,
    }


def run_fit(log_joint, family, optimizer, num_samples, steps, params, key, data=None, **extra):
    """`bbvi.fit` with the benchmark's fixed options (reparameterisation, no progress bar).

    Called directly it is the fit that is timed; under `jax.jit` (its memory analysis) it runs as
    fit does under jit / vmap, one loop over all steps.
    """
    return bbvi.fit(
        log_joint,
        family,
        key=key,
        num_steps=steps,
        optimizer=optimizer,
        estimator="reparam",
        num_samples=num_samples,
        init_params=params,
        data=data,
        progress_bar=False,
        **extra,
    )


def rss_child(spec: str) -> None:
    """In a fresh process: run one fit, one limit or nothing, then print the peak RSS as JSON.

    Run as `python -c "from benchmarks.scale import rss_child; rss_child('<json>')"`.
    """
    spec = json.loads(spec)
    kind, dim, num_samples, steps = spec["kind"], spec["dim"], spec["num_samples"], spec["steps"]
    optimizer = optax.adam(spec["learning_rate"])
    family = bbvi.MeanFieldGaussian((dim,))
    key = jax.random.key(spec["seed"])
    init_params = bbvi.init(family, jax.random.key(spec["seed"] + 1))
    if kind == "fit":
        out = run_fit(gaussian_log_joint, family, optimizer, num_samples, steps, init_params, key)
    elif kind == "limit":
        limit = jax.jit(make_limit(gaussian_log_joint, dim, num_samples, steps, optimizer))
        out = limit(init_params, jax.random.split(key)[1])
    elif kind == "baseline":  # the cost of starting JAX, bbvi and compiling a loop
        _timing.warm_up()
        out = init_params
    else:
        raise ValueError(f"unknown kind {kind!r}")
    jax.block_until_ready(out)
    print(json.dumps({"max_rss_bytes": peak_rss_bytes(), "device_peak_bytes": device_peak_bytes()}))


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    On Linux from /proc (VmHWM): `getrusage`'s `ru_maxrss` survives `exec`, so a child started from
    a large parent would report the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB elsewhere


def device_peak_bytes() -> int | None:
    """The device's peak memory in use, where the backend reports it (GPUs; not the CPU)."""
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return (stats or {}).get("peak_bytes_in_use")


def measure_rss(kind: str, dim: int, num_samples: int, steps: int, settings: Settings) -> dict[str, Any]:
    spec = {
        "kind": kind,
        "dim": dim,
        "num_samples": num_samples,
        "steps": steps,
        "learning_rate": settings.learning_rate,
        "seed": settings.seed,
    }
    code = f"from benchmarks.scale import rss_child; rss_child({json.dumps(spec)!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the peak-RSS child for {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_dims(settings: Settings) -> dict[str, Any]:
    optimizer = optax.adam(settings.learning_rate)  # one object: fit's compile cache keys on it
    cases = []
    for num_samples in settings.dim_samples:
        for dim in settings.dims:
            case = dim_case(dim, num_samples, settings, optimizer)
            cases.append(case)
            print(
                f"dim {dim:>8} S={num_samples}: {case['steps']} steps, fit/limit "
                f"{case['ratio_of_medians']['fit']:.3f}",
                file=sys.stderr,
            )
    rss = []
    if settings.rss_dims:
        num_samples = settings.dim_samples[0]
        baseline = measure_rss("baseline", 1, 1, 1, settings)["max_rss_bytes"]
        steps_at = {c["dim"]: c["steps"] for c in cases if c["num_samples"] == num_samples}
        for dim in settings.rss_dims:
            steps = steps_at.get(dim, settings.min_steps)
            row = {"dim": dim, "num_samples": num_samples, "steps": steps, "baseline_bytes": baseline}
            for kind in ("limit", "fit"):
                row[kind] = measure_rss(kind, dim, num_samples, steps, settings)
                row[f"{kind}_above_baseline_bytes"] = row[kind]["max_rss_bytes"] - baseline
            rss.append(row)
            print(f"rss dim {dim}: done", file=sys.stderr)
    return {"cases": cases, "rss": rss, "sample_chunk_size_supported": SAMPLE_CHUNK_SUPPORTED}


# --- 2. data size -------------------------------------------------------------------------------


def logistic_log_joint(num_data: int, batch_rows: int) -> Callable:
    """`(w, batch) -> log p(w) + (num_data / batch_rows) log p(batch | w)`: unbiased for a minibatch."""
    scale = num_data / batch_rows

    def log_joint(w, batch):
        x, y = batch
        prior = dist.Normal(0.0, 1.0).log_prob(w).sum()
        return prior + scale * dist.Bernoulli(logits=x @ w).log_prob(y).sum()

    return log_joint


def data_case(num_data: int, settings: Settings, optimizer, fast_steps: int | None) -> tuple[dict, int]:
    """One data size: fit's minibatch steps against the limits, and full-data steps where affordable.

    Returns the case and the fast limit's steps per call, which are set at the first (smallest)
    size and kept, so that its flat per-step cost is measured on the same loop at every size.
    """
    dim, batch, num_samples = settings.data_dim, settings.batch_size, settings.data_samples
    data = tuple(logistic_regression.simulate(settings.seed, num_data, dim))
    family = bbvi.MeanFieldGaussian((dim,))
    key = jax.random.key(settings.seed)
    _, run_key = jax.random.split(key)
    init_params = bbvi.init(family, jax.random.key(settings.seed + 1))
    minibatch_lj = logistic_log_joint(num_data, batch)
    full_lj = logistic_log_joint(num_data, num_data)

    # fit's contenders: compile (a one-step first call), then probe the steps per timed call.
    fit_options = {"fit_minibatch": (minibatch_lj, {"batch_size": batch})}
    if num_data <= settings.full_data_max:
        fit_options["fit_full_data"] = (full_lj, {})
    first_call, probes, steps, calls = {}, {}, {}, {}
    for name, (lj, extra) in fit_options.items():

        def call(num_steps, lj=lj, extra=extra):
            return run_fit(lj, family, optimizer, num_samples, num_steps, init_params, key, data, **extra)

        first_call[f"{name}_1_step"], _, _ = _timing.timed(lambda call=call: call(1))
        probes[name] = probe_steps(call, settings, min_steps=2)
        steps[name] = probes[name]["steps"]
        calls[name] = lambda call=call, n=steps[name]: call(n)
    # A step slower than step_cap_s is timed once (its probe's single step) and not repeated.
    capped = {name for name, probe in probes.items() if probe["capped"]}

    limits = {}
    if "fit_minibatch" not in capped:
        limits["limit_fit_sampler"] = (fit_sampler, steps["fit_minibatch"])
    compiled, limit_compile_s = {}, {}
    for name, (sampler, n) in limits.items():
        fn = make_limit(minibatch_lj, dim, num_samples, n, optimizer, batch_size=batch, sampler=sampler)
        limit_compile_s[name], _, compiled[name] = _timing.timed(
            lambda fn=fn: jax.jit(fn).lower(init_params, run_key, data).compile()
        )
        steps[name] = n
        calls[name] = lambda exe=compiled[name]: exe(init_params, run_key, data)

    timed_calls = {name: call for name, call in calls.items() if name not in capped}
    outputs = {}
    for name, call in timed_calls.items():
        first_call[name], _, outputs[name] = _timing.timed(call)
    check = None
    if "limit_fit_sampler" in outputs:
        limit_params, _, limit_elbos = outputs["limit_fit_sampler"]
        fitted = outputs["fit_minibatch"]
        check = max_abs_diffs(limit_params, limit_elbos, fitted.params, fitted.elbo)
        check_same_work(check)
    for name, out in outputs.items():
        elbos = out[2] if name.startswith("limit") else out.elbo
        if not np.all(np.isfinite(np.asarray(elbos))):
            raise RuntimeError(f"{name} at N={num_data}: non-finite ELBO trace")

    memory = {name: memory_of(exe) for name, exe in compiled.items()}
    fit_memory_compile_s = {}
    for name, (lj, extra) in fit_options.items():
        memory[name], fit_memory_compile_s[name] = lowered_memory(
            lambda p, k, d, lj=lj, extra=extra, n=steps[name]: run_fit(
                lj, family, optimizer, num_samples, n, p, k, d, **extra
            ),
            init_params,
            key,
            data,
        )

    wall, cpu = _timing.alternate(timed_calls, settings.repeats)
    for name in capped:
        wall[name], cpu[name] = [probes[name]["one_step_s"]], [float("nan")]
    reference = "limit_fit_sampler" if "limit_fit_sampler" in wall else "fit_minibatch"
    case = {
        "num_data": num_data,
        "data_bytes": int(sum(a.nbytes for a in data)),
        "steps": steps,
        "probes": probes,
        "capped": {name: name in capped for name in calls},
        "check_fit_vs_limit_fit_sampler": check,
        "first_call_s": first_call,
        "limit_compile_s": limit_compile_s,
        "fit_memory_compile_s": fit_memory_compile_s,
        "times_s": wall,
        "cpu_s": cpu,
        **summarise_times(wall, steps, reference),
        "memory": memory,
    }
    return case, fast_steps


def run_data(settings: Settings) -> dict[str, Any]:
    optimizer = optax.adam(settings.learning_rate)
    cases, fast_steps = [], None
    for num_data in settings.data_sizes:
        case, fast_steps = data_case(num_data, settings, optimizer, fast_steps)
        cases.append(case)
        med = case["median_per_step_us"]
        print(
            f"data N={num_data:>9}: fit minibatch {med['fit_minibatch']:.0f} µs/step, limit "
            f"{med.get('limit_fit_sampler', float('nan')):.0f} µs/step",
            file=sys.stderr,
        )
    return {"cases": cases}


# --- 3. many problems ---------------------------------------------------------------------------


def run_many(settings: Settings) -> dict[str, Any]:
    """vmap of fit over keys and over data sets against a Python loop of fits, per problem."""
    counter = compile_counter()
    num_data, dim = settings.problem_data
    steps, num_samples = settings.problem_steps, settings.problem_samples
    max_p = max(settings.problems)
    sims = [logistic_regression.simulate(settings.seed + 100 + p, num_data, dim) for p in range(max_p)]
    xs, ys = jnp.stack([s.x for s in sims]), jnp.stack([s.y for s in sims])
    log_joint = logistic_log_joint(num_data, num_data)
    family = bbvi.MeanFieldGaussian((dim,))
    optimizer = optax.adam(settings.learning_rate)

    def fit_one(key, data):
        return run_fit(log_joint, family, optimizer, num_samples, steps, None, key, data)

    # Restarts: P keys, one data set. Data sets: P keys and P data sets (independent problems).
    vmapped = {
        "keys": jax.jit(jax.vmap(fit_one, in_axes=(0, None))),
        "data_sets": jax.jit(jax.vmap(fit_one, in_axes=(0, 0))),
    }
    # Prepared outside the timed calls: slicing a device array is itself a dispatched operation.
    all_keys = jax.random.split(jax.random.key(settings.seed + 7), max_p)
    key_list = [all_keys[p] for p in range(max_p)]
    data_list = [(xs[p], ys[p]) for p in range(max_p)]
    first = (xs[0], ys[0])

    compiles_before = counter.count
    first_loop_fit_s, _, _ = _timing.timed(lambda: fit_one(key_list[0], first))
    compiles_first_fit = counter.count - compiles_before

    cases, best_of_restarts = [], None
    for mode in ("keys", "data_sets"):
        for num in settings.problems:
            keys = all_keys[:num]
            if mode == "keys":
                args, loop_data = (keys, first), [first] * num
            else:
                args, loop_data = (keys, (xs[:num], ys[:num])), data_list[:num]

            def loop(num=num, loop_data=loop_data):
                return [fit_one(key_list[p], loop_data[p]) for p in range(num)]

            def batched(args=args, mode=mode):
                return vmapped[mode](*args)

            before = counter.count
            first_vmap_s, _, fits = _timing.timed(batched)
            vmap_compiles = counter.count - before
            before = counter.count
            first_loop_s, _, looped = _timing.timed(loop)
            loop_first_compiles = counter.count - before
            check = {}
            for p, single in enumerate(looped):
                diffs = max_abs_diffs(
                    jax.tree.map(lambda a, p=p: a[p], fits.params), fits.elbo[p], single.params, single.elbo
                )
                check = {k: max(v, check.get(k, 0.0)) for k, v in diffs.items()}
            check_same_work(check)

            before = counter.count
            wall, cpu = _timing.alternate({"vmap": batched, "loop": loop}, settings.repeats)
            recompiles = counter.count - before
            if recompiles or loop_first_compiles:
                raise RuntimeError(
                    f"{mode}, P={num}: {recompiles} compilations while timing and {loop_first_compiles} "
                    "in the first loop, after the first fit had compiled its program: repeated fits recompile"
                )
            per_problem = {name: [t / num * 1e3 for t in ts] for name, ts in wall.items()}
            medians = {name: _timing.median(v) for name, v in per_problem.items()}
            cases.append(
                {
                    "mode": mode,
                    "problems": num,
                    "first_call_s": {"vmap": first_vmap_s, "loop": first_loop_s},
                    "vmap_compiles_first_call": vmap_compiles,
                    "compiles_while_timing": recompiles,
                    "check": check,
                    "times_s": wall,
                    "cpu_s": cpu,
                    "per_problem_ms": per_problem,
                    "median_per_problem_ms": medians,
                    "loop_over_vmap": medians["loop"] / medians["vmap"],
                    "median_paired_loop_over_vmap": _timing.median(
                        _timing.paired_ratios(wall["loop"], wall["vmap"])
                    ),
                }
            )
            if mode == "keys" and num == max_p:
                # The best of the restarts, as a user writes it.
                tail = min(100, steps)
                best = int(jnp.argmax(fits.elbo[:, -tail:].mean(1)))
                tails = np.asarray(fits.elbo[:, -tail:].mean(1))
                best_of_restarts = {
                    "restarts": num,
                    "one_liner": f"best = jnp.argmax(fits.elbo[:, -{tail}:].mean(1))",
                    "best": best,
                    "best_tail_elbo": float(tails[best]),
                    "worst_tail_elbo": float(tails.min()),
                }
            print(
                f"many {mode} P={num}: loop/vmap {cases[-1]['loop_over_vmap']:.2f} per problem",
                file=sys.stderr,
            )
    return {
        "model": f"logistic regression N={num_data}, D={dim}, S={num_samples}, {steps} steps per fit",
        "first_loop_fit_s": first_loop_fit_s,
        "compiles_first_loop_fit": compiles_first_fit,
        "cases": cases,
        "best_of_restarts": best_of_restarts,
    }


# --- output -------------------------------------------------------------------------------------


def _mb(nbytes) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.2f}"


def _slope(xs, ys) -> float:
    """The log-log slope between the last two points."""
    return math.log(ys[-1] / ys[-2]) / math.log(xs[-1] / xs[-2])


def scaling_notes(result: dict[str, Any]) -> list[str]:
    """What scales how, in words, from the measured numbers."""
    notes = []
    if "dim" in result:
        cases = result["dim"]["cases"]
        for num_samples in result["settings"]["dim_samples"]:
            rows = [c for c in cases if c["num_samples"] == num_samples]
            if len(rows) < 2:
                continue
            dims = [c["dim"] for c in rows]
            limit = [c["median_per_step_us"]["limit"] for c in rows]
            fit = [c["median_per_step_us"]["fit"] for c in rows]
            flat_until = next((d for d, t in zip(dims, limit) if t > 2 * limit[0]), None)
            worst = max(rows, key=lambda c: c["ratio_of_medians"]["fit"])
            notes.append(
                f"S={num_samples}: per-step cost of the limit {limit[0]:.1f} µs at d={dims[0]}, "
                f"{limit[-1]:.0f} µs at d={dims[-1]} (log-log slope {_slope(dims, limit):.2f} over the last "
                f"decade; fit {_slope(dims, fit):.2f}); "
                + (
                    f"flat (fixed costs and dispatch) below d={flat_until}, growing with d above. "
                    if flat_until
                    else "flat over the whole range. "
                )
                + f"fit/limit at most {worst['ratio_of_medians']['fit']:.2f} (d={worst['dim']}), "
                f"{rows[-1]['ratio_of_medians']['fit']:.2f} at d={dims[-1]}; XLA memory fit/limit "
                f"{rows[-1]['memory_ratio']:.2f} at d={dims[-1]}."
            )
    if "data" in result:
        cases = result["data"]["cases"]
        if len(cases) >= 2:
            n = [c["num_data"] for c in cases]
            fit = [c["median_per_step_us"]["fit_minibatch"] for c in cases]
            notes.append(
                f"Minibatch steps (B={result['settings']['batch_size']}) from N={n[0]} to N={n[-1]}: fit "
                f"{fit[0]:.0f} → {fit[-1]:.0f} µs/step ({fit[-1] / fit[0]:.1f}x; fit's O(B log B) "
                "sampler `bbvi.fit.sample_rows` draws the minibatch without touching the other rows)."
            )
            full = [
                (c["num_data"], c["median_per_step_us"]["fit_full_data"])
                for c in cases
                if "fit_full_data" in c["median_per_step_us"]
            ]
            if len(full) >= 2:
                notes.append(
                    f"Full-data steps grow with N: {full[0][1]:.0f} µs at N={full[0][0]}, "
                    f"{full[-1][1]:.0f} µs at N={full[-1][0]} (log-log slope {_slope(*zip(*full)):.2f} over "
                    "the last decade)."
                )
    if "many" in result:
        cases = result["many"]["cases"]
        for mode in ("keys", "data_sets"):
            rows = [c for c in cases if c["mode"] == mode]
            if rows:
                last = rows[-1]
                notes.append(
                    f"Many problems over {mode.replace('_', ' ')}: at P={last['problems']} a vmapped fit "
                    f"costs {last['median_per_problem_ms']['vmap']:.2f} ms per problem, a loop of fits "
                    f"{last['median_per_problem_ms']['loop']:.2f} ms ({last['loop_over_vmap']:.1f}x); at P=1 "
                    f"{rows[0]['loop_over_vmap']:.2f}x."
                )
    return notes


def markdown_table(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    lines = [
        f"Scale benchmark ({m['backend']}, {m['device_kind']}, {m['usable_cpus']} cores, load average "
        f"{m['load_average'][0]:.1f} at start; {s['repeats']} alternating repeats, about {s['budget_s']} s "
        "per timed call)",
        "",
        "**What scales how**",
        "",
        *[f"- {note}" for note in scaling_notes(result)],
    ]
    if "dim" in result:
        cases = result["dim"]["cases"]
        timed_chunk = any("fit_sample_chunk_1" in c["median_per_step_us"] for c in cases)
        lines += [
            "",
            "**Latent dimension**: mean-field Gaussian, isotropic Gaussian target, reparameterisation with "
            "the analytic entropy, Adam. Per-step time is a whole call over its steps (fit's fixed cost per "
            "call included); *marginal* is fit's cost per extra step (a long fit less a one-step fit); "
            "*fit under jit*: `jax.jit` of a fit, one loop with no host work per call."
            + (
                " *chunk=1*: `fit(..., sample_chunk_size=1)`, the samples one at a time."
                if timed_chunk
                else ""
            ),
            "",
            "| d | S | steps | limit µs/step | fit µs/step | fit/limit | paired | fit marginal µs/step "
            "| marginal/limit | fit under jit µs/step | jit/limit | fit fixed ms/call |"
            + (" chunk=1 µs/step | chunk=1/limit |" if timed_chunk else ""),
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            + ("---:|---:|" if timed_chunk else ""),
        ]
        for c in cases:
            med = c["median_per_step_us"]
            row = (
                f"| {c['dim']} | {c['num_samples']} | {c['steps']} | {med['limit']:.2f} | {med['fit']:.2f} "
                f"| {c['ratio_of_medians']['fit']:.3f} | {c['median_paired_ratio']['fit']:.3f} "
                f"| {c['fit_marginal_per_step_us']:.2f} | {c['marginal_ratio']:.3f} | {med['fit_jit']:.2f} "
                f"| {c['ratio_of_medians']['fit_jit']:.3f} | {c['fit_fixed_per_call_ms']:.2f} |"
            )
            if timed_chunk:
                chunk = "fit_sample_chunk_1"
                row += (
                    f" {med[chunk]:.2f} | {c['ratio_of_medians'][chunk]:.3f} |"
                    if chunk in med
                    else " – | – |"
                )
            lines.append(row)
        lines += [
            "",
            "Memory (XLA's compiled memory analysis, MiB): total = arguments + outputs + temporaries; fit "
            "as under `jax.jit` (one loop over all steps)."
            + (
                " *chunk=1*: `sample_chunk_size=1`."
                if SAMPLE_CHUNK_SUPPORTED
                else " (fit has no `sample_chunk_size` option: no chunked-samples row.)"
            ),
            "",
            "| d | S | limit total | fit total | fit/limit | limit temp | fit temp |"
            + (" chunk=1 total | chunk=1 temp |" if SAMPLE_CHUNK_SUPPORTED else ""),
            "|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if SAMPLE_CHUNK_SUPPORTED else ""),
        ]
        for c in cases:
            mem = {name: v or {} for name, v in c["memory"].items()}
            ratio = c["memory_ratio"]
            row = (
                f"| {c['dim']} | {c['num_samples']} | {_mb(mem['limit'].get('total'))} "
                f"| {_mb(mem['fit'].get('total'))} | {'n/a' if ratio is None else f'{ratio:.3f}'} "
                f"| {_mb(mem['limit'].get('temp'))} | {_mb(mem['fit'].get('temp'))} |"
            )
            if SAMPLE_CHUNK_SUPPORTED:
                chunk = mem.get("fit_sample_chunk_1", {})
                row += f" {_mb(chunk.get('total'))} | {_mb(chunk.get('temp'))} |"
            lines.append(row)
        if result["dim"]["rss"]:
            lines += [
                "",
                "Peak resident memory of a fresh process running one fit / one limit (MiB), and above a "
                "process that only starts JAX and compiles a trivial loop:",
                "",
                "| d | S | steps | limit RSS | fit RSS | limit above baseline | fit above baseline |",
                "|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for r in result["dim"]["rss"]:
                lines.append(
                    f"| {r['dim']} | {r['num_samples']} | {r['steps']} | {_mb(r['limit']['max_rss_bytes'])} "
                    f"| {_mb(r['fit']['max_rss_bytes'])} | {_mb(r['limit_above_baseline_bytes'])} "
                    f"| {_mb(r['fit_above_baseline_bytes'])} |"
                )
    if "data" in result:
        lines += [
            "",
            f"**Data size**: logistic regression D={s['data_dim']}, S={s['data_samples']}, minibatches of "
            f"B={s['batch_size']} rows scaled by N/B; µs/step (median), memory (XLA, MiB; the data are "
            "arguments). *limit*: the hand-written loop drawing fit's minibatches (iterates checked equal). "
            "A starred time is a single one-step call (a step slower than "
            f"{s['step_cap_s']} s is not repeated).",
            "",
            "| N | data MiB | fit minibatch | limit | fit full data "
            "| fit mb temp MiB | limit temp MiB | fit full temp MiB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c in result["data"]["cases"]:
            med, mem = c["median_per_step_us"], c["memory"]

            def cell(name, med=med, c=c):
                if name not in med:
                    return "–"
                star = "*" if c["capped"].get(name) else ""
                return f"{med[name]:.0f}{star}"

            def temp(name, mem=mem):
                return _mb((mem.get(name) or {}).get("temp")) if name in mem else "–"

            lines.append(
                f"| {c['num_data']} | {_mb(c['data_bytes'])} | {cell('fit_minibatch')} "
                f"| {cell('limit_fit_sampler')} | {cell('fit_full_data')} "
                f"| {temp('fit_minibatch')} "
                f"| {temp('limit_fit_sampler')} | {temp('fit_full_data')} |"
            )
    if "many" in result:
        many = result["many"]
        lines += [
            "",
            f"**Many problems**: {many['model']}; `jax.jit(jax.vmap(fit))` against a Python loop of fits "
            "(same work, checked problem by problem; the loop compiles nothing after its first fit). "
            "ms per problem (median).",
            "",
            "| over | P | vmap ms/problem | loop ms/problem | loop/vmap | paired | vmap first call s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for c in many["cases"]:
            med = c["median_per_problem_ms"]
            lines.append(
                f"| {c['mode'].replace('_', ' ')} | {c['problems']} | {med['vmap']:.2f} | {med['loop']:.2f} "
                f"| {c['loop_over_vmap']:.2f} | {c['median_paired_loop_over_vmap']:.2f} "
                f"| {c['first_call_s']['vmap']:.2f} |"
            )
        best = many["best_of_restarts"]
        if best:
            lines += [
                "",
                f"Best of {best['restarts']} restarts: `{best['one_liner']}` → restart {best['best']} "
                f"(tail ELBO {best['best_tail_elbo']:.3f}; worst {best['worst_tail_elbo']:.3f}).",
            ]
    if result["quick"]:
        lines += ["", "--quick is a smoke run: its sizes are too small for the numbers to mean much."]
    return "\n".join(lines)


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:  # a part not run leaves its panel empty
        ax.legend(fontsize=8)


def plot(result: dict[str, Any], path: Path) -> None:
    """Per-step time vs d and vs N, time per problem vs P, memory vs d; log-log throughout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 10))
    ax = axes[0, 0]
    if "dim" in result:
        for num_samples, style in zip(result["settings"]["dim_samples"], ("-", "--")):
            rows = [c for c in result["dim"]["cases"] if c["num_samples"] == num_samples]
            dims = [c["dim"] for c in rows]
            for name, color in (("limit", "C0"), ("fit", "C1"), ("fit_jit", "C5")):
                ax.plot(
                    dims,
                    [c["median_per_step_us"][name] for c in rows],
                    style,
                    marker="o",
                    color=color,
                    label=f"{name}, S={num_samples}",
                )
            ax.plot(
                dims,
                [c["fit_marginal_per_step_us"] for c in rows],
                style,
                marker="x",
                color="C2",
                label=f"fit marginal, S={num_samples}",
            )
    ax.set(
        xscale="log", yscale="log", xlabel="latent dimension d", ylabel="µs per step", title="Per step vs d"
    )
    _legend(ax)

    ax = axes[0, 1]
    if "data" in result:
        cases = result["data"]["cases"]
        for name, color in (
            ("fit_minibatch", "C1"),
            ("limit_fit_sampler", "C0"),
            ("fit_full_data", "C3"),
        ):
            pts = [
                (c["num_data"], c["median_per_step_us"][name])
                for c in cases
                if name in c["median_per_step_us"]
            ]
            if pts:
                ax.plot(*zip(*pts), marker="o", color=color, label=name.replace("_", " "))
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="rows N",
        ylabel="µs per step",
        title=f"Per step vs N (minibatch B={result['settings']['batch_size']})",
    )
    _legend(ax)

    ax = axes[1, 0]
    if "many" in result:
        for mode, style in (("keys", "-"), ("data_sets", "--")):
            rows = [c for c in result["many"]["cases"] if c["mode"] == mode]
            for name, color in (("vmap", "C0"), ("loop", "C1")):
                ax.plot(
                    [c["problems"] for c in rows],
                    [c["median_per_problem_ms"][name] for c in rows],
                    style,
                    marker="o",
                    color=color,
                    label=f"{name} over {mode.replace('_', ' ')}",
                )
    ax.set(xscale="log", yscale="log", xlabel="problems P", ylabel="ms per problem", title="Many problems")
    _legend(ax)

    ax = axes[1, 1]
    if "dim" in result:
        for num_samples, style in zip(result["settings"]["dim_samples"], ("-", "--")):
            rows = [c for c in result["dim"]["cases"] if c["num_samples"] == num_samples]
            for name, color in (("limit", "C0"), ("fit", "C1"), ("fit_sample_chunk_1", "C4")):
                pts = [(c["dim"], c["memory"][name]["total"]) for c in rows if c["memory"].get(name)]
                if pts:
                    ax.plot(
                        [d for d, _ in pts],
                        [b / 2**20 for _, b in pts],
                        style,
                        marker="o",
                        color=color,
                        label=f"{name} (XLA), S={num_samples}",
                    )
        rss = result["dim"]["rss"]
        if rss:
            for name, color in (("limit", "C0"), ("fit", "C1")):
                ax.plot(
                    [r["dim"] for r in rss],
                    [max(r[f"{name}_above_baseline_bytes"], 1) / 2**20 for r in rss],
                    ":",
                    marker="s",
                    color=color,
                    label=f"{name} peak RSS above baseline",
                )
    ax.set(xscale="log", yscale="log", xlabel="latent dimension d", ylabel="MiB", title="Memory vs d")
    _legend(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- entry point --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale",
        description="Cost per step and memory of bbvi.fit as d and N grow; many problems in one program.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for CI (about 30 s)")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)} (default all)"
    )
    parser.add_argument("--repeats", type=int, help="timed calls per contender (alternating)")
    parser.add_argument("--budget", type=float, help="target seconds per timed call")
    parser.add_argument("--no-rss", action="store_true", help="skip the fresh-process peak-RSS measurements")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)
    args.parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = set(args.parts) - set(PARTS)
    if unknown or not args.parts:
        parser.error(f"--parts must name some of {', '.join(PARTS)}, got {sorted(unknown) or 'nothing'}")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be a positive int, got {args.repeats}")
    if args.budget is not None and not args.budget > 0:
        parser.error(f"--budget must be positive, got {args.budget}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write scale.{json,md,png} under --out, print the table."""
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    overrides = {"repeats": args.repeats, "budget_s": args.budget, "rss_dims": () if args.no_rss else None}
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    compile_counter()  # listen from the start
    started = datetime.datetime.now(datetime.UTC)
    result: dict[str, Any] = {
        "benchmark": "scale",
        "quick": args.quick,
        "parts": list(args.parts),
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": _timing.machine_info(),
        "settings": dataclasses.asdict(settings),
    }
    _timing.warm_up()
    runners = {"dim": run_dims, "data": run_data, "many": run_many}
    for part in PARTS:
        if part in args.parts:
            part_started = datetime.datetime.now(datetime.UTC)
            result[part] = runners[part](settings)
            result[part]["wall_s"] = (datetime.datetime.now(datetime.UTC) - part_started).total_seconds()
    # Every part raises before returning if its contenders did different work.
    result["checks_passed"] = True
    result["xla_compilations"] = compile_counter().count
    result["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["wall_s"] = (datetime.datetime.now(datetime.UTC) - started).total_seconds()

    _timing.write_results(args.out, "scale", result, markdown_table(result), lambda path: plot(result, path))
    return result


if __name__ == "__main__":
    main()
