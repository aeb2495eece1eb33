"""The Gaussian energy check of a Laplace approximation (bayesinv.infer.laplace)."""

from __future__ import annotations

import math

import pytest
import torch

from bayesinv.infer.laplace import (
    laplace_energy_check,
    latent_gauss_newton_hessian,
    latent_laplace_covariance,
)
from bayesinv.priors.base import EnergyPrior
from bayesinv.problem import InverseProblem
from bayesinv.testing import linear_gaussian_problem


@pytest.fixture(scope="module")
def case():
    c = linear_gaussian_problem((1, 3, 4), sigma=0.2, length_scale=0.3, seed=0)
    problem = c.problem
    z0 = torch.zeros(problem.prior.latent_shape, dtype=torch.float64)
    hess = latent_gauss_newton_hessian(problem, z0)

    def fwd(v):
        return problem.operator(problem.prior.generate(v[None])).reshape(-1)

    jac = torch.autograd.functional.jacobian(fwd, z0).reshape(-1, z0.numel())
    resid = (c.y.reshape(-1) - fwd(z0)).double()
    z_map = torch.linalg.solve(hess, jac.T.double() @ resid / problem.noise.sigma**2)  # exact (linear)
    return c, z_map.reshape(z0.shape)


def test_exact_gaussian_posterior_gives_ratio_one(case):
    c, z_map = case
    res = laplace_energy_check(c.problem, c.y, z_map, n=400, seed=1)
    d = res["dim"]
    assert d == 12 and res["expected_mean"] == d / 2
    tol = 4 * math.sqrt(2.0 / (res["n"] * d))  # ratio ~ chi2_{nD} / (nD)
    assert abs(res["ratio"] - 1.0) < tol, res
    assert abs(res["delta_u_std"] / res["expected_std"] - 1.0) < 0.15, res
    assert res["fraction_below_map"] == 0.0
    assert res["ratio_se"] < tol


@pytest.mark.parametrize("scale", [4.0, 0.25])
def test_a_mis_scaled_gaussian_is_flagged_by_its_scale(case, scale):
    # U is quadratic with Hessian H: draws of N(z_map, s H^{-1}) raise it by s ||xi||^2 / 2
    c, z_map = case
    cov = scale * latent_laplace_covariance(c.problem, z_map)
    res = laplace_energy_check(c.problem, c.y, z_map, cov, n=400, seed=2)
    assert abs(res["ratio"] / scale - 1.0) < 4 * math.sqrt(2.0 / (400 * 12)), res


def test_energy_check_bad_inputs(case):
    c, z_map = case
    with pytest.raises(ValueError, match="n:"):
        laplace_energy_check(c.problem, c.y, z_map, n=1)
    with pytest.raises(ValueError, match="covariance"):
        laplace_energy_check(c.problem, c.y, z_map, torch.eye(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="covariance"):
        laplace_energy_check(c.problem, c.y, z_map, -torch.eye(12, dtype=torch.float64))
    with pytest.raises(ValueError, match="z:"):
        laplace_energy_check(c.problem, c.y, torch.zeros(5))
    with pytest.raises(ValueError, match="z:"):
        laplace_energy_check(c.problem, c.y, torch.full(z_map.shape, math.nan))
    with pytest.raises(TypeError, match="problem"):
        laplace_energy_check("not a problem", c.y, z_map)

    class Quadratic(EnergyPrior):
        def __init__(self):
            super().__init__(c.problem.image_shape)

        def energy(self, x):
            return 0.5 * x.pow(2).flatten(1).sum(1)

    energy_problem = InverseProblem(c.problem.operator, Quadratic(), c.problem.noise.sigma)
    with pytest.raises(ValueError, match="latent prior"):
        laplace_energy_check(energy_problem, c.y, z_map, torch.eye(12, dtype=torch.float64))
