r"""Exact posteriors of linear-Gaussian problems.

For :math:`y = Ax + \varepsilon`, :math:`\varepsilon \sim \mathcal N(0, \sigma^2 I)` and the prior
:math:`x \sim \mathcal N(\mu, \Sigma)`, the posterior is Gaussian with precision and mean

.. math::

    P = A^\top A / \sigma^2 + \Sigma^{-1}, \qquad m = P^{-1}\big(A^\top y/\sigma^2 + \Sigma^{-1}\mu\big)

(e.g. Kaipio & Somersalo 2005, §3.4). :func:`gaussian_posterior_mean` solves for :math:`m` by
conjugate gradients with matrix-free products, so it scales to large images;
:func:`gaussian_posterior_moments` builds dense :math:`m` and :math:`P^{-1}` for small problems
(the reference for every sampler's exactness test); :func:`exact_gaussian_posterior` draws exact
posterior samples by *perturb-and-optimise* (Papandreou & Yuille 2010): with
:math:`\tilde x \sim \mathcal N(\mu, \Sigma)` and :math:`\tilde y = y + \sigma\xi`, the solution of
:math:`P x = A^\top \tilde y/\sigma^2 + \Sigma^{-1}\tilde x` is an exact posterior draw.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from .._checks import check_int, check_positive, make_generator
from ..operators.base import LinearOperator, conjugate_gradient
from ..priors.gaussian import GaussianPrior
from ..problem import InverseProblem
from .posterior import Posterior


def _check_linear_gaussian(problem: InverseProblem) -> tuple[LinearOperator, GaussianPrior, float]:
    if not isinstance(problem, InverseProblem):
        raise TypeError(f"problem: expected an InverseProblem, got {type(problem).__name__}")
    if not isinstance(problem.operator, LinearOperator):
        raise ValueError("problem: the closed-form posterior needs a linear operator, got "
                         f"{type(problem.operator).__name__}")
    if not isinstance(problem.prior, GaussianPrior):
        raise ValueError("problem: the closed-form posterior needs a GaussianPrior, got "
                         f"{type(problem.prior).__name__}")
    return problem.operator, problem.prior, problem.noise.sigma


def _solve(problem: InverseProblem, rhs_y: Tensor, rhs_x: Tensor, *, max_iter: int, tol: float) -> Tensor:
    A, prior, sigma = _check_linear_gaussian(problem)
    b = A.adjoint(rhs_y) / sigma**2 + prior.precision_matvec(rhs_x)

    def matvec(v: Tensor) -> Tensor:
        return A.normal(v) / sigma**2 + prior.precision_matvec(v)

    return conjugate_gradient(matvec, b, x0=rhs_x.clone(), max_iter=max_iter, tol=tol)


def gaussian_posterior_mean(problem: InverseProblem, y: Tensor, *, max_iter: int = 500,
                            tol: float = 1e-7) -> Tensor:
    """Posterior mean ``(B, C, H, W)`` of a linear-Gaussian problem by conjugate gradients."""
    _, prior, _ = _check_linear_gaussian(problem)
    max_iter = check_int(max_iter, "max_iter")
    tol = check_positive(tol, "tol", allow_zero=True)
    y = problem.check_measurement(y)
    mu = prior.mean.expand(y.shape[0], *prior.image_shape)
    with torch.no_grad():
        return _solve(problem, y, mu, max_iter=max_iter, tol=tol)


def gaussian_posterior_moments(problem: InverseProblem, y: Tensor) -> tuple[Tensor, Tensor]:
    r"""Dense posterior mean ``(D,)`` and covariance ``(D, D)`` in float64 (small problems).

    Builds :math:`A` column by column, so it is meant for images of up to a few thousand
    pixels (the exactness tests of the samplers).
    """
    A, prior, sigma = _check_linear_gaussian(problem)
    y = problem.check_measurement(y)
    if y.shape[0] != 1:
        raise ValueError(f"y: expected a single measurement, got a batch of {y.shape[0]}")
    d = math.prod(prior.image_shape)
    if d > 4096:
        raise ValueError(f"problem: {d} pixels is too many for dense moments (limit 4096); "
                         "use gaussian_posterior_mean")
    import copy

    A64 = copy.deepcopy(A).to(torch.float64)
    prior64 = copy.deepcopy(prior).to(torch.float64)
    eye = torch.eye(d, dtype=torch.float64, device=y.device).reshape(d, *prior.image_shape)
    with torch.no_grad():
        a_mat = A64(eye).reshape(d, -1).T  # (m, d)
        prec_prior = prior64.precision_matvec(eye).reshape(d, d)
        prec = a_mat.T @ a_mat / sigma**2 + prec_prior
        prec = 0.5 * (prec + prec.T)
        rhs = a_mat.T @ y.double().reshape(-1) / sigma**2 + prec_prior @ prior64.mean.reshape(-1)
        chol = torch.linalg.cholesky(prec)
        mean = torch.cholesky_solve(rhs[:, None], chol)[:, 0]
        cov = torch.cholesky_inverse(chol)
    return mean, 0.5 * (cov + cov.T)


def exact_gaussian_posterior(problem: InverseProblem, y: Tensor, *, num_samples: int = 32,
                             seed: int | None = 0, truth: Tensor | None = None, max_iter: int = 500,
                             tol: float = 1e-6, batch_size: int = 16) -> Posterior:
    """Exact posterior of a linear-Gaussian problem: CG mean plus perturb-and-optimise draws.

    Returns a :class:`Posterior` of kind ``"independent"`` with ``num_samples`` exact draws in
    one chain and the exact mean as point estimate.
    """
    A, prior, sigma = _check_linear_gaussian(problem)
    num_samples = check_int(num_samples, "num_samples")
    batch_size = check_int(batch_size, "batch_size")
    max_iter = check_int(max_iter, "max_iter")
    tol = check_positive(tol, "tol", allow_zero=True)
    y = problem.check_measurement(y)
    if y.shape[0] != 1:
        raise ValueError(f"y: expected a single measurement, got a batch of {y.shape[0]}")
    gen = make_generator(seed, device=y.device)
    t0 = time.perf_counter()
    mean = gaussian_posterior_mean(problem, y, max_iter=max_iter, tol=tol)[0]
    t_mean = time.perf_counter() - t0
    draws = []
    with torch.no_grad():
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            x_prior = prior.sample(n, generator=gen)
            y_pert = problem.noise.sample(y.expand(n, *y.shape[1:]), generator=gen)
            draws.append(_solve(problem, y_pert, x_prior, max_iter=max_iter, tol=tol))
    samples = torch.cat(draws)[None]
    return Posterior(
        samples=samples, method="closed_form", kind="independent", point_estimate=mean,
        observed=y[0], truth=truth, seed=seed,
        settings={"num_samples": num_samples, "solver": "conjugate_gradient", "max_iter": max_iter,
                  "tol": tol},
        timings={"mean_s": t_mean, "total_s": time.perf_counter() - t0},
        problem=problem.describe(),
    )
