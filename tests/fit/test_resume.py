"""Checkpoint and resume: a fit paused and resumed, in memory or through a file in a fresh
process, equals the fit made in one go; files are written atomically and checked when read."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bbvi
from tests.fit.test_program import FAMILY, CountingLogJoint

# The model and family of the program tests: a Gaussian, a positive and a Bernoulli leaf.
log_joint = CountingLogJoint()


def fit(**options):
    options.setdefault("progress_bar", False)
    options.setdefault("num_steps", 500)
    return bbvi.fit(log_joint, FAMILY, **options)


def assert_same(a, b):
    # Leaf by leaf (a loaded state's optimiser part is unstructured until a fit resumes it).
    xs, ys = jax.tree.leaves((a.params, a.elbo, a.state)), jax.tree.leaves((b.params, b.elbo, b.state))
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# Every piece of state a run carries: the default (annealed) optimiser's, a moving-average
# baseline's, the convergence rule's and the Polyak average's.
CASES = {
    "default": {},
    "moving_average": dict(control_variate=bbvi.MovingAverage(0.9), optimizer=optax.adam(0.02)),
    "average_and_rule": dict(average=0.5, convergence=bbvi.Convergence("trend", every=20, stop=False)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_paused_and_resumed_fit_equals_one_run(case):
    options = CASES[case]
    whole = fit(key=jax.random.key(3), **options)
    first = fit(key=jax.random.key(3), pause_at=173, **options)
    assert int(first.num_steps) == 173 and first.elbo.shape == (173,)
    second = fit(resume=first, **options)
    assert_same(second, whole)


def test_resume_under_jit_and_a_resume_of_a_finished_fit():
    whole = fit(key=jax.random.key(3))
    first = jax.jit(lambda k: fit(key=k, pause_at=173))(jax.random.key(3))
    second = jax.jit(lambda r: fit(resume=r))(first)
    # Inside an enclosing jit XLA may fuse differently: equal to float32 rounding.
    np.testing.assert_allclose(second.params["w"]["loc"], whole.params["w"]["loc"], rtol=1e-5)
    np.testing.assert_allclose(second.elbo, whole.elbo, rtol=1e-5, atol=1e-5)
    assert int(second.num_steps) == 500
    again = fit(resume=whole)  # nothing left to do: the same result
    assert_same(again, whole)


def test_resume_refuses_what_does_not_continue_the_run():
    first = fit(key=jax.random.key(3), pause_at=100)
    with pytest.raises(ValueError, match="continues the result's own key stream"):
        fit(resume=first, key=jax.random.key(3))
    with pytest.raises(ValueError, match="drop init_params"):
        fit(resume=first, init_params=first.params)
    with pytest.raises(ValueError, match="fitted to family"):
        bbvi.fit(log_joint, {**FAMILY, "w": bbvi.MeanFieldGaussian((4,))}, num_steps=500, resume=first)
    with pytest.raises(ValueError, match=r"optimiser state does not match.*another optimizer"):
        fit(resume=first, optimizer=optax.sgd(0.1))
    with pytest.raises(ValueError, match="already taken 100 steps"):
        bbvi.fit(log_joint, FAMILY, num_steps=50, resume=first, progress_bar=False)
    with pytest.raises(ValueError, match="pause_at"):
        fit(key=jax.random.key(3), pause_at=501)


def test_polyak_average_is_the_mean_of_the_iterates_over_the_last_part():
    optimizer = optax.adam(0.05)
    iterates = []
    state = fit(key=jax.random.key(3), optimizer=optimizer, num_steps=40, pause_at=30)
    for _ in range(10):  # the iterates after steps 31 .. 40, one resume at a time
        state = bbvi.fit(
            log_joint,
            FAMILY,
            num_steps=40,
            optimizer=optimizer,
            resume=state,
            pause_at=int(state.num_steps) + 1,
            progress_bar=False,
        )
        iterates.append(state.params)
    averaged = fit(key=jax.random.key(3), optimizer=optimizer, num_steps=40, average=0.25)
    expected = jax.tree.map(lambda *xs: np.mean(np.stack(xs), 0), *iterates)
    for x, y in zip(jax.tree.leaves(averaged.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(x), y, rtol=1e-5, atol=1e-6)
    # The last iterate stays in the state, to resume from.
    np.testing.assert_array_equal(
        np.asarray(averaged.state.params["w"]["loc"]), np.asarray(iterates[-1]["w"]["loc"])
    )
    with pytest.raises(ValueError, match="average must be a fraction"):
        fit(key=jax.random.key(3), average=1.5)


def test_save_and_load_in_a_fresh_process_resumes_exactly(tmp_path):
    path = tmp_path / "run.npz"
    whole = fit(key=jax.random.key(3))
    bbvi.save(path, fit(key=jax.random.key(3), pause_at=173))
    script = textwrap.dedent(
        f"""
        import jax, numpy as np, bbvi
        from tests.fit.test_resume import FAMILY, log_joint
        loaded = bbvi.load({str(path)!r}, FAMILY)
        result = bbvi.fit(log_joint, FAMILY, num_steps=500, resume=loaded, progress_bar=False)
        bbvi.save({str(tmp_path / "done.npz")!r}, result)
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", script], cwd=root, check=True, timeout=300)
    done = bbvi.load(tmp_path / "done.npz", FAMILY)
    np.testing.assert_array_equal(np.asarray(done.elbo), np.asarray(whole.elbo))
    for x, y in zip(jax.tree.leaves(done.params), jax.tree.leaves(whole.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # Loaded, a result is one again: resumed here too, it continues exactly.
    assert_same(fit(resume=bbvi.load(path, FAMILY)), whole)


def test_an_interrupted_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    good = fit(key=jax.random.key(3), pause_at=100)
    bbvi.save(path, good)
    before = path.read_bytes()

    def dies_half_way(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise OSError("No space left on device")  # the write dies half-way

    monkeypatch.setattr(np, "savez", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        bbvi.save(path, fit(key=jax.random.key(4), pause_at=100))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["run.npz"]  # and no temporary file is left behind
    monkeypatch.undo()
    assert_same(bbvi.load(path, FAMILY), good)


def test_load_checks_the_file_against_the_family(tmp_path):
    path = tmp_path / "run.npz"
    bbvi.save(path, fit(key=jax.random.key(3), pause_at=10))
    with pytest.raises(ValueError, match="holds a fit of family"):
        bbvi.load(path, {**FAMILY, "w": bbvi.MeanFieldGaussian((4,))})
    (tmp_path / "junk.npz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="not a result saved by bbvi.save"):
        bbvi.load(tmp_path / "junk.npz", FAMILY)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a result saved by bbvi.save"):
        bbvi.load(tmp_path / "other.npz", FAMILY)
    with pytest.raises(TypeError, match="FitResult"):
        bbvi.save(path, {"params": 1})
