"""Per-step cost and compile time of `bbvi.fit` against NumPyro, Blackjax and a hand-written limit.

The issue's benchmark case 1. Two regimes, each with one model, a mean-field Gaussian over the
unconstrained latents, S samples per step, Adam with one step size and one number of steps for
every contender:

- **tiny**: eight schools, non-centred (d = 10: mu, log tau, theta_tilde), S = 1, where the cost of
  dispatching a step dominates. bbvi gets `eight_schools.FAMILY`, the dict layout a user writes.
- **compute**: Bayesian logistic regression, N = 10,000, D = 100, S = 8, where the log-joint's
  gradient dominates.

The contenders, each recording the per-step ELBO (part of the work: it can cost a third of a step):

- `limit`: a hand-written, fully fused `lax.scan` under one `jit`, drawing its noise from the same
  key stream as `fit`, so the two compute the same iterates up to float32 reassociation; this is
  checked over the whole trace before anything is timed. `limit_fused_rng` is the same loop with one
  `normal` draw per step (Blackjax's key schedule): what bbvi's per-sample key splits cost.
- `fit`, `fit_bar`: `bbvi.fit(..., estimator="reparam")` without and with its progress bar.
- `numpyro_run`, `numpyro_run_bar`: NumPyro's `SVI(model, AutoDiagonalNormal, Adam, Trace_ELBO(S))`
  through `svi.run(key, num_steps, progress_bar=...)`, timed as a user calls it: every call
  re-initialises and retraces (and the bar path is a Python loop with a jitted step per iteration).
- `numpyro_scan`: `svi.init` once, then `lax.scan` of `svi.update` under `jit`: the best a NumPyro
  user can do, and the very loop `svi.run` compiles without its bar.
- `blackjax`: `blackjax.meanfield_vi(log_density, optax.adam, num_samples=S)` stepped in a `lax.scan`
  under `jit` (its default sticking-the-landing estimator).

Every contender starts from the same variational parameters (NumPyro's scale is mapped through its
softplus constraint). They are different libraries, so only `limit` and `fit` share their noise;
the others are checked to optimise the same objective: at fit's final parameters each library's own
ELBO estimator, with many particles, must agree with bbvi's within Monte Carlo error.

What is measured, per contender, on the wall clock and the process's CPU clock (which moves less
when other jobs share the machine): the first call (trace, compile and run) with the compile events
`jax.monitoring` reports in it; the steady-state time of a whole call, as medians over repeats in
which the contenders alternate (`benchmarks._timing`), with per-repeat paired ratios to the limit;
the compilations in every steady call (none unless the contender retraces); the marginal cost of a
step and the fixed cost of a call (see `derive`: fit's from one-step fits; `svi.run`'s without a bar
from `numpyro_scan`, the very loop it compiles); and the compile time, paid once by most contenders
and on every call by `svi.run`. Finally a second `fit` with a new key and the same shapes is watched
for compilations: the goal is none. `--hlo` also counts the ops of each compiled step loop, which is
what a step costs where dispatch dominates.

The issue's goals are judged on wall time and printed as pass/fail rows, with the CPU verdict
beside: fit against the limit on whole calls (its fixed cost included), against NumPyro and
Blackjax on marginal steps (NumPyro's retracing excluded), compile time against `svi.run`'s.

Usage:
    python -m benchmarks.compare                   # both regimes, a few minutes on 2 CPU cores
    python -m benchmarks.compare --quick           # small sizes for CI (mostly compilation)
    python -m benchmarks.compare --regimes tiny --repeats 9 --hlo --out /tmp/cmp   # compare.{json,md,png}
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from jax.flatten_util import ravel_pytree
from numpyro.infer import SVI, Trace_ELBO, autoguide

import bbvi
from bbvi.models import eight_schools, logistic_regression
from benchmarks import _timing, overhead

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
NAME = "compare"
REGIMES = ("tiny", "compute")
CONTENDERS = (
    "limit",
    "limit_fused_rng",
    "fit",
    "fit_bar",
    "numpyro_run",
    "numpyro_run_bar",
    "numpyro_scan",
    "blackjax",
)
RETRACING = ("numpyro_run", "numpyro_run_bar")  # svi.run traces and compiles on every call
GUIDES = ("AutoDiagonalNormal", "AutoNormal")

# The goals for fit's per-step time over the limit's, progress bar on or off.
GOAL_VS_LIMIT = {"tiny": 1.25, "compute": 1.10}
GOAL_VS_NUMPYRO_BAR = 10.0  # tiny: fit at least this many times faster than svi.run with its bar

# Different libraries' ELBO estimates at the same parameters may differ by Monte Carlo error only:
# this many standard errors of a difference of two estimates (false alarm odds below 1e-6).
CHECK_SDS = 5.0

_STD_NORMAL_ENTROPY = 0.5 * (1.0 + math.log(2.0 * math.pi))


@dataclasses.dataclass(frozen=True)
class Regime:
    """One regime's model size and run lengths."""

    num_samples: int
    num_steps: int
    repeats: int
    num_data: int = 0  # logistic regression only
    dim: int = 10


@dataclasses.dataclass(frozen=True)
class Settings:
    """The benchmark; `FULL` is the issue's case, `QUICK` the CI smoke run."""

    tiny: Regime = Regime(num_samples=1, num_steps=20_000, repeats=7)
    compute: Regime = Regime(num_samples=8, num_steps=1000, repeats=5, num_data=10_000, dim=100)
    one_step_repeats: int = 3  # one-step fits, for fit's fixed cost per call
    compile_repeats: int = 2  # fits of a fresh log-joint (a new model: compiles again), beyond the first
    learning_rate: float = 1e-2
    numpyro_guide: str = "AutoDiagonalNormal"  # or "AutoNormal" (one site per latent, like the dict family)
    check_particles: int = 4096  # particles per ELBO estimate in the cross-library check
    seed: int = 0


FULL = Settings()
QUICK = Settings(
    # At most 1280 steps: one-step fits then share the run's compiled chunk (see fit's chunking).
    tiny=Regime(num_samples=1, num_steps=1000, repeats=1),
    compute=Regime(num_samples=8, num_steps=200, repeats=1, num_data=1000, dim=20),
    one_step_repeats=1,
    compile_repeats=0,
    check_particles=1024,
)


# --- the problems: one model, written for each library ----------------------------------------


class Problem(NamedTuple):
    """One regime's model as each contender takes it.

    `log_density_u` is the log-joint pulled back to the unconstrained latents (a dict or a vector
    laid out like bbvi's parameters), what Blackjax fits and what ADVI-style bbvi and NumPyro
    optimise implicitly; `to_numpyro` maps bbvi's parameters to the guide's (constrained) ones.
    """

    description: str
    log_joint: Callable
    family: Any
    numpyro_model: Callable
    log_density_u: Callable
    make_limit: Callable  # (S, num_steps, optimizer, fused_rng) -> jitted (params, run_key) -> (..., elbos)
    to_numpyro: Callable  # (params, guide name) -> init_params for the guide


def _flat(params, field):
    """One parameter field of every leaf family, flattened in bbvi's leaf order (NumPyro's site order)."""
    leaves = params.values() if "loc" not in params else [params]
    return jnp.concatenate([jnp.ravel(p[field]) for p in leaves])


def _numpyro_params(names, params, guide):
    """bbvi's (loc, log_scale) as the guide's `auto_loc`/`auto_scale` (or per-site) initial values."""
    if guide == "AutoDiagonalNormal":
        return {"auto_loc": _flat(params, "loc"), "auto_scale": jnp.exp(_flat(params, "log_scale"))}
    leaves = [params[name] for name in names] if len(names) > 1 else [params]
    out = {}
    for name, p in zip(names, leaves):
        out[f"{name}_auto_loc"] = p["loc"]
        out[f"{name}_auto_scale"] = jnp.exp(p["log_scale"])
    return out


def eight_schools_problem() -> Problem:
    def model():
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
        theta_tilde = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0).expand([8]).to_event(1))
        numpyro.sample("y", dist.Normal(mu + tau * theta_tilde, eight_schools.SIGMA), obs=eight_schools.Y)

    def log_density_u(u):
        # tau = exp(u_tau), numpyro's biject_to(positive), whose log-Jacobian is u_tau.
        z = {"mu": u["mu"], "tau": jnp.exp(u["tau"]), "theta_tilde": u["theta_tilde"]}
        return eight_schools.log_joint(z) + u["tau"]

    return Problem(
        description="eight schools, non-centred, d=10",
        log_joint=eight_schools.log_joint,
        family=eight_schools.FAMILY,
        numpyro_model=model,
        log_density_u=log_density_u,
        make_limit=make_eight_schools_limit,
        to_numpyro=lambda params, guide: _numpyro_params(("mu", "tau", "theta_tilde"), params, guide),
    )


def logistic_problem(regime: Regime, seed: int) -> Problem:
    data = logistic_regression.simulate(seed, regime.num_data, regime.dim)
    # One log-joint object for every fit: fit's compile cache keys on it, as a user's repeated fits would.
    log_joint = logistic_regression.log_joint_fn(data)

    def model():
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([regime.dim]).to_event(1))
        numpyro.sample("y", dist.Bernoulli(logits=data.x @ w), obs=data.y)

    def make_limit(num_samples, num_steps, optimizer, fused_rng):
        case = overhead.Settings(regime.num_data, regime.dim, num_samples, num_steps)
        noise = overhead.fused_noise if fused_rng else overhead.matched_noise
        return overhead.make_limit(log_joint, case, optimizer, noise)

    return Problem(
        description=f"logistic regression, N={regime.num_data}, D={regime.dim}",
        log_joint=log_joint,
        family=logistic_regression.mean_field_family(regime.dim),
        numpyro_model=model,
        log_density_u=log_joint,
        make_limit=make_limit,
        to_numpyro=lambda params, guide: _numpyro_params(("w",), params, guide),
    )


# --- the hand-written limit for eight schools (logistic regression's is benchmarks.overhead's) --


def make_eight_schools_limit(num_samples, num_steps, optimizer, fused_rng=False):
    """The fused loop over eight schools' dict family: `(params, run_key) -> (params, opt_state, elbos)`.

    It does what `fit` does for `eight_schools.FAMILY` with `estimator="reparam"`, written out for
    this one case: per step key `fold_in(run_key, step)`, split once into one key per sample (the
    step key itself for one sample), as `bbvi.estimators.draws.sample_keys` does, and one draw of
    10 standard normals per sample shared by the three Gaussian leaves (mu, tau, theta_tilde, in
    the dict's order), as bbvi's estimator draws them; every entropy in closed form, tau's that
    of its unconstrained base with the log-Jacobian of exp in the log-density, as in fit.
    `fused_rng` draws all the samples' noise in one call, skipping the split.
    """

    def noise(key):
        if fused_rng:
            eps = jax.random.normal(key, (num_samples, 10))
            return eps[:, 0], eps[:, 1], eps[:, 2:]

        def one(keys):
            eps = jax.random.normal(keys[0], (10,))
            return eps[0], eps[1], eps[2:]

        keys = key[None, None] if num_samples == 1 else jax.random.split(key, (num_samples, 1))
        return jax.vmap(one)(keys)

    def elbo(params, key):
        mu, tau, theta = params["mu"], params["tau"], params["theta_tilde"]
        e_mu, e_tau, e_theta = noise(key)

        def integrand(e_mu, e_tau, e_theta):
            u_mu = mu["loc"] + e_mu * jnp.exp(mu["log_scale"])
            u_tau = tau["loc"] + e_tau * jnp.exp(tau["log_scale"])
            u_theta = theta["loc"] + e_theta * jnp.exp(theta["log_scale"])
            z = {"mu": u_mu, "tau": jnp.exp(u_tau), "theta_tilde": u_theta}
            return eight_schools.log_joint(z) + u_tau

        entropy = mu["log_scale"] + tau["log_scale"] + jnp.sum(theta["log_scale"]) + 10 * _STD_NORMAL_ENTROPY
        return jnp.mean(jax.vmap(integrand)(e_mu, e_tau, e_theta)) + entropy

    def run(params, run_key):
        def step(carry, i):
            params, opt_state = carry
            value, grad = jax.value_and_grad(elbo)(params, jax.random.fold_in(run_key, i))
            updates, opt_state = optimizer.update(jax.tree.map(jnp.negative, grad), opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        (params, opt_state), elbos = jax.lax.scan(
            step, (params, optimizer.init(params)), jnp.arange(num_steps)
        )
        return params, opt_state, elbos

    return jax.jit(run)


# --- counting compilations ----------------------------------------------------------------------

_TRACE, _LOWER, _COMPILE = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class CompileLog:
    """JAX's own tracing, lowering and XLA compile events, as `jax.monitoring` reports them."""

    def __init__(self):
        self.events: list[tuple[str, float]] = []

    def __call__(self, event, duration, **_):
        if event in (_TRACE, _LOWER, _COMPILE):
            self.events.append((event, duration))

    @contextlib.contextmanager
    def listening(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        try:
            yield self
        finally:
            jax.monitoring.unregister_event_duration_listener(self)

    def mark(self) -> int:
        return len(self.events)

    def since(self, mark: int) -> dict[str, float]:
        """What happened after `mark`: seconds in each phase and the number of XLA compilations.

        Tracing inside an outer trace (a scan's body) is part of the outer event; NumPyro's
        `svi.run` traces its scan body outside any jit, which no event covers.
        """
        new = self.events[mark:]
        out = {
            phase: sum(d for e, d in new if e == event)
            for phase, event in (("trace_s", _TRACE), ("lower_s", _LOWER), ("xla_compile_s", _COMPILE))
        }
        out["total_s"] = sum(out.values())
        out["compilations"] = sum(1 for e, _ in new if e == _COMPILE)
        out["traces"] = sum(1 for e, _ in new if e == _TRACE)
        return out


# --- the contenders -----------------------------------------------------------------------------


def make_contenders(problem: Problem, regime: Regime, settings: Settings):
    """`(contenders, one_step, helpers)`: zero-argument callables, each a whole run as a user makes it.

    They return what the library returns (read by `elbo_trace`), so timing includes nothing extra.
    `one_step` holds one-step fits, for fit's fixed cost per call.
    """
    s, n = regime.num_samples, regime.num_steps
    optimizer = optax.adam(settings.learning_rate)  # one object: fit's compile cache keys on it
    key = jax.random.key(settings.seed)
    _, run_key = jax.random.split(key)  # fit's step keys are fold_in(run_key, step)
    init_params = bbvi.init(problem.family, jax.random.key(settings.seed + 1))

    limit = problem.make_limit(s, n, optimizer, False)
    limit_fused = problem.make_limit(s, n, optimizer, True)

    def run_fit(num_steps, progress_bar, key=key, log_joint=problem.log_joint):
        return bbvi.fit(
            log_joint,
            problem.family,
            key=key,
            num_steps=num_steps,
            optimizer=optimizer,
            estimator="reparam",  # what "auto" picks for Gaussian leaves; said outright
            num_samples=s,
            init_params=init_params,
            progress_bar=progress_bar,
        )

    guide_cls = getattr(autoguide, settings.numpyro_guide)
    guide = guide_cls(problem.numpyro_model)
    svi = SVI(problem.numpyro_model, guide, numpyro.optim.Adam(settings.learning_rate), Trace_ELBO(s))
    numpyro_init = problem.to_numpyro(init_params, settings.numpyro_guide)
    numpyro_key = jax.random.key(settings.seed + 2)

    def run_numpyro(num_steps, progress_bar):
        return svi.run(numpyro_key, num_steps, progress_bar=progress_bar, init_params=numpyro_init)

    svi_state0 = svi.init(numpyro_key, init_params=numpyro_init)

    @jax.jit
    def numpyro_scan(state):
        return jax.lax.scan(lambda state, _: svi.update(state), state, None, length=n)

    import blackjax  # the bench extra; imported here so a missing Blackjax names itself clearly

    bj = blackjax.meanfield_vi(problem.log_density_u, optimizer, num_samples=s)
    loc = jax.tree.map(lambda p: p["loc"], init_params, is_leaf=_is_param_dict)
    log_scale = jax.tree.map(lambda p: p["log_scale"], init_params, is_leaf=_is_param_dict)
    bj_state0 = blackjax.vi.meanfield_vi.MFVIState(loc, log_scale, optimizer.init((loc, log_scale)))
    bj_key = jax.random.key(settings.seed + 3)

    @jax.jit
    def blackjax_scan(state, key):
        def body(state, i):
            state, info = bj.step(jax.random.fold_in(key, i), state)
            return state, info.elbo

        return jax.lax.scan(body, state, jnp.arange(n))

    contenders = {
        "limit": lambda: limit(init_params, run_key),
        "limit_fused_rng": lambda: limit_fused(init_params, run_key),
        "fit": lambda: run_fit(n, False),
        "fit_bar": lambda: run_fit(n, True),
        "numpyro_run": lambda: run_numpyro(n, False),
        "numpyro_run_bar": lambda: run_numpyro(n, True),
        "numpyro_scan": lambda: numpyro_scan(svi_state0),
        "blackjax": lambda: blackjax_scan(bj_state0, bj_key),
    }
    one_step = {"fit": lambda: run_fit(1, False), "fit_bar": lambda: run_fit(1, True)}
    # The compiled step loops, for `--hlo`: under jit, fit runs its whole loop as one program.
    programs = {
        "limit": lambda: limit.lower(init_params, run_key),
        "limit_fused_rng": lambda: limit_fused.lower(init_params, run_key),
        "fit": lambda: jax.jit(lambda key: run_fit(n, False, key=key)).lower(key),
        "numpyro_scan": lambda: numpyro_scan.lower(svi_state0),
        "blackjax": lambda: blackjax_scan.lower(bj_state0, bj_key),
    }
    return contenders, one_step, {"run_fit": run_fit, "guide": guide, "programs": programs}


def _is_param_dict(x) -> bool:
    return isinstance(x, dict) and "loc" in x


def elbo_trace(name: str, output) -> np.ndarray:
    """The per-step ELBO each contender recorded (NumPyro and Blackjax record its negation, a loss)."""
    if name.startswith("limit"):
        return np.asarray(output[2])
    if name.startswith("fit"):
        return np.asarray(output.elbo)
    if name == "numpyro_scan":
        return -np.asarray(output[1])
    if name.startswith("numpyro"):
        return -np.asarray(output.losses)
    return -np.asarray(output[1])  # blackjax: its info.elbo is the KL objective, E[log q - log p]


# --- checking the work --------------------------------------------------------------------------


def check_same_objective(problem: Problem, params, helpers, settings: Settings) -> dict:
    """Each library's own ELBO estimate at fit's final parameters, with many particles; they must
    agree within Monte Carlo error, or the contenders are not optimising the same thing.

    The standard error is of the plain Monte Carlo integrand `log p(u) - log q(u)` (bbvi's closed-form
    entropy only lowers its own variance), estimated from the same number of draws.
    """
    import blackjax

    k = settings.check_particles
    value_and_grad = bbvi.elbo_value_and_grad(
        problem.log_joint, problem.family, estimator="reparam", num_samples=k
    )
    numpyro_elbo = Trace_ELBO(num_particles=k)
    zero = optax.set_to_zero()  # one step that moves nothing: only Blackjax's objective estimate
    bj = blackjax.meanfield_vi(problem.log_density_u, zero, num_samples=k)

    @jax.jit  # one program: eagerly, each small op would compile on its own
    def estimates(params, key):
        keys = jax.random.split(key, 4)
        loc = jax.tree.map(lambda p: p["loc"], params, is_leaf=_is_param_dict)
        log_scale = jax.tree.map(lambda p: p["log_scale"], params, is_leaf=_is_param_dict)
        numpyro_params = problem.to_numpyro(params, settings.numpyro_guide)
        numpyro_loss = numpyro_elbo.loss(keys[1], numpyro_params, problem.numpyro_model, helpers["guide"])
        state = blackjax.vi.meanfield_vi.MFVIState(loc, log_scale, zero.init((loc, log_scale)))
        # The integrand's spread, from k draws of q in the unconstrained space.
        flat_loc, unravel = ravel_pytree(loc)
        flat_scale = jnp.exp(ravel_pytree(log_scale)[0])
        u = flat_loc + flat_scale * jax.random.normal(keys[3], (k, flat_loc.size))
        log_q = jnp.sum(jax.scipy.stats.norm.logpdf(u, flat_loc, flat_scale), axis=1)
        values = jax.vmap(lambda x: problem.log_density_u(unravel(x)))(u) - log_q
        return {
            "bbvi": value_and_grad(params, keys[0])[0],
            "numpyro": -numpyro_loss,
            "blackjax": -bj.step(keys[2], state)[1].elbo,
            "se": jnp.std(values) / math.sqrt(k),
        }

    estimates = {name: float(v) for name, v in estimates(params, jax.random.key(settings.seed + 4)).items()}
    se = estimates.pop("se")
    bbvi_elbo = estimates["bbvi"]
    tolerance = CHECK_SDS * math.sqrt(2.0) * se
    diffs = {name: abs(v - bbvi_elbo) for name, v in estimates.items() if name != "bbvi"}
    result = {
        "particles": k,
        "elbo_at_fit_params": estimates,
        "monte_carlo_se": se,
        "abs_diff_to_bbvi": diffs,
        "tolerance": tolerance,
        "passed": all(d <= tolerance for d in diffs.values()),
    }
    if not result["passed"]:
        raise RuntimeError(
            f"the libraries' ELBOs at the same parameters disagree beyond Monte Carlo error ({tolerance:.3g} "
            f"= {CHECK_SDS} combined standard errors): {estimates}. The models are not the same "
            "log-density (check the NumPyro model and Blackjax's log-density against the bbvi log-joint)."
        )
    return result


def check_fit_matches_limit(limit_out, fit_out) -> dict:
    """fit and the limit share noise: the whole ELBO trace and the final parameters must agree."""
    limit_params, _, limit_elbos = limit_out
    diffs = overhead.max_abs_diffs(limit_params, limit_elbos, fit_out.params, fit_out.elbo)
    overhead.check_same_work(diffs)
    return diffs


def count_repeat_fit_compiles(run_fit, num_steps, log: CompileLog, key) -> dict:
    """Compilations during a second fit of the same model and shapes with a new key: expect none."""
    mark = log.mark()
    jax.block_until_ready(run_fit(num_steps, False, key=key))
    return log.since(mark)


def loop_stats(lowered) -> dict[str, int]:
    """Size of a compiled step loop: what a step costs where dispatch dominates (the tiny regime).

    On CPU every fusion, copy and nested loop in the body is a kernel launched once per step, and
    JAX lowers each threefry call (a key split, fold-in or draw) to a rolled loop of 5 rounds, so
    `nested_loops` counts the random-number calls per step.
    """
    text = lowered.compile().as_text()
    bodies, current = {}, None
    for line in text.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            current = bodies.setdefault(header.group(1), [])
        elif current is not None and line.startswith("  "):
            current.append(line)
    loops = re.findall(r"body=%?([\w.\-]+)", text)
    main = max(loops, key=lambda b: len(bodies.get(b, [])))  # the step loop is the biggest body
    ops = [
        m.group(1)
        for m in (re.search(r" ([a-z][\w\-]*)\(", line.split("=", 1)[-1]) for line in bodies[main])
        if m
    ]
    return {
        "instructions": len(ops),
        "fusions": ops.count("fusion"),
        "copies": ops.count("copy"),
        # Loops traced inside the step (the scan's or fori_loop's body), not the set-up's key splits.
        "nested_loops": len(re.findall(r" while\(.*op_name=\"[^\"]*/while/body/", text)),
    }


# --- the benchmark ------------------------------------------------------------------------------


def summarise(wall: dict, cpu: dict, num_steps: int) -> dict[str, Any]:
    def per_step(times):
        return {name: [t / num_steps * 1e6 for t in ts] for name, ts in times.items()}

    out = {}
    for clock, times in (("wall", wall), ("cpu", cpu)):
        us = per_step(times)
        medians = {name: _timing.median(v) for name, v in us.items()}
        out[clock] = {
            "times_s": times,
            "per_step_us": us,
            "median_per_step_us": medians,
            "ratio_of_medians": {name: medians[name] / medians["limit"] for name in times},
            "median_paired_ratio": {
                name: _timing.median(_timing.paired_ratios(ts, times["limit"])) for name, ts in times.items()
            },
        }
    return out


def run_regime(name: str, regime: Regime, settings: Settings, log: CompileLog, hlo: bool) -> dict[str, Any]:
    problem = eight_schools_problem() if name == "tiny" else logistic_problem(regime, settings.seed)
    print(
        f"[{name}] {problem.description}, S={regime.num_samples}, {regime.num_steps} steps", file=sys.stderr
    )
    contenders, one_step, helpers = make_contenders(problem, regime, settings)

    # First calls, one contender at a time: trace, compile and run. fit goes before fit_bar, which
    # then reuses its compiled program (the bar does not change what runs).
    first_call, compile_first, outputs = {"wall": {}, "cpu": {}}, {}, {}
    for cname, fn in contenders.items():
        mark = log.mark()
        first_call["wall"][cname], first_call["cpu"][cname], outputs[cname] = _timing.timed(fn)
        compile_first[cname] = log.since(mark)

    check = {
        "fit_vs_limit": check_fit_matches_limit(outputs["limit"], outputs["fit"]),
        "fit_bar_vs_limit": check_fit_matches_limit(outputs["limit"], outputs["fit_bar"]),
        "tolerances": {"params": overhead.PARAMS_TOL, "elbo_rel": overhead.ELBO_RTOL},
        "same_objective": check_same_objective(problem, outputs["fit"].params, helpers, settings),
    }
    traces = {cname: elbo_trace(cname, out) for cname, out in outputs.items()}
    for cname, trace in traces.items():
        if trace.shape != (regime.num_steps,) or not np.all(np.isfinite(trace)):
            raise RuntimeError(f"{cname}: the ELBO trace is not {regime.num_steps} finite values")
    tail = max(1, regime.num_steps // 10)
    elbo_summary = {
        cname: {"first": float(t[0]), "mean_last_10pct": float(np.mean(t[-tail:]))}
        for cname, t in traces.items()
    }

    # Steady state: the contenders alternate; every call is watched for (re)compilations.
    steady: dict[str, list[dict]] = {cname: [] for cname in contenders}

    def watched(cname, fn):
        def call():
            mark = log.mark()
            out = fn()
            steady[cname].append(log.since(mark))
            return out

        return call

    wall, cpu = _timing.alternate(
        {cname: watched(cname, fn) for cname, fn in contenders.items()}, regime.repeats
    )
    summary = summarise(wall, cpu, regime.num_steps)

    # fit's fixed cost per call (validation, the first step run alone, dispatching chunks): one-step
    # fits, whose first call compiles the one-step chunk program.
    for fn in one_step.values():
        _timing.timed(fn)
    one_wall, one_cpu = _timing.alternate(one_step, settings.one_step_repeats)

    # Compile samples beyond the first call: fits of fresh log-joints, each a new model to fit's cache.
    fresh_fits: dict[str, list[float]] = {"wall": [], "cpu": []}
    for _ in range(settings.compile_repeats):
        fresh = functools.partial(problem.log_joint)  # a new object: fit's cache misses
        w, c, _ = _timing.timed(
            lambda fresh=fresh: helpers["run_fit"](regime.num_steps, False, log_joint=fresh)
        )
        fresh_fits["wall"].append(w)
        fresh_fits["cpu"].append(c)
    # Seconds of compile events in each steady call of svi.run with its bar, on either clock: on the
    # CPU clock scaled by the call's CPU / wall ratio (contention stretches a call's wall time evenly).
    compile_seconds = {
        "wall": [e["total_s"] for e in steady["numpyro_run_bar"]],
        "cpu": [
            e["total_s"] * min(1.0, c / w)
            for e, c, w in zip(steady["numpyro_run_bar"], cpu["numpyro_run_bar"], wall["numpyro_run_bar"])
        ],
    }
    for clock, times, one in (("wall", wall, one_wall), ("cpu", cpu, one_cpu)):
        summary[clock].update(
            derive(times, first_call[clock], one, fresh_fits[clock], compile_seconds[clock], regime.num_steps)
        )
    hlo_stats = {cname: loop_stats(lower()) for cname, lower in helpers["programs"].items()} if hlo else None
    repeat = count_repeat_fit_compiles(
        helpers["run_fit"], regime.num_steps, log, jax.random.key(settings.seed + 5)
    )

    return {
        "description": problem.description,
        "regime": dataclasses.asdict(regime),
        "check": check,
        "elbo": elbo_summary,
        "compile_events_first_call": compile_first,
        "compilations_per_steady_call": {
            c: _timing.median([e["compilations"] for e in v]) for c, v in steady.items()
        },
        "compile_events_steady_s": {c: _timing.median([e["total_s"] for e in v]) for c, v in steady.items()},
        **summary,
        "fit_one_step_s": {"wall": one_wall, "cpu": one_cpu},
        "fit_repeat_compiles": repeat,
        "loop_hlo": hlo_stats,
        "goals": goals(name, summary, repeat),
    }


def derive(times, first_call, one_step, fresh_fits, bar_compile_s, n) -> dict[str, Any]:
    """For one clock: each contender's marginal cost of a step, fixed cost per call and compile time.

    - Marginal step: a scan's fixed cost is one dispatch, so its call over its steps; fit's from
      one-step fits, `(T_N - T_1) / (N - 1)`; `svi.run` without its bar compiles and runs exactly
      `numpyro_scan`'s loop, so that loop's; with the bar, each call net of the compile it repeats
      (seconds of compile events; a difference of two calls would drown in that compile's noise).
    - Fixed cost per call, beyond its steps: fit's one-step call less a step; svi.run's calls less
      their steps (init, trace, compile). None to speak of for a jitted scan.
    - Compile time: paid once by most contenders, the first call less a steady one (for fit also
      fits of fresh log-joints, less a steady fit); paid on every call by svi.run: its fixed cost.
    """
    medians = {cname: _timing.median(ts) for cname, ts in times.items()}
    marginal = {cname: medians[cname] / n * 1e6 for cname in times}
    for cname, ts in one_step.items():
        if medians[cname] > _timing.median(ts) and n > 1:  # else the difference is all noise: the call's
            marginal[cname] = (medians[cname] - _timing.median(ts)) / (n - 1) * 1e6
    marginal["numpyro_run"] = marginal["numpyro_scan"]
    marginal["numpyro_run_bar"] = _timing.median(
        [(t - c if t > c else t) / n * 1e6 for t, c in zip(times["numpyro_run_bar"], bar_compile_s)]
    )
    per_call = {cname: _timing.median(ts) - marginal[cname] * 1e-6 for cname, ts in one_step.items()}
    for cname in RETRACING:
        per_call[cname] = _timing.median([t - n * marginal[cname] * 1e-6 for t in times[cname]])
    samples = {cname: [first_call[cname] - medians[cname]] for cname in times}
    samples["fit"] += [t - medians["fit"] for t in fresh_fits]
    for cname in RETRACING:
        samples[cname] = [t - n * marginal[cname] * 1e-6 for t in times[cname]]
    return {
        "first_call_s": first_call,
        "marginal_per_step_us": marginal,
        "per_call_s": per_call,
        "compile_s": {cname: max(_timing.median(v), 0.0) for cname, v in samples.items()},
        "compile_s_samples": samples,
    }


def goals(name, summary, repeat) -> dict[str, dict]:
    """The issue's goals for this regime: `{target, wall, cpu, met, met_cpu}` each (fit's over theirs).

    fit against the limit: whole calls (fit's fixed cost included); against the other libraries:
    marginal steps (NumPyro's retracing excluded); compile time against `svi.run`'s per call.
    """
    out: dict[str, dict] = {}

    def add(goal, target, at_most, value):
        entry = out.setdefault(goal, {"target": f"{'<=' if at_most else '>='} {target:g}"})
        for clock in ("wall", "cpu"):
            v = value(summary[clock])
            entry[clock] = v
            entry["met" if clock == "wall" else "met_cpu"] = bool(v <= target if at_most else v >= target)

    for cname in ("fit", "fit_bar"):
        add(f"{cname} / limit", GOAL_VS_LIMIT[name], True, lambda s, c=cname: s["ratio_of_medians"][c])
    if name == "tiny":
        add(
            "numpyro_run_bar / fit",
            GOAL_VS_NUMPYRO_BAR,
            False,
            lambda s: s["marginal_per_step_us"]["numpyro_run_bar"] / s["marginal_per_step_us"]["fit"],
        )
        others = ("numpyro_run", "blackjax")
    else:
        others = ("numpyro_run", "numpyro_run_bar", "numpyro_scan", "blackjax")
    for other in others:
        add(
            f"fit / {other} (marginal step)",
            1.0,
            True,
            lambda s, o=other: s["marginal_per_step_us"]["fit"] / s["marginal_per_step_us"][o],
        )
    add(
        "fit compile / numpyro_run compile",
        1.0,
        True,
        lambda s: s["compile_s"]["fit"] / max(s["compile_s"]["numpyro_run"], 1e-9),
    )
    compiles = repeat["compilations"]
    out["compilations in a repeated fit"] = {
        "target": "0",
        "wall": compiles,
        "cpu": compiles,
        "met": compiles == 0,
        "met_cpu": compiles == 0,
    }
    return out


# --- reporting ----------------------------------------------------------------------------------

_LABELS = {
    "limit": "hand-written `lax.scan` (limit)",
    "limit_fused_rng": "limit, one `normal` draw per step",
    "fit": "`bbvi.fit`, no bar",
    "fit_bar": "`bbvi.fit`, progress bar",
    "numpyro_run": "NumPyro `svi.run`, no bar",
    "numpyro_run_bar": "NumPyro `svi.run`, progress bar",
    "numpyro_scan": "NumPyro `svi.update` in a jitted scan",
    "blackjax": "Blackjax `meanfield_vi` in a jitted scan",
}


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"`bbvi.fit` against NumPyro {m['numpyro']}, Blackjax {result['blackjax_version']} and a "
        f"hand-written limit ({m['backend']}, {m['device_kind']}, {m['usable_cpus']} cores, load average "
        f"{m['load_average'][0]:.1f} at start); Adam({result['settings']['learning_rate']}), NumPyro guide "
        f"{result['settings']['numpyro_guide']}. Medians over alternating repeats.",
    ]
    for name, r in result["regimes"].items():
        reg, wall, cpu = r["regime"], r["wall"], r["cpu"]
        lines += [
            "",
            f"**{name}**: {r['description']}, S={reg['num_samples']}, {reg['num_steps']} steps, "
            f"{reg['repeats']} repeats",
            "",
            "| contender | µs/step (call) | × limit | × limit (paired) | CPU µs/step | × limit (CPU) "
            "| marginal µs/step | per-call s | first call s | compile s | compile CPU s | compiles/call "
            "| final ELBO |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for cname, label in _LABELS.items():
            per_call = wall["per_call_s"].get(cname)
            lines.append(
                f"| {label} | {wall['median_per_step_us'][cname]:.2f} "
                f"| {wall['ratio_of_medians'][cname]:.3f} "
                f"| {wall['median_paired_ratio'][cname]:.3f} | {cpu['median_per_step_us'][cname]:.2f} "
                f"| {cpu['ratio_of_medians'][cname]:.3f} | {wall['marginal_per_step_us'][cname]:.2f} "
                f"| {'' if per_call is None else f'{per_call:.3f}'} | {wall['first_call_s'][cname]:.2f} "
                f"| {wall['compile_s'][cname]:.2f} | {cpu['compile_s'][cname]:.2f} "
                f"| {r['compilations_per_steady_call'][cname]:g} "
                f"| {r['elbo'][cname]['mean_last_10pct']:.2f} |"
            )
        same = r["check"]["same_objective"]
        lines += [
            "",
            f"Checks: fit and the limit agree step by step (largest relative ELBO difference "
            f"{r['check']['fit_vs_limit']['elbo_rel']:.1e}); at fit's final parameters the ELBO is "
            + ", ".join(f"{k} {v:.3f}" for k, v in same["elbo_at_fit_params"].items())
            + f" ({same['particles']} particles, tolerance {same['tolerance']:.3f}).",
            "",
            "| goal | target | wall | | CPU | |",
            "|---|---:|---:|---|---:|---|",
        ]
        for goal, g in r["goals"].items():
            verdicts = ["pass" if g[k] else "**FAIL**" for k in ("met", "met_cpu")]
            lines.append(
                f"| {goal} | {g['target']} | {g['wall']:.3g} | {verdicts[0]} "
                f"| {g['cpu']:.3g} | {verdicts[1]} |"
            )
        if r["loop_hlo"]:
            lines += [
                "",
                "Compiled step loop (`--hlo`):",
                "",
                "| contender | instructions | fusions | copies | nested loops (RNG calls) |",
                "|---|---:|---:|---:|---:|",
            ]
            lines += [
                f"| {cname} | {h['instructions']} | {h['fusions']} | {h['copies']} | {h['nested_loops']} |"
                for cname, h in r["loop_hlo"].items()
            ]
    lines += [
        "",
        "µs/step (call): a whole call over its steps, the user's view (NumPyro's `svi.run` re-initialises, "
        "retraces and recompiles on every call). Marginal: the cost of one more step: for fit "
        "`(T_N - T_1) / (N - 1)`; for `svi.run` without a bar, the loop it compiles (`numpyro_scan`'s); "
        "with the bar, a call net of its compile events. Per-call s: the fixed cost of a call beyond its "
        "steps. Compile s: the first call less a steady one (for fit, the median with fits of fresh "
        "log-joints); for `svi.run`, which pays it on every call, its per-call cost. Goals: fit against "
        "the limit on whole calls, against NumPyro and Blackjax on marginal steps; judged on wall time, "
        "with CPU time beside it (it moves less when other jobs share the machine).",
    ]
    if result["quick"]:
        lines.append("--quick is a smoke run: its steps are so cheap that fixed costs move the ratios.")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(result["regimes"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / max(len(regimes), 1)
    x = np.arange(len(CONTENDERS))
    for i, name in enumerate(regimes):
        r = result["regimes"][name]
        axes[0].bar(
            x + i * width, [r["wall"]["median_per_step_us"][c] for c in CONTENDERS], width, label=name
        )
        axes[1].bar(x + i * width, [r["wall"]["compile_s"][c] for c in CONTENDERS], width, label=name)
    for ax, title in zip(axes, ("per-step wall time, whole call (µs, log)", "compile time (s)")):
        ax.set_xticks(x + width * (len(regimes) - 1) / 2, CONTENDERS, rotation=35, ha="right")
        ax.set_title(title)
        ax.legend()
    axes[0].set_yscale("log")
    fig.suptitle(f"bbvi.fit vs NumPyro, Blackjax and the limit ({result['machine']['device_kind']})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- entry point --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{NAME}",
        description="Per-step cost and compile time of bbvi.fit against NumPyro, Blackjax and a fused limit.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for CI")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})"
    )
    parser.add_argument("--regimes", nargs="+", choices=REGIMES, default=list(REGIMES), help="which regimes")
    parser.add_argument("--repeats", type=int, help="timed calls per contender in each regime")
    parser.add_argument("--tiny-steps", type=int, help="steps per call in the tiny regime")
    parser.add_argument("--compute-steps", type=int, help="steps per call in the compute regime")
    parser.add_argument("--numpyro-guide", choices=GUIDES, help="NumPyro's mean-field autoguide")
    parser.add_argument(
        "--hlo",
        action="store_true",
        help="also count the ops in each compiled step loop (compiles them again)",
    )
    args = parser.parse_args(argv)
    for name in ("repeats", "tiny_steps", "compute_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive int, got {value}")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    settings = QUICK if args.quick else FULL
    regimes = {}
    for name, steps in (("tiny", args.tiny_steps), ("compute", args.compute_steps)):
        regime = getattr(settings, name)
        changes = {"num_steps": steps, "repeats": args.repeats}
        regimes[name] = dataclasses.replace(regime, **{k: v for k, v in changes.items() if v is not None})
    if args.numpyro_guide is not None:
        regimes["numpyro_guide"] = args.numpyro_guide
    return dataclasses.replace(settings, **regimes)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write `compare.{json,md,png}` under `--out`, print the table."""
    args = parse_args(argv)
    settings = settings_from(args)
    import blackjax

    started = datetime.datetime.now(datetime.UTC)
    result: dict[str, Any] = {
        "benchmark": NAME,
        "quick": args.quick,
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": _timing.machine_info(),
        "blackjax_version": blackjax.__version__,
        "settings": dataclasses.asdict(settings),
        "regimes": {},
    }
    _timing.warm_up()
    log = CompileLog()
    with log.listening():
        for name in args.regimes:
            result["regimes"][name] = run_regime(name, getattr(settings, name), settings, log, args.hlo)
    result["all_goals_met"] = all(g["met"] for r in result["regimes"].values() for g in r["goals"].values())
    result["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["wall_s"] = (datetime.datetime.now(datetime.UTC) - started).total_seconds()

    _timing.write_results(args.out, NAME, result, markdown(result), lambda path: plot(result, path))
    return result


if __name__ == "__main__":
    main()
