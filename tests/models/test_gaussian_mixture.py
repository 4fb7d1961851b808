"""The Bayesian Gaussian mixture: CAVI and EM against their guarantees, black-box VI and SVI against CAVI.

Float64 references are computed with numpy / scipy (the suite runs JAX in float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special, stats

import bbvi
from bbvi.models import gaussian_mixture as gm
from tests.models._helpers import data_file_or_skip

NUM_CAVI_ITERATIONS = 30
NUM_FIT_STEPS = 2000


@pytest.fixture(scope="module")
def data():
    data = gm.simulate(seed=0, num_data=60)
    means = np.asarray(data.means)
    separation = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(data.num_clusters, 1)]
    # The precondition of every comparison below: clusters so well separated (over 6 noise sds apart)
    # that CAVI from spread-out initial means finds the global optimum.
    assert separation.min() > 6 * data.noise_scale, separation
    return data


@pytest.fixture(scope="module")
def cavi_result(data):
    return gm.cavi(data, key=jax.random.key(0), num_iterations=NUM_CAVI_ITERATIONS)


def elbo64(data, m, s, phi):
    """The mean field's ELBO in float64, from scipy's densities and entropies (independent of the module)."""
    x = np.asarray(data.x, np.float64)
    m, phi = np.asarray(m, np.float64), np.asarray(phi, np.float64)
    k, d = m.shape
    s2 = np.broadcast_to(np.asarray(s, np.float64).reshape(k, -1) ** 2, (k, d))
    prior, noise = data.prior_scale, data.noise_scale
    e_log_prior_mu = np.sum(stats.norm.logpdf(m, 0, prior) - s2 / (2 * prior**2))
    e_log_prior_c = x.shape[0] * np.log(1 / k)
    log_lik = stats.norm.logpdf(x[:, None, :], m[None], noise).sum(-1) - s2.sum(-1) / (2 * noise**2)
    entropy = np.sum(stats.norm.entropy(scale=np.sqrt(s2))) + np.sum(special.entr(phi))
    return e_log_prior_mu + e_log_prior_c + np.sum(phi * log_lik) + entropy


def matched(reference, q):
    """q's means and sds relabelled to match `reference` (a (K, D) array)."""
    perm = gm.match_labels(reference, q.m)
    return np.asarray(q.m)[perm], np.asarray(q.s)[perm]


# ----------------------------------------------------------------------------------------------- CAVI


def test_cavi_elbo_never_decreases_at_any_update(data):
    update_phi, update_mu = jax.jit(gm.update_assignments), jax.jit(gm.update_means)
    q = gm.init_mean_field(data, jax.random.key(0))
    trace = []
    for _ in range(8):
        for update in (update_phi, update_mu):
            q = update(data, q)
            trace.append(elbo64(data, *q))
    # Each update is the exact maximiser in its block; computed in float32 it misses by a relative 1e-7
    # in the parameters, which costs the ELBO only at second order (~1e-12 relative): 1e-9 bounds it.
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[-1])), np.diff(trace)
    assert trace[-1] - trace[0] > 1.0  # it did climb

    # The module's own float32 trace: the same updates, each ELBO within float32 rounding of float64.
    result = gm.cavi(data, init=gm.init_mean_field(data, jax.random.key(0)), num_iterations=8)
    np.testing.assert_allclose(np.asarray(result.elbo).ravel(), trace, rtol=1e-5)
    # Rounding: float32 sums of ~N K terms of size |ELBO| carry errors of a few 1e-7 |ELBO|.
    assert np.all(np.diff(np.asarray(result.elbo).ravel()) >= -1e-5 * np.abs(trace[-1]))


def test_closed_form_elbo_matches_float64(data, cavi_result):
    q = cavi_result.q
    np.testing.assert_allclose(float(gm.elbo(data, q)), elbo64(data, *q), rtol=1e-5)
    per_coordinate = q._replace(s=jnp.broadcast_to(q.s[:, None], q.m.shape) * jnp.array([0.5, 2.0]))
    np.testing.assert_allclose(float(gm.elbo(data, per_coordinate)), elbo64(data, *per_coordinate), rtol=1e-5)


def test_cavi_fixed_point_is_one(data, cavi_result):
    q = cavi_result.q
    again = gm.update_means(data, gm.update_assignments(data, q))
    for name, before, after in zip(q._fields, q, again):
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6, err_msg=name)
    # The mu block in closed form from the fixed point's phi, in float64.
    phi, x = np.asarray(q.phi, np.float64), np.asarray(data.x, np.float64)
    precision = 1 / data.prior_scale**2 + phi.sum(0) / data.noise_scale**2
    np.testing.assert_allclose(q.s, 1 / np.sqrt(precision), rtol=1e-5)
    np.testing.assert_allclose(
        q.m, (phi.T @ x) / data.noise_scale**2 / precision[:, None], rtol=1e-5, atol=1e-5
    )


def test_cavi_posterior_covers_the_true_means(data, cavi_result):
    m, s = matched(data.means, cavi_result.q)
    # q(mu_k) is the (near-exact, for separated clusters) posterior: the truth lies within 4 of its sds.
    assert np.all(np.abs(m - np.asarray(data.means)) < 4 * s[:, None]), (m, data.means, s)
    # Every point's most probable cluster is its true one (in the fit's labels, mapped back).
    perm = gm.match_labels(data.means, cavi_result.q.m)  # true label j <-> fitted label perm[j]
    labels = np.argsort(perm)[np.argmax(np.asarray(cavi_result.q.phi), axis=1)]
    np.testing.assert_array_equal(labels, data.assignments)


# ------------------------------------------------------------------------------------------------- EM


def log_likelihood64(data, gmm):
    x = np.asarray(data.x, np.float64)
    weights, means, covs = (np.asarray(a, np.float64) for a in gmm)
    joint = np.stack(
        [
            np.log(w) + stats.multivariate_normal(mu, cov).logpdf(x)
            for w, mu, cov in zip(weights, means, covs)
        ],
        -1,
    )
    return special.logsumexp(joint, axis=-1).sum()


def test_em_log_likelihood_never_decreases(data):
    gmm = gm.init_gmm(data, jax.random.key(0))
    trace = [log_likelihood64(data, gmm)]
    module_trace = []
    for _ in range(25):
        result = gm.em(data, init=gmm, num_iterations=1)  # one compiled iteration, reused
        module_trace.append(result.log_likelihood)
        gmm = result.gmm
        trace.append(log_likelihood64(data, gmm))
    # As for CAVI: float32 M-steps are maximisers up to second-order losses far below 1e-9 relative.
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[-1])), np.diff(trace)
    assert trace[-1] - trace[0] > 1.0
    # The module's log-likelihoods (before and after each iteration) agree with float64.
    np.testing.assert_allclose(np.asarray(module_trace), np.stack([trace[:-1], trace[1:]], -1), rtol=1e-5)
    np.testing.assert_allclose(float(gm.log_likelihood(data, gmm)), trace[-1], rtol=1e-5)


def test_em_fixed_point_is_the_weighted_sample_moments(data):
    gmm = gm.em(data, key=jax.random.key(0), num_iterations=100).gmm
    responsibilities, _ = gm.e_step(data, gmm)
    r, x = np.asarray(responsibilities, np.float64), np.asarray(data.x, np.float64)
    counts = r.sum(0)
    means = r.T @ x / counts[:, None]
    np.testing.assert_allclose(gmm.weights, counts / len(x), rtol=1e-4)
    np.testing.assert_allclose(gmm.means, means, rtol=1e-4, atol=1e-4)
    for k in range(data.num_clusters):
        centred = x - means[k]
        np.testing.assert_allclose(
            gmm.covariances[k], (r[:, k, None] * centred).T @ centred / counts[k], atol=1e-4
        )


# ----------------------------------------------------------------------------------------- black box


@pytest.fixture(scope="module")
def black_box(data):
    """`name -> (log_joint, family, FitResult)`, each fit run once: the full mean field with a
    leave-one-out baseline ("loo") or per-factor Rao-Blackwellised control variates ("rao_blackwell")
    for the assignments, or q(mu) alone on the collapsed log-joint ("collapsed")."""
    models = {
        "full": (gm.log_joint_fn(data), gm.family(data)),
        "collapsed": (gm.collapsed_log_joint_fn(data), gm.collapsed_family(data)),
    }
    # Cosine decay to 1%: the logits travel far early on, then the Monte Carlo noise settles.
    optimizer = optax.adam(optax.cosine_decay_schedule(0.2, NUM_FIT_STEPS, alpha=0.01))
    fits = {}

    def get(name):
        if name not in fits:
            log_joint, family = models["collapsed" if name == "collapsed" else "full"]
            result = bbvi.fit(
                log_joint,
                family,
                key=jax.random.key(1),
                num_steps=NUM_FIT_STEPS,
                optimizer=optimizer,
                estimator="auto",  # pathwise for mu, score function for c
                control_variate="loo" if name == "collapsed" else name,
                init_params=gm.init_bbvi_params(data, jax.random.key(0), collapsed=name == "collapsed"),
                progress_bar=False,
            )
            fits[name] = log_joint, family, result
        return fits[name]

    return get


@pytest.mark.parametrize("name", ["loo", "rao_blackwell", "collapsed"])
def test_black_box_reaches_cavi_elbo(data, cavi_result, black_box, name):
    _, _, result = black_box(name)
    q = gm.from_bbvi_params(data, result.params)
    fitted, best = float(gm.elbo(data, q)), float(cavi_result.elbo[-1, 1])
    # Tolerance: the Monte Carlo sd of one step's ELBO estimate at the end of the fit (the spread of
    # the trace over its last 10%, where the parameters barely move): the resolution at which the fit
    # sees its own objective. CAVI's optimum is the global one, so the fit cannot beat it beyond
    # float32 rounding.
    per_step_sd = float(np.std(np.asarray(result.elbo[-NUM_FIT_STEPS // 10 :])))
    assert -1e-5 * abs(best) < best - fitted < per_step_sd, (best, fitted, per_step_sd)
    # The means agree to well within CAVI's posterior sd: the two q(mu) nearly coincide.
    m, _ = matched(cavi_result.q.m, q)
    assert np.all(np.abs(m - np.asarray(cavi_result.q.m)) < np.asarray(cavi_result.q.s)[:, None])


@pytest.mark.parametrize("name", ["loo", "collapsed"])
def test_closed_form_elbo_matches_the_log_joint(data, black_box, name):
    """The closed-form ELBO of a fitted q equals a Monte Carlo average of log p(x, z) - log q(z)."""
    log_joint, family, result = black_box(name)
    num_draws = 4000

    @jax.jit
    def log_weights(params, key):
        draws = bbvi.sample(family, params, key, (num_draws,))
        return jax.vmap(lambda z: log_joint(z) - bbvi.log_prob(family, params, z))(draws)

    weights = np.asarray(log_weights(result.params, jax.random.key(2)), np.float64)
    estimate, standard_error = weights.mean(), weights.std() / np.sqrt(num_draws)
    closed_form = elbo64(data, *gm.from_bbvi_params(data, result.params))
    if name == "loo":  # the same q: equal up to Monte Carlo error (4 standard errors)
        assert abs(estimate - closed_form) < 4 * standard_error, (estimate, closed_form, standard_error)
    else:  # the collapsed bound exceeds the mean field's with the best phi for that q(mu)
        assert estimate > closed_form - 4 * standard_error, (estimate, closed_form, standard_error)


# ------------------------------------------------------------------------------------------------ SVI


def test_svi_step_with_all_data_and_unit_step_is_a_cavi_sweep(data):
    q = gm.init_mean_field(data, jax.random.key(3))
    n = data.x.shape[0]
    # tau = 0 makes rho_1 = 1; the minibatch is every point (in some order), scaled by N/B = 1.
    result = gm.svi(data, jax.random.key(4), num_steps=1, batch_size=n, tau=0.0, init=q)
    swept = gm.update_means(data, gm.update_assignments(data, q))
    np.testing.assert_allclose(result.m[0], swept.m, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.s[0], swept.s, rtol=1e-5)


def svi_noise(data, q, batch_size, rhos):
    """The sds of SVI's last iterate about CAVI's fixed point `q`, from its minibatch noise (float64).

    Near the fixed point phi barely moves (separated clusters), so the step is linear in the natural
    parameters (P, h). `h - m* P` and `P` then follow `u <- (1 - rho) u + rho u_hat`, where u_hat's
    minibatch sums have the finite-population variance N (N - B) / B * S^2 (S^2 the variance of the
    per-point terms), and Var(u_T) = sum_t (rho_t prod_{s > t} (1 - rho_s))^2 Var(u_hat).
    Returns (sd of m (K, D), sd of P (K,)).
    """
    x, phi = np.asarray(data.x, np.float64), np.asarray(q.phi, np.float64)
    m = np.asarray(q.m, np.float64)
    n, noise_var = x.shape[0], data.noise_scale**2
    shift_terms = phi[:, :, None] * (x[:, None, :] - m[None]) / noise_var  # (N, K, D): h - m P, per point
    precision_terms = phi / noise_var
    finite_population = n * (n - batch_size) / batch_size
    rhos = np.asarray(rhos, np.float64)
    later = np.append(np.cumprod((1 - rhos)[::-1])[::-1][1:], 1.0)  # prod_{s > t} (1 - rho_s)
    gain = np.sum((rhos * later) ** 2)
    var_shift = gain * finite_population * shift_terms.var(0, ddof=1)
    var_precision = gain * finite_population * precision_terms.var(0, ddof=1)
    precision = 1 / np.asarray(q.s, np.float64) ** 2
    return np.sqrt(var_shift) / precision[:, None], np.sqrt(var_precision)


def test_svi_reaches_the_cavi_fixed_point(data, cavi_result):
    batch_size, num_steps, kappa = 10, 2000, 0.6
    result = gm.svi(data, jax.random.key(5), num_steps=num_steps, batch_size=batch_size, kappa=kappa)
    q_star = cavi_result.q
    sd_m, sd_precision = svi_noise(data, q_star, batch_size, gm.step_sizes(num_steps, kappa=kappa))
    m, _ = matched(q_star.m, result.q)
    assert np.all(np.abs(m - np.asarray(q_star.m)) < 4 * sd_m), (m, q_star.m, sd_m)

    # The ELBO (with phi at its optimum) is flat at the fixed point: deviations of 4 sds in m and P
    # cost at most sum P (4 sd_m)^2 / 2 + sum (D / 4) (4 sd_P / P)^2 (the ELBO's curvature there).
    precision = 1 / np.asarray(q_star.s, np.float64) ** 2
    d = data.x.shape[1]
    tolerance = np.sum(precision[:, None] * (4 * sd_m) ** 2 / 2) + np.sum(
        d / 4 * (4 * sd_precision / precision) ** 2
    )
    gap = elbo64(data, *q_star) - elbo64(data, *result.q)
    assert -1e-9 * abs(elbo64(data, *q_star)) < gap < tolerance, (gap, tolerance)
    assert 4 * sd_m.max() < np.asarray(q_star.s).min()  # the test resolves the means below their posterior sd


# ---------------------------------------------------------------------------------------------- data


def test_old_faithful_is_standardised_and_cavi_finds_the_two_eruption_types():
    data = gm.old_faithful(path=data_file_or_skip(gm.model.OLD_FAITHFUL_FILE).parent)
    assert data.x.shape == (272, 2)
    np.testing.assert_allclose(data.x.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(data.x.std(0), 1, rtol=1e-5)
    q = gm.cavi(data, key=jax.random.key(0)).q
    short, long = np.asarray(q.m)[np.argsort(np.asarray(q.m)[:, 0])]
    assert short[0] < 0 < long[0] and short[1] < 0 < long[1]  # short eruptions, short waits


def test_bad_arguments_raise_clear_errors(data):
    with pytest.raises(ValueError, match="num_clusters"):
        gm.family(gm.Data(data.x, 1))
    negative = gm.Data(data.x, 3, noise_scale=-1.0)
    with pytest.raises(ValueError, match="positive"):
        gm.cavi(negative, key=jax.random.key(0))
    with pytest.raises(ValueError, match="positive"):  # checked before the compiled references trace
        gm.elbo(negative, gm.init_mean_field(data, jax.random.key(0)))
    with pytest.raises(ValueError, match="batch_size"):
        gm.svi(data, jax.random.key(0), num_steps=10, batch_size=2)
    with pytest.raises(ValueError, match="kappa"):
        gm.step_sizes(10, kappa=0.4)
    with pytest.raises(ValueError, match="key"):
        gm.em(data)
    with pytest.raises(ValueError, match="collapsed_family"):
        gm.from_bbvi_params(data, {"logits": jnp.zeros(3)})
