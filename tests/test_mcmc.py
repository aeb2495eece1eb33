"""MCMC (NUTS/HMC on latents, MALA/ULA on images) against closed-form Gaussian posteriors.

Exactness tolerances come from the effective sample size (ArviZ bulk ESS per dimension):
``|mean - m| < 4 sigma_post / sqrt(ESS)`` and covariance entries within 5 Monte-Carlo standard
errors ``sqrt((S_ii S_jj + S_ij^2) / ESS_min)`` (Gaussian-moment formula).
"""

from __future__ import annotations

import json
import math

import arviz as az
import numpy as np
import pyro
import pytest
import torch

from bayesinv.infer.kernels import MALA, ULA
from bayesinv.infer.mcmc import sample_posterior
from bayesinv.priors.base import EnergyPrior
from bayesinv.priors.gaussian import GaussianPrior
from bayesinv.problem import InverseProblem
from bayesinv.testing import linear_gaussian_problem


@pytest.fixture(scope="module")
def case():
    # 12 pixels, posterior condition number ~13 in image space (white-ish prior, l = 0.3).
    return linear_gaussian_problem((1, 3, 4), sigma=0.2, length_scale=0.3, seed=0)


class QuadraticEnergy(EnergyPrior):
    r"""An energy prior :math:`R(x) = -\log \mathcal N(x; \mu, \Sigma)` (unnormalised Gaussian)."""

    def __init__(self, gaussian: GaussianPrior) -> None:
        super().__init__(gaussian.image_shape, weight=1.0)
        self.gaussian = gaussian

    def energy(self, x):
        return -self.gaussian.log_prob(x)


def _ess(draws: torch.Tensor) -> torch.Tensor:
    """Bulk ESS (ArviZ) per trailing dimension of draws (chain, draw, K)."""
    ess = az.ess(az.convert_to_dataset({"v": draws.numpy()}))["v"].values
    return torch.as_tensor(ess, dtype=torch.float64)


def _check_moments(post, mean, cov, label):
    """Mean within 4 MC errors per pixel, covariance entries within 5 MC errors.

    The MC error of the mean of pixel i is sigma_i / sqrt(ESS_i); that of the covariance entry
    C_ij = E[(x_i - m_i)(x_j - m_j)] is sd(p_ij) / sqrt(ESS(p_ij)) of the products p_ij, with
    ESS computed for each product series (the ESS of a mean and of a second moment differ).
    """
    s = post.samples.flatten(2).double()
    d = s.shape[-1]
    ess = _ess(s)
    std = cov.diagonal().sqrt()
    mean_err = (s.mean((0, 1)) - mean) / std
    assert bool((mean_err.abs() < 4.0 / ess.sqrt()).all()), (label, mean_err * ess.sqrt())
    c = s - mean
    iu = torch.triu_indices(d, d)
    prod = c[..., iu[0]] * c[..., iu[1]]  # (chain, draw, d(d+1)/2)
    se = prod.flatten(0, 1).std(0) / _ess(prod).sqrt()
    err = (prod.mean((0, 1)) - cov[iu[0], iu[1]]).abs() / se
    assert bool((err < 5.0).all()), (label, err.max())
    return mean_err, ess, err.max()


# -- exactness ----------------------------------------------------------------------------------
def test_nuts_on_latent_matches_closed_form(case):
    post = sample_posterior(case.problem, case.y, kernel="nuts", num_chains=1, num_samples=400,
                            warmup_steps=200, seed=0)
    assert post.kind == "markov" and post.method == "nuts"
    assert post.latent_samples.shape == (1, 400, 1, 3, 4)
    # images are G(z) of the stored latents
    torch.testing.assert_close(post.samples[0, :5], case.problem.prior.generate(post.latent_samples[0, :5]))
    _check_moments(post, case.mean, case.covariance, "nuts")
    assert post.sample_stats["diverging"].sum() == 0
    assert float(post.sample_stats["accept_prob"].mean()) > 0.6
    assert post.sample_stats["num_steps"].min() >= 1
    assert set(post.sample_stats) >= {"accept_prob", "step_size", "diverging", "num_steps", "tree_depth", "lp"}


def test_nuts_with_laplace_mass_matches_closed_form(case):
    # linear-Gaussian: the Gauss-Newton Laplace covariance is the exact latent posterior
    # covariance, so the preconditioned posterior is N(0, I) and NUTS takes ~unit steps
    from bayesinv.infer.laplace import latent_gauss_newton_hessian, latent_laplace_covariance

    z = torch.zeros(case.problem.prior.latent_shape)
    hess = latent_gauss_newton_hessian(case.problem, z)
    # brute-force check of H on the linear-Gaussian case: J = A L (L the prior's factor)
    def fwd(v):
        return case.problem.operator(case.problem.prior.generate(v[None])).reshape(-1)
    jac = torch.autograd.functional.jacobian(fwd, z).reshape(-1, z.numel()).double()
    sigma = case.problem.noise.sigma
    torch.testing.assert_close(hess, jac.T @ jac / sigma**2 + torch.eye(z.numel(), dtype=torch.float64))
    cov = latent_laplace_covariance(case.problem, z)
    torch.testing.assert_close(cov @ hess, torch.eye(z.numel(), dtype=torch.float64), atol=1e-8, rtol=0)
    post = sample_posterior(case.problem, case.y, kernel="nuts", num_chains=1, num_samples=300,
                            warmup_steps=100, seed=3, inverse_mass_matrix="laplace")
    _check_moments(post, case.mean, case.covariance, "nuts-laplace")
    assert post.settings["inverse_mass_matrix"] == "laplace" and post.settings["dense_mass"]
    plain = sample_posterior(case.problem, case.y, kernel="nuts", num_chains=1, num_samples=50,
                             warmup_steps=100, seed=3, adapt_mass_matrix=False)
    # measured: step 0.73 with the Laplace metric vs 0.30 with the identity, 6.4 vs 13.2 leapfrogs
    assert post.settings["final_step_size"][0] > 2 * plain.settings["final_step_size"][0]
    assert float(post.sample_stats["num_steps"].float().mean()) < float(plain.sample_stats["num_steps"].float().mean())


def test_mala_on_image_matches_closed_form_and_adapts(case):
    post = sample_posterior(case.problem, case.y, kernel="mala", num_chains=1, num_samples=3000,
                            warmup_steps=400, seed=1)
    _check_moments(post, case.mean, case.covariance, "mala")
    acc = float(post.sample_stats["accept_prob"].mean())
    assert 0.4 <= acc <= 0.75, acc
    step = post.sample_stats["step_size"]
    assert bool((step == step[0, 0]).all()), "step size must be frozen after warm-up"


def test_mala_with_energy_prior_matches_closed_form(case):
    """A quadratic EnergyPrior equal to the Gaussian prior gives the same exact posterior."""
    problem = InverseProblem(case.problem.operator, QuadraticEnergy(case.problem.prior),
                             case.problem.noise.sigma)
    post = sample_posterior(problem, case.y, kernel="mala", num_chains=1, num_samples=2500,
                            warmup_steps=300, seed=2)
    assert post.latent_samples is None
    _check_moments(post, case.mean, case.covariance, "mala-energy")


@pytest.mark.parametrize("kernel", ["ula", "mala"])
def test_langevin_chain_evaluates_the_gradient_once_per_step(case, kernel):
    """One potential+gradient per Langevin step, plus one at x0 (setup's cached value is reused)."""
    calls = [0]
    problem = InverseProblem(case.problem.operator, case.problem.prior, case.problem.noise.sigma)
    original = problem.potential

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    problem.potential = counted
    n = 7
    sample_posterior(problem, case.y, kernel=kernel, step_size=1e-3, adapt_step_size=False,
                     num_chains=1, num_samples=n, warmup_steps=0, seed=0, init="zeros")
    assert calls[0] == 1 + n


def test_ula_matches_its_own_biased_stationary_law(case):
    r"""ULA on N(m, P^{-1}) is stationary at N(m, (P - delta P^2 / 2)^{-1}) (AR(1) recursion)."""
    precision = torch.linalg.inv(case.covariance)
    lmax = float(torch.linalg.eigvalsh(precision).max())
    delta = 1.5 / lmax  # stable for delta < 2 / lmax; the stiffest mode's variance is x4
    post = sample_posterior(case.problem, case.y, kernel="ula", step_size=delta, num_chains=1,
                            num_samples=3000, warmup_steps=200, seed=3)
    ula_cov = torch.linalg.inv(precision - 0.5 * delta * precision @ precision)
    _check_moments(post, case.mean, ula_cov, "ula")
    # In the eigenbasis of P the law is explicit: var_k = 1 / (l_k - delta l_k^2 / 2).
    lam, vec = torch.linalg.eigh(precision)
    proj = (post.samples.flatten(2).double() - case.mean) @ vec  # (chain, draw, D)
    var = proj.flatten(0, 1).var(0)
    se = var * (2.0 / _ess(proj**2)).sqrt()  # MC error of a variance, from the ESS of squares
    ula_var = 1.0 / (lam - 0.5 * delta * lam**2)
    assert bool(((var - ula_var).abs() < 5 * se).all()), (var / ula_var)
    # the O(delta) bias is real and resolved: the stiffest mode is far from the exact 1 / l_k
    assert float((var[-1] - 1.0 / lam[-1]) / se[-1]) > 10


# -- checkpoint / resume -------------------------------------------------------------------------
class _Kill(RuntimeError):
    pass


def _killer(stage_prefix, at):
    def hook(kernel, params, stage, i):
        if stage.startswith(stage_prefix) and i == at:
            raise _Kill(f"killed at {stage} {i}")
    return hook


@pytest.mark.parametrize("kernel,stage,at", [("mala", "Sample", 120), ("mala", "Warmup", 70),
                                              ("nuts", "Sample", 25),
                                              pytest.param("nuts", "Warmup", 15, marks=pytest.mark.slow)])
def test_exact_resume_after_interruption(case, tmp_path, kernel, stage, at):
    n, w = (200, 100) if kernel == "mala" else (40, 30)
    kw = dict(kernel=kernel, num_chains=2, num_samples=n, warmup_steps=w, seed=5, init="zeros")
    ref = sample_posterior(case.problem, case.y, **kw)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Kill):
        # chain 0 completes, chain 1 is killed
        sample_posterior(case.problem, case.y, checkpoint=ckpt, checkpoint_every=10,
                         hook_fn=lambda k, p, s, i: s.endswith("[1]") and _killer(stage, at)(k, p, s, i),
                         **kw)
    files = sorted(p.name for p in ckpt.iterdir())
    assert "chain_0.safetensors" in files
    # NUTS/HMC checkpoint from the end of warm-up on (a warm-up kill redoes the warm-up)
    assert ("chain_1.safetensors" in files) == (kernel == "mala" or stage == "Sample")
    assert not any(f.endswith(".tmp") for f in files)
    resumed = sample_posterior(case.problem, case.y, checkpoint=ckpt, checkpoint_every=10, **kw)
    torch.testing.assert_close(resumed.samples, ref.samples, rtol=0, atol=0)
    for key in ref.sample_stats:
        torch.testing.assert_close(resumed.sample_stats[key], ref.sample_stats[key], rtol=0, atol=0)


def test_checkpoint_with_other_settings_is_refused(case, tmp_path):
    kw = dict(kernel="mala", num_chains=1, num_samples=20, warmup_steps=10, init="zeros")
    sample_posterior(case.problem, case.y, checkpoint=tmp_path, seed=0, **kw)
    with pytest.raises(ValueError, match="checkpoint"):
        sample_posterior(case.problem, case.y, checkpoint=tmp_path, seed=1, **kw)


# -- chains, thinning, stats, storage --------------------------------------------------------------
def test_thinning_keeps_every_thin_th_iteration(case):
    kw = dict(kernel="mala", num_chains=1, warmup_steps=50, seed=4, init="zeros")
    full = sample_posterior(case.problem, case.y, num_samples=30, thin=1, **kw)
    thin = sample_posterior(case.problem, case.y, num_samples=10, thin=3, **kw)
    torch.testing.assert_close(thin.samples, full.samples[:, 2::3], rtol=0, atol=0)
    torch.testing.assert_close(thin.sample_stats["accept_prob"], full.sample_stats["accept_prob"][:, 2::3])


def test_sample_stats_shapes_and_timings(case):
    post = sample_posterior(case.problem, case.y, kernel="hmc", num_chains=2, num_samples=15,
                            warmup_steps=15, num_steps=5, seed=0)
    assert post.samples.shape == (2, 15, 1, 3, 4)
    for key in ("accept_prob", "step_size", "diverging", "num_steps", "lp"):
        assert post.sample_stats[key].shape == (2, 15), key
    assert post.sample_stats["diverging"].dtype == torch.bool
    # Pyro's HMC keeps trajectory_length = initial step (1.0) x num_steps fixed while adapting
    steps = (5.0 / post.sample_stats["step_size"]).floor().clamp(min=1)
    assert bool((post.sample_stats["num_steps"] == steps).all())
    assert post.timings["chain_0_s"] > 0 and post.timings["chain_1_s"] > 0
    assert post.settings["kernel"] == "hmc" and post.seed == 0
    assert post.problem == case.problem.describe()


def test_reproducible_with_seed_and_chains_differ(case):
    kw = dict(kernel="mala", num_chains=2, num_samples=40, warmup_steps=20, init="zeros")
    a = sample_posterior(case.problem, case.y, seed=7, **kw)
    b = sample_posterior(case.problem, case.y, seed=7, **kw)
    c = sample_posterior(case.problem, case.y, seed=8, **kw)
    torch.testing.assert_close(a.samples, b.samples, rtol=0, atol=0)
    assert not torch.equal(a.samples, c.samples)
    assert not torch.equal(a.samples[0], a.samples[1])


def test_parallel_chains_equal_sequential(case):
    kw = dict(kernel="mala", num_chains=2, num_samples=40, warmup_steps=20, init="zeros", seed=3)
    seq = sample_posterior(case.problem, case.y, chain_method="sequential", **kw)
    par = sample_posterior(case.problem, case.y, chain_method="parallel", **kw)
    torch.testing.assert_close(par.samples, seq.samples, rtol=0, atol=0)
    torch.testing.assert_close(par.sample_stats["accept_prob"], seq.sample_stats["accept_prob"])


@pytest.mark.parametrize("kernel,chains", [("nuts", 1), ("mala", 2)])
def test_store_streams_images_to_npy(case, tmp_path, kernel, chains):
    kw = dict(kernel=kernel, num_chains=chains, num_samples=25, warmup_steps=20, init="zeros", seed=0)
    mem = sample_posterior(case.problem, case.y, **kw)
    disk = sample_posterior(case.problem, case.y, store=tmp_path / "draws", chunk_size=7, **kw)
    index = json.loads((tmp_path / "draws" / "index.json").read_text())
    assert index["shape"] == [chains, 25, 1, 3, 4] and index["file"] == "samples.npy"
    assert not (tmp_path / "draws" / "samples.npy.tmp").exists()
    arr = np.load(tmp_path / "draws" / "samples.npy")
    np.testing.assert_array_equal(arr, mem.samples.numpy())
    torch.testing.assert_close(disk.samples, mem.samples, rtol=0, atol=0)


def test_kernels_run_under_pyro_mcmc():
    precision = torch.linspace(1.0, 4.0, 6, dtype=torch.float64)

    def potential(p):
        return 0.5 * (precision * p["x"] ** 2).sum()

    pyro.set_rng_seed(0)
    mcmc = pyro.infer.MCMC(MALA(potential, 0.3), num_samples=300, warmup_steps=100,
                           initial_params={"x": torch.zeros(6, dtype=torch.float64)},
                           disable_progbar=True)
    mcmc.run()
    x = mcmc.get_samples()["x"]
    assert x.shape == (300, 6)
    acc = mcmc.diagnostics()["acceptance rate"]["chain 0"]
    assert 0.3 < acc < 0.9
    ula = ULA(potential, 0.05, preconditioner=1.0 / precision)
    ula.initial_params = {"x": torch.zeros(6, dtype=torch.float64)}
    ula.setup(0)
    p = {"x": torch.zeros(6, dtype=torch.float64)}
    for _ in range(5):
        p = ula.sample(p)
    assert ula.last_stats["step_size"] == 0.05 and math.isfinite(ula.last_stats["potential_energy"])


# -- guards and bad inputs ---------------------------------------------------------------------------
def test_nan_guard_names_the_step_size(case):
    with pytest.raises(FloatingPointError, match="step_size"):
        sample_posterior(case.problem, case.y, kernel="ula", step_size=10.0, num_chains=1,
                         num_samples=500, warmup_steps=0, init="zeros")


def test_bad_inputs_name_the_argument(case):
    p, y = case.problem, case.y
    with pytest.raises(ValueError, match="inverse_mass_matrix"):
        sample_posterior(case.problem, case.y, kernel="nuts", inverse_mass_matrix="diag")
    with pytest.raises(ValueError, match="inverse_mass_matrix"):
        sample_posterior(case.problem, case.y, kernel="mala", inverse_mass_matrix="laplace")
    with pytest.raises(ValueError, match="inverse_mass_matrix"):
        sample_posterior(case.problem, case.y, kernel="nuts", num_samples=2, warmup_steps=1,
                         init="zeros", inverse_mass_matrix=torch.eye(5))
    with pytest.raises(ValueError, match="inverse_mass_matrix"):
        sample_posterior(case.problem, case.y, kernel="nuts", num_samples=2, warmup_steps=1,
                         init="zeros", inverse_mass_matrix=-torch.eye(12))
    with pytest.raises(TypeError, match="inverse_mass_matrix"):
        sample_posterior(case.problem, case.y, kernel="nuts", inverse_mass_matrix=np.eye(12))
    quick = dict(num_samples=5, warmup_steps=5, init="zeros")
    with pytest.raises(ValueError, match="kernel"):
        sample_posterior(p, y, kernel="gibbs", **quick)
    with pytest.raises(ValueError, match="num_chains"):
        sample_posterior(p, y, kernel="mala", num_chains=0, **quick)
    with pytest.raises(ValueError, match="thin"):
        sample_posterior(p, y, kernel="mala", thin=0, **quick)
    with pytest.raises(ValueError, match="y"):
        sample_posterior(p, torch.zeros(3), kernel="mala", **quick)
    with pytest.raises(ValueError, match="step_size"):
        sample_posterior(p, y, kernel="ula", **quick)
    with pytest.raises(ValueError, match="chain_method"):
        sample_posterior(p, y, kernel="mala", chain_method="threads", **quick)
    with pytest.raises(ValueError, match="init"):
        sample_posterior(p, y, kernel="mala", num_samples=5, warmup_steps=5, init="random")
    with pytest.raises(ValueError, match="init"):
        sample_posterior(p, y, kernel="mala", num_samples=5, warmup_steps=5, init=torch.zeros(5))
    energy = InverseProblem(p.operator, QuadraticEnergy(p.prior), p.noise.sigma)
    with pytest.raises(ValueError, match="kernel.*LatentPrior.*QuadraticEnergy"):
        sample_posterior(energy, y, kernel="nuts", **quick)
    with pytest.raises(TypeError, match="problem"):
        sample_posterior(object(), y, kernel="mala", **quick)
