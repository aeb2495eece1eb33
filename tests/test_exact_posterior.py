"""Closed-form linear-Gaussian posterior: CG mean, dense moments, exact perturb-and-optimise draws."""

import pytest
import torch

from bayesinv.infer import (
    exact_gaussian_posterior,
    gaussian_posterior_mean,
    gaussian_posterior_moments,
)
from bayesinv.operators import adjointness_error, conjugate_gradient
from bayesinv.operators.matrix import MatrixOperator
from bayesinv.testing import linear_gaussian_problem


def test_cg_mean_matches_dense_solution():
    case = linear_gaussian_problem((1, 6, 6), m=12, sigma=0.05, seed=1)
    mean = gaussian_posterior_mean(case.problem, case.y, tol=1e-12).reshape(-1)
    assert torch.allclose(mean, case.mean, atol=1e-8)


def test_dense_moments_match_textbook_formula():
    case = linear_gaussian_problem((1, 3, 3), m=5, sigma=0.2, seed=4)
    a = case.problem.operator.matrix
    cov_prior = case.problem.prior.dense_covariance()
    gain = cov_prior @ a.T @ torch.linalg.inv(a @ cov_prior @ a.T + 0.04 * torch.eye(5, dtype=a.dtype))
    mean = case.problem.prior.mean.reshape(-1) + gain @ (case.y[0] - a @ case.problem.prior.mean.reshape(-1))
    cov = cov_prior - gain @ a @ cov_prior
    assert torch.allclose(case.mean, mean, atol=1e-10)
    assert torch.allclose(case.covariance, cov, atol=1e-10)


def test_exact_draws_have_the_posterior_moments():
    case = linear_gaussian_problem((1, 3, 3), m=4, sigma=0.1, seed=2)
    post = exact_gaussian_posterior(case.problem, case.y, num_samples=6000, seed=0, tol=1e-10,
                                    batch_size=2000)
    draws = post.samples[0].reshape(6000, -1)
    n = draws.shape[0]
    se = case.std / n**0.5
    assert bool(((draws.mean(0) - case.mean).abs() < 4.5 * se).all())
    emp = torch.cov(draws.T)
    # standard error of a covariance entry is ~ sqrt((s_ii s_jj + s_ij^2)/n)
    s = case.covariance
    se_cov = ((s.diagonal()[:, None] * s.diagonal()[None, :] + s**2) / n).sqrt()
    assert bool(((emp - s).abs() < 5 * se_cov).all())
    assert post.kind == "independent" and post.samples.shape == (1, 6000, 1, 3, 3)
    assert torch.allclose(post.point_estimate.reshape(-1), case.mean, atol=1e-5)


def test_exact_posterior_refuses_non_gaussian_problems():
    from bayesinv import InverseProblem
    from bayesinv.priors import EnergyPrior

    class Flat(EnergyPrior):
        def energy(self, x):
            return x.new_zeros(x.shape[0])

    case = linear_gaussian_problem((1, 2, 2), m=2)
    problem = InverseProblem(case.problem.operator, Flat((1, 2, 2)), 0.1)
    with pytest.raises(ValueError, match="GaussianPrior"):
        gaussian_posterior_mean(problem, case.y)
    with pytest.raises(ValueError, match="single measurement"):
        gaussian_posterior_moments(case.problem, case.y.expand(2, -1))


def test_conjugate_gradient_batched_independent_solves():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 5, 5, generator=g, dtype=torch.float64)
    spd = a @ a.transpose(1, 2) + torch.eye(5, dtype=torch.float64)
    b = torch.randn(2, 5, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: torch.einsum("bij,bj->bi", spd, v), b, tol=1e-14)
    assert torch.allclose(x, torch.linalg.solve(spd, b), atol=1e-10)


def test_matrix_operator_adjoint_and_validation():
    op = MatrixOperator(torch.randn(7, 12), (3, 2, 2))
    assert adjointness_error(op) < 1e-12
    assert op(torch.randn(4, 5, 3, 2, 2)).shape == (4, 5, 7)
    with pytest.raises(ValueError, match="matrix"):
        MatrixOperator(torch.randn(7, 11), (3, 2, 2))
    with pytest.raises(ValueError, match="x"):
        op(torch.randn(1, 3, 2, 3))
    with pytest.raises(ValueError, match="y"):
        op.adjoint(torch.randn(2, 6))
    with pytest.raises(TypeError, match="op"):
        adjointness_error(lambda x: x)


def test_pinv_and_operator_norm():
    m = torch.randn(20, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    op = MatrixOperator(m, (1, 2, 4))
    x = torch.randn(1, 1, 2, 4, dtype=torch.float64)
    assert torch.allclose(op.pinv(op(x), eps=0.0, tol=1e-14), x, atol=1e-8)
    assert op.operator_norm(n_iter=200) == pytest.approx(float(torch.linalg.matrix_norm(m, 2)), rel=1e-6)
