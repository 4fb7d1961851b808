"""Which ELBO gradient estimator and control variate to use: variance, ELBO per step, ELBO per second.

For each estimator and control variate, on a continuous, a discrete and a mixed model, this script
measures:

- the total gradient variance (the sum over parameter coordinates of the variance across many
  independent keys) at fixed parameters, both the initial ones and a partially fitted point (every
  row of a model shares both points), with its Monte Carlo standard error and its ratio to the row
  without a control variate;
- the ELBO reached after a fixed number of `bbvi.fit` steps: the mean of the last 10% of the trace
  and an accurate re-estimate at the final parameters from many draws of q (the exact discrete q for
  the relaxed estimator, whose trace is of its biased relaxed objective);
- the cost per step (median over alternating repeats of a whole fit, after compilation; fit's
  fixed cost per call, a few ms, is spread over the steps) and the ELBO reached within a fixed
  wall-time budget: `floor(budget / median per-step time)` steps, fitted with the same key.

The three models, all built here or in `bbvi.models`:

- continuous: Bayesian logistic regression, mean-field Gaussian q;
- discrete: a binary latent feature model, y_n ~ N(z_n A, sigma^2 I) with z_nk ~ Bernoulli(p) and
  A known, mean-field Bernoulli q (its log-joint accepts relaxed z in (0, 1));
- mixed: spike-and-slab regression, y ~ N(X (s * w), sigma^2 I) with inclusion indicators
  s_d ~ Bernoulli(p) and weights w_d ~ N(0, 1), q(s) Bernoulli and q(w) mean-field Gaussian.

Every row uses the same number of samples, initial parameters, optimiser and keys. A stateful
control variate (`bbvi.MovingAverage`) is measured at fixed parameters with its state warmed by
estimates at those parameters, as a slowly moving fit would have it; stateless ones ignore the warm-up.

Usage:
    python -m benchmarks.estimators                  # the full run, about 4 minutes on 2 CPU cores
    python -m benchmarks.estimators --quick          # small sizes for CI (mostly compilation)
    python -m benchmarks.estimators --budget 0.2 --out /tmp/est   # writes estimators.{json,md,png}

Most of a run is compiling (two programs per row: the fit and the variance measurement); CI's smoke
run sets XLA_FLAGS to compile at a low optimisation level, which makes its timings meaningless but
its run three times shorter.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
from jax.flatten_util import ravel_pytree

import bbvi
from bbvi.models import logistic_regression
from benchmarks import _timing

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
WARM_STATE_STEPS = 50  # five time constants of MovingAverage's default decay 0.9
TRACE_BLOCKS = 100  # the JSON keeps each ELBO trace as this many block means


@dataclasses.dataclass(frozen=True)
class Settings:
    """The benchmark's sizes; `FULL` is the default run, `QUICK` the CI smoke run."""

    num_samples: int = 8
    num_steps: int = 1000  # <= 1280, so every fit of a row shares one compiled chunk (see fit)
    warm_steps: int = 250  # steps of the reference row to the partially fitted point
    variance_keys: int = 1000
    elbo_samples: int = 8192
    repeats: int = 5
    budget_s: float = 0.05  # small enough that the slower rows get fewer steps than num_steps
    logistic: tuple[int, int] = (500, 10)  # (num_data, dim)
    features: tuple[int, int, int] = (10, 4, 8)  # (num_data, num_features, dim): N * K binary latents
    spike_slab: tuple[int, int] = (100, 10)  # (num_data, dim)
    seed: int = 0


FULL = Settings()
QUICK = Settings(
    num_steps=100,
    warm_steps=30,
    variance_keys=100,
    elbo_samples=512,
    repeats=2,
    budget_s=0.01,
    logistic=(100, 5),
    features=(4, 3, 5),
    spike_slab=(40, 4),
)


class Row(NamedTuple):
    name: str
    estimator: bbvi.Estimator
    control_variate: Any


class Model(NamedTuple):
    name: str
    description: str
    log_joint: Callable
    family: Any
    learning_rate: float
    rows: tuple[Row, ...]
    reference: str  # the row that takes every row's partially fitted point
    baseline: str  # the row without a control variate that variances are compared with


def _score_rows(gradient: str, control_variates: Sequence[Any]) -> list[Row]:
    def label(cv):
        return "none" if cv is None else cv if isinstance(cv, str) else cv.name

    return [Row(f"{gradient}/{label(cv)}", bbvi.Estimator(gradient), cv) for cv in control_variates]


def relaxable_bernoulli_log_prob(probs: float, z: jax.Array) -> jax.Array:
    """Summed Bernoulli log-mass, extended linearly in z from numpyro's values at 0 and 1.

    Equal to numpyro's at z in {0, 1}; numpyro returns -inf off the support, and the relaxed
    estimator evaluates the log-joint at z in (0, 1).
    """
    prior = dist.Bernoulli(probs=probs)
    return jnp.sum(z * prior.log_prob(1.0) + (1 - z) * prior.log_prob(0.0))


def continuous_model(settings: Settings) -> Model:
    num_data, dim = settings.logistic
    data = logistic_regression.simulate(settings.seed, num_data, dim)
    rows = [
        Row("reparam/analytic", bbvi.Estimator("reparam"), None),
        Row("reparam/stl", bbvi.Estimator("reparam", entropy="stl"), None),
        *_score_rows("score", [None, "loo", "optimal", bbvi.MovingAverage()]),
    ]
    return Model(
        "continuous",
        f"logistic regression, N={num_data}, D={dim}; MeanFieldGaussian(({dim},))",
        logistic_regression.log_joint_fn(data),
        bbvi.MeanFieldGaussian((dim,)),
        1e-2,
        tuple(rows),
        reference="reparam/analytic",
        baseline="score/none",
    )


def discrete_model(settings: Settings) -> Model:
    num_data, num_features, dim = settings.features
    ka, kz, ky = jax.random.split(jax.random.key(settings.seed + 10), 3)
    features = jax.random.normal(ka, (num_features, dim))
    prior, noise = 0.3, 0.5
    z_true = jax.random.bernoulli(kz, prior, (num_data, num_features)).astype(jnp.float32)
    y = z_true @ features + noise * jax.random.normal(ky, (num_data, dim))

    def log_joint(z):
        z = jnp.asarray(z, features.dtype)  # int draws, or relaxed values in (0, 1)
        return relaxable_bernoulli_log_prob(prior, z) + dist.Normal(z @ features, noise).log_prob(y).sum()

    rows = _score_rows("score", [None, "loo", "optimal", "rao_blackwell", bbvi.MovingAverage()])
    rows.append(Row("relaxed(T=0.5)", bbvi.Estimator("relaxed", temperature=0.5), None))
    return Model(
        "discrete",
        f"binary latent features, N={num_data}, K={num_features}, D={dim}; Bernoulli(({num_data}, "
        f"{num_features})): {num_data * num_features} binary latents",
        log_joint,
        bbvi.Bernoulli((num_data, num_features)),
        5e-2,
        tuple(rows),
        reference="score/loo",
        baseline="score/none",
    )


def mixed_model(settings: Settings) -> Model:
    num_data, dim = settings.spike_slab
    kx, ks, kw, ky = jax.random.split(jax.random.key(settings.seed + 20), 4)
    prior, noise = 0.3, 1.0
    x = jax.random.normal(kx, (num_data, dim))
    w_true = jax.random.bernoulli(ks, prior, (dim,)) * 2.0 * jax.random.normal(kw, (dim,))
    y = x @ w_true + noise * jax.random.normal(ky, (num_data,))

    def log_joint(z):
        s, w = jnp.asarray(z["s"], x.dtype), z["w"]
        log_prior = dist.Bernoulli(probs=prior).log_prob(s).sum() + dist.Normal(0.0, 1.0).log_prob(w).sum()
        return log_prior + dist.Normal(x @ (s * w), noise).log_prob(y).sum()

    cvs = [None, "loo", "optimal", "rao_blackwell", bbvi.MovingAverage()]
    return Model(
        "mixed",
        f"spike-and-slab regression, N={num_data}, D={dim}; "
        f"Bernoulli(({dim},)) x MeanFieldGaussian(({dim},))",
        log_joint,
        {"s": bbvi.Bernoulli((dim,)), "w": bbvi.MeanFieldGaussian((dim,))},
        5e-2,
        tuple(_score_rows("auto", cvs)),
        reference="auto/loo",
        baseline="auto/none",
    )


# --- measurements -------------------------------------------------------------------------------


def gradient_variance_fn(model: Model, row: Row, settings: Settings) -> Callable:
    """`(params, key) -> {total, se, finite}`: total gradient variance over `variance_keys` keys.

    The total is the mean over keys of `sum_d (g_d - mean_d)^2` (times n / (n - 1)), so its standard
    error is that per-key sum's standard deviation over sqrt(n). One compiled program per row.
    """
    estimator = bbvi.gradient_estimator(
        model.log_joint,
        model.family,
        estimator=row.estimator,
        num_samples=settings.num_samples,
        control_variate=row.control_variate,
    )
    stateful = getattr(row.control_variate, "stateful", False)

    @jax.jit
    def draws(params, key):
        warm_key, key = jax.random.split(key)
        state = estimator.init(params)
        if stateful:  # the state a slowly moving fit would bring to these parameters

            def warm(state, k):
                return estimator.estimate(params, state, k)[2], None

            state, _ = jax.lax.scan(warm, state, jax.random.split(warm_key, WARM_STATE_STEPS))
        grads = jax.vmap(lambda k: estimator.estimate(params, state, k)[1])(
            jax.random.split(key, settings.variance_keys)
        )
        return jax.vmap(lambda g: ravel_pytree(g)[0])(grads)

    def variance(params, key) -> dict[str, float]:
        g = np.asarray(draws(params, key), np.float64)
        n = g.shape[0]
        per_key = np.sum((g - g.mean(axis=0)) ** 2, axis=1) * n / (n - 1)
        return {
            "total": float(per_key.mean()),
            "se": float(per_key.std(ddof=1) / math.sqrt(n)),
            "finite": bool(np.isfinite(g).all()),
        }

    return variance


def accurate_elbo_fn(model: Model, num_draws: int) -> Callable:
    """`(params, key) -> (ELBO, standard error)` from `num_draws` draws of q: log p(z) - log q(z)."""

    @jax.jit
    def values(params, key):
        z = bbvi.sample(model.family, params, key, (num_draws,))
        return jax.vmap(model.log_joint)(z) - bbvi.log_prob(model.family, params, z)

    def elbo(params, key):
        v = np.asarray(values(params, key), np.float64)
        return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))

    return elbo


def tail_mean(trace) -> float:
    trace = np.asarray(trace, np.float64)
    return float(np.mean(trace[-max(1, trace.size // 10) :]))


def block_means(trace, blocks: int = TRACE_BLOCKS) -> list[float]:
    trace = np.asarray(trace, np.float64)
    return [float(b.mean()) for b in np.array_split(trace, min(blocks, trace.size))]


def run_model(model: Model, settings: Settings) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every measurement for one model's rows: the JSON payload and the full fixed-step ELBO traces."""
    optimizer = optax.adam(model.learning_rate)  # one object: fit's compile cache keys on it
    init_params = bbvi.init(model.family, jax.random.key(settings.seed + 1))
    fit_key = jax.random.key(settings.seed + 2)
    variance_key = jax.random.key(settings.seed + 3)
    elbo_key = jax.random.key(settings.seed + 4)
    accurate_elbo = accurate_elbo_fn(model, settings.elbo_samples)
    rows = {row.name: row for row in model.rows}

    def run_fit(row, num_steps, key=fit_key, start=None):
        """A fit from the shared initial parameters, or continuing the fit `start`."""
        state = {"init_params": init_params}
        if start is not None:
            state = {
                "init_params": start.params,
                "init_opt_state": start.opt_state,
                "init_estimator_state": start.estimator_state,
            }
        return bbvi.fit(
            model.log_joint,
            model.family,
            key=key,
            num_steps=num_steps,
            optimizer=optimizer,
            estimator=row.estimator,
            num_samples=settings.num_samples,
            control_variate=row.control_variate,
            progress_bar=False,
            **state,
        )

    # The fixed-step fits first, so that every row's first call includes its compilation.
    out: dict[str, dict[str, Any]] = {}
    results, traces = {}, {}
    for row in model.rows:
        first_call_s, _, results[row.name] = _timing.timed(lambda row=row: run_fit(row, settings.num_steps))
        trace = traces[row.name] = np.asarray(results[row.name].elbo)
        elbo, se = accurate_elbo(results[row.name].params, elbo_key)
        out[row.name] = {
            "estimator": row.estimator.gradient,
            "entropy": row.estimator.entropy,
            "temperature": row.estimator.temperature,
            "control_variate": "none" if row.control_variate is None else str(row.control_variate),
            "first_call_s": first_call_s,
            "fixed_steps": {
                "steps": settings.num_steps,
                "elbo_last_10pct": tail_mean(trace),
                "elbo_accurate": elbo,
                "elbo_accurate_se": se,
                "trace_block_means": block_means(trace),
            },
        }

    points = {"init": init_params, "fitted": run_fit(rows[model.reference], settings.warm_steps).params}
    for row in model.rows:
        variance_fn = gradient_variance_fn(model, row, settings)
        out[row.name]["variance"] = {name: variance_fn(p, variance_key) for name, p in points.items()}
    for point in points:
        base = out[model.baseline]["variance"][point]["total"]
        for r in out.values():
            r["variance"][point]["ratio_to_baseline"] = r["variance"][point]["total"] / base

    # Per-step cost: whole fixed-step fits, the rows in turn, so a shared machine's drift hits all alike.
    contenders = {name: (lambda row=row: run_fit(row, settings.num_steps)) for name, row in rows.items()}
    wall, cpu = _timing.alternate(contenders, settings.repeats)
    for name, r in out.items():
        per_step = [t / settings.num_steps for t in wall[name]]
        r["time"] = {
            "per_step_us": [t * 1e6 for t in per_step],
            "cpu_per_step_us": [t / settings.num_steps * 1e6 for t in cpu[name]],
            "median_per_step_us": _timing.median(per_step) * 1e6,
        }
        r["compile_s_estimate"] = r["first_call_s"] - _timing.median(wall[name])
        r["budget"] = budget_run(r, rows[name], results[name], settings, run_fit, accurate_elbo, elbo_key)
    payload = {
        "description": model.description,
        "learning_rate": model.learning_rate,
        "reference_row": model.reference,
        "baseline_row": model.baseline,
        "rows": out,
    }
    return payload, traces


def budget_run(r, row, fixed, settings, run_fit, accurate_elbo, elbo_key) -> dict[str, Any]:
    """The ELBO after `floor(budget / median per-step time)` steps.

    Fewer steps than the fixed-step fit: a fresh fit of that many steps with the same key (its
    trace is a prefix of the fixed-step one). More: the fixed-step fit `fixed` continued, in pieces
    of at most `num_steps` steps (one compiled program), each with its own key.
    """
    steps = max(1, int(settings.budget_s / (r["time"]["median_per_step_us"] * 1e-6)))
    if steps <= settings.num_steps:
        result = run_fit(row, steps)
        trace = np.asarray(result.elbo)
    else:
        result, pieces, done = fixed, [np.asarray(fixed.elbo)], settings.num_steps
        while done < steps:
            n = min(settings.num_steps, steps - done)
            result = run_fit(
                row, n, key=jax.random.fold_in(jax.random.key(settings.seed + 5), done), start=result
            )
            pieces.append(np.asarray(result.elbo))
            done += n
        trace = np.concatenate(pieces)
    elbo, se = accurate_elbo(result.params, elbo_key)
    return {
        "budget_s": settings.budget_s,
        "steps": steps,
        "elbo_last_10pct": tail_mean(trace),
        "elbo_accurate": elbo,
        "elbo_accurate_se": se,
    }


# --- output -------------------------------------------------------------------------------------


def markdown_table(result: dict[str, Any]) -> str:
    s, m = result["settings"], result["machine"]
    lines = [
        f"S={s['num_samples']} samples per estimate, {s['num_steps']} steps, gradient variance over "
        f"{s['variance_keys']} keys at the initial and a partially fitted point ({s['warm_steps']} steps of "
        f"the reference row), accurate ELBO from {s['elbo_samples']} draws of q, budget {s['budget_s']} s "
        f"({m['backend']}, {m['usable_cpus']} cores, load average {m['load_average'][0]:.1f} at start)",
    ]
    for name, model in result["models"].items():
        lines += [
            "",
            f"**{name}**: {model['description']}; variance ratios to `{model['baseline_row']}`, "
            f"fitted point from `{model['reference_row']}`",
            "",
            "| configuration | var @ init | ratio | var @ fitted | ratio | ELBO last 10% | ELBO accurate "
            "| µs/step | steps in budget | ELBO in budget |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row_name, r in model["rows"].items():
            vi, vf, fx, bu = r["variance"]["init"], r["variance"]["fitted"], r["fixed_steps"], r["budget"]
            lines.append(
                f"| {row_name} | {vi['total']:.3g} | {vi['ratio_to_baseline']:.2g} | {vf['total']:.3g} "
                f"| {vf['ratio_to_baseline']:.2g} | {fx['elbo_last_10pct']:.2f} "
                f"| {fx['elbo_accurate']:.2f} ± {fx['elbo_accurate_se']:.2f} "
                f"| {r['time']['median_per_step_us']:.0f} | {bu['steps']} "
                f"| {bu['elbo_accurate']:.2f} ± {bu['elbo_accurate_se']:.2f} |"
            )
    lines += [
        "",
        "var: total gradient variance (sum over coordinates); ratio: to the row without a control "
        "variate. ELBO accurate: re-estimated at the final parameters, ± its standard error. The "
        "relaxed row's trace (ELBO last 10%) is of its biased relaxed objective; its accurate ELBO is "
        "of the discrete q.",
    ]
    if result["quick"]:
        lines.append("--quick is a smoke run: its sizes are too small for the numbers to mean much.")
    return "\n".join(lines)


def plot(result: dict[str, Any], traces: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    """One column per model: the ELBO traces (smoothed) above, log10 gradient variances below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["models"]
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 9), squeeze=False)
    for col, (name, model) in enumerate(models.items()):
        ax = axes[0, col]
        smooth = {}
        for row_name, trace in traces[name].items():
            window = max(1, trace.size // 50)
            smooth[row_name] = np.convolve(trace, np.ones(window) / window, mode="valid")
            step = np.arange(window, trace.size + 1)  # each average ends at this step
        # Frame the typical row's progress; a row far below (no control variate) would flatten the rest.
        top = max(np.max(v) for v in smooth.values())
        low = float(np.median([np.percentile(v[v.size // 5 :], 5) for v in smooth.values()]))
        low -= 0.25 * (top - low)
        for row_name, values in smooth.items():
            label = row_name
            if model["rows"][row_name]["estimator"] == "relaxed":
                label += " (its relaxed objective)"
            if values[-1] < low:
                label += f" (below, ends at {values[-1]:.4g})"
            ax.plot(step, values, label=label, lw=1.2)
        ax.set_ylim(low, top + 0.05 * (top - low))
        ax.set(title=f"{name}: ELBO trace (moving average)", xlabel="step", ylabel="ELBO estimate")
        ax.legend(fontsize=8)
        ax = axes[1, col]
        row_names = list(model["rows"])
        x = np.arange(len(row_names))
        for offset, point in ((-0.2, "init"), (0.2, "fitted")):
            totals = [model["rows"][r]["variance"][point]["total"] for r in row_names]
            ax.bar(x + offset, np.log10(totals), width=0.4, label=f"at {point} params")
        ax.set_xticks(x, row_names, rotation=30, ha="right", fontsize=8)
        ax.set(title=f"{name}: total gradient variance", ylabel="log10 variance")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.estimators",
        description="Gradient variance, ELBO per step and ELBO per second of bbvi's estimators.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for CI")
    parser.add_argument("--budget", type=float, help="wall-time budget per row, seconds")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)
    if args.budget is not None and not args.budget > 0:
        parser.error(f"--budget must be positive, got {args.budget}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write estimators.{json,md,png} under --out, print the table."""
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.budget is not None:
        settings = dataclasses.replace(settings, budget_s=args.budget)
    started = datetime.datetime.now(datetime.UTC)
    result = {
        "benchmark": "estimators",
        "quick": args.quick,
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": _timing.machine_info(),
        "settings": dataclasses.asdict(settings),
        "models": {},
    }
    _timing.warm_up()
    traces = {}
    for build in (continuous_model, discrete_model, mixed_model):
        model = build(settings)
        result["models"][model.name], traces[model.name] = run_model(model, settings)
        print(f"{model.name}: done", file=sys.stderr)
    result["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["wall_s"] = (datetime.datetime.now(datetime.UTC) - started).total_seconds()

    table = markdown_table(result)
    _timing.write_results(args.out, "estimators", result, table, lambda path: plot(result, traces, path))
    return result


if __name__ == "__main__":
    main()
