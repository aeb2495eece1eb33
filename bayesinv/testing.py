"""Small exactly solvable problems, for tests of inference methods (ours and users').

:func:`linear_gaussian_problem` builds a linear-Gaussian inverse problem whose posterior is
known in closed form (:func:`bayesinv.infer.gaussian_posterior_moments`): every sampler, every
variational posterior and every optimiser in bayesinv is checked against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .infer.exact import gaussian_posterior_moments
from .operators.matrix import MatrixOperator, random_gaussian_matrix
from .priors.gaussian import GaussianPrior
from .problem import InverseProblem


@dataclass
class LinearGaussianCase:
    """A linear-Gaussian problem with its data and exact posterior moments (float64)."""

    problem: InverseProblem
    y: Tensor
    truth: Tensor
    mean: Tensor  # (D,) float64
    covariance: Tensor  # (D, D) float64

    @property
    def std(self) -> Tensor:
        return self.covariance.diagonal().sqrt()


def linear_gaussian_problem(image_shape: tuple[int, int, int] = (1, 4, 4), m: int | None = None, *,
                            sigma: float = 0.1, prior_std: float = 0.3, length_scale: float = 1.0,
                            seed: int = 0, dtype: torch.dtype = torch.float64) -> LinearGaussianCase:
    """A random Gaussian-matrix operator with a stationary Gaussian prior and simulated data.

    ``m`` defaults to half the number of pixels (an under-determined problem, so the prior
    matters). Everything is seeded by ``seed``.
    """
    d = math.prod(image_shape)
    m = d // 2 if m is None else m
    op = MatrixOperator(random_gaussian_matrix(m, d, seed=seed, dtype=dtype), image_shape)
    prior = GaussianPrior.stationary(image_shape, std=prior_std, length_scale=length_scale).to(dtype)
    problem = InverseProblem(op, prior, sigma)
    gen = torch.Generator().manual_seed(seed + 1)
    truth = prior.sample(1, generator=gen)
    y = problem.simulate(truth, generator=gen)
    mean, cov = gaussian_posterior_moments(problem, y)
    return LinearGaussianCase(problem=problem, y=y, truth=truth, mean=mean, covariance=cov)
