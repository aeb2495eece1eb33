r"""Gauss–Newton Laplace approximation of a latent posterior (MacKay 1992).

For a latent prior :math:`x = G(z)`, :math:`z \sim \mathcal N(0, I)`, and Gaussian noise
:math:`y = A(x) + \sigma\varepsilon`, the latent potential is
:math:`U(z) = \tfrac1{2\sigma^2}\|A(G(z)) - y\|^2 + \tfrac12\|z\|^2`. Its Gauss–Newton Hessian
at :math:`z`,

.. math::

    H(z) = \frac{1}{\sigma^2} J^\top J + I, \qquad J = \frac{\partial A(G(z))}{\partial z}
    \in \mathbb R^{M \times D},

drops the second-order terms of the residual (it is exact for a linear :math:`A \circ G`) and is
always positive definite. :math:`\mathcal N(\hat z, H(\hat z)^{-1})` at the MAP is the Laplace
approximation of the latent posterior; its covariance is the natural inverse mass matrix of
HMC/NUTS on :math:`z` (the posterior becomes near-isotropic in the preconditioned coordinates).

:math:`J` is built by reverse-mode autograd, vectorised over its ``M`` rows when torch can
(``torch.autograd.functional.jacobian(..., vectorize=True)``), else row by row; the algebra is
float64. Cost: ``M`` vector–Jacobian products and an ``O(D^3)`` Cholesky (``D = 1024``: ~0.1 s).

:func:`laplace_energy_check` tests whether the Gaussian is adequate where its mass lies: for an
exactly Gaussian posterior the potential rises by :math:`\tfrac12\chi^2_D` at its draws.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_int
from ..priors.base import LatentPrior
from ..problem import GaussianNoise, InverseProblem

__all__ = ["latent_gauss_newton_hessian", "latent_laplace_covariance", "laplace_energy_check"]


def _forward_jacobian(problem: InverseProblem, z: Tensor) -> Tensor:
    shape = tuple(problem.prior.latent_shape)

    def fwd(v: Tensor) -> Tensor:
        return problem.operator(problem.prior.generate(v.reshape(1, *shape))).reshape(-1)

    flat = z.detach().reshape(-1)
    try:
        return torch.autograd.functional.jacobian(fwd, flat, vectorize=True)
    except RuntimeError:  # an op without a batching rule: one VJP per measurement
        v = flat.clone().requires_grad_(True)
        out = fwd(v)
        rows = [torch.autograd.grad(out[k], v, retain_graph=True)[0] for k in range(out.numel())]
        return torch.stack(rows)


def _check_latent(problem: InverseProblem, z: Tensor) -> tuple[int, ...]:
    """Validate a latent-prior problem and one latent ``z``; return ``latent_shape``."""
    if not isinstance(problem, InverseProblem):
        raise TypeError(f"problem: expected an InverseProblem, got {type(problem).__name__}")
    if not isinstance(problem.prior, LatentPrior):
        raise ValueError(f"problem: the Laplace approximation on z needs a latent prior, got "
                         f"{type(problem.prior).__name__}")
    shape = tuple(problem.prior.latent_shape)
    if not isinstance(z, Tensor) or tuple(z.shape[-len(shape):]) != shape or z.numel() != math.prod(shape):
        got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"z: expected one latent of shape {shape}, got {got}")
    if not bool(torch.isfinite(z).all()):
        raise ValueError("z: contains NaN/inf values")
    return shape


def latent_gauss_newton_hessian(problem: InverseProblem, z: Tensor) -> Tensor:
    r""":math:`H = J^\top J/\sigma^2 + I` at the latent ``z`` (``latent_shape``), float64 ``(D, D)``.

    Raises
    ------
    ValueError
        If the prior has no latent, the noise is not Gaussian, or ``z`` has the wrong shape or
        non-finite entries.
    """
    _check_latent(problem, z)
    if not isinstance(problem.noise, GaussianNoise):
        raise ValueError(f"problem: the Gauss-Newton Hessian needs Gaussian noise, got "
                         f"{type(problem.noise).__name__}")
    jac = _forward_jacobian(problem, z).to(torch.float64)
    d = jac.shape[1]
    eye = torch.eye(d, dtype=torch.float64, device=jac.device)
    return jac.T @ jac / problem.noise.sigma**2 + eye


def latent_laplace_covariance(problem: InverseProblem, z: Tensor) -> Tensor:
    r""":math:`H(z)^{-1}` (symmetrised, float64): the Laplace covariance of the latent posterior."""
    hess = latent_gauss_newton_hessian(problem, z)
    cov = torch.cholesky_inverse(torch.linalg.cholesky(hess))
    return 0.5 * (cov + cov.T)


def laplace_energy_check(problem: InverseProblem, y: Tensor, z: Tensor, covariance: Tensor | None = None,
                         *, n: int = 32, seed: int = 0, batch_size: int = 8) -> dict[str, float]:
    r"""Does the Gaussian :math:`\mathcal N(\hat z, \Sigma)` describe the latent posterior at its own draws?

    If the posterior were exactly :math:`\mathcal N(\hat z, \Sigma)` (a quadratic potential with
    Hessian :math:`\Sigma^{-1}`), then for :math:`z_k = \hat z + L\xi_k`, :math:`LL^\top = \Sigma`,
    :math:`\xi_k \sim \mathcal N(0, I_D)`,

    .. math::

        \Delta U_k = U(z_k) - U(\hat z) = \tfrac12 \|\xi_k\|^2 \sim \tfrac12\chi^2_D,
        \qquad \mathbb E\,\Delta U = D/2, \quad \operatorname{sd}\Delta U = \sqrt{D/2}.

    The ratio :math:`\overline{\Delta U} / (D/2)` is therefore 1 for an adequate Gaussian (up to
    :math:`\pm\sqrt{2/(nD)}` Monte-Carlo error). A ratio well above 1 says the posterior is much
    narrower (or curved) where the Gaussian puts its mass — its draws are improbable, a
    Gaussian (Laplace or affine-VI) posterior overstates or misplaces the spread, and HMC in the
    preconditioned coordinates needs steps well below 1; a ratio below 1 says the Gaussian is too
    narrow or :math:`\hat z` is not a minimum. The check is the energy form of the
    importance-sampling diagnostics of Yao et al. (2018, "Yes, but did it work?").

    Parameters
    ----------
    problem, y
        The inverse problem (latent prior) and one measurement.
    z
        The centre :math:`\hat z` (usually the latent MAP), ``latent_shape``.
    covariance
        :math:`\Sigma` ``(D, D)``; default :func:`latent_laplace_covariance` at ``z``.
    n
        Number of draws.
    seed, batch_size
        Seed of the draws; potentials evaluated ``batch_size`` draws at a time.

    Returns
    -------
    dict
        ``ratio`` (:math:`\overline{\Delta U}/(D/2)`), ``ratio_se`` (its Monte-Carlo standard
        error from the draws), ``delta_u_mean``, ``delta_u_std``, ``expected_mean`` (:math:`D/2`),
        ``expected_std`` (:math:`\sqrt{D/2}`), ``fraction_below_map`` (draws with
        :math:`\Delta U < 0`) and ``n``, ``dim``.
    """
    n = check_int(n, "n", minimum=2)
    batch_size = check_int(batch_size, "batch_size")
    shape = _check_latent(problem, z)
    d = math.prod(shape)
    if covariance is None:
        covariance = latent_laplace_covariance(problem, z)
    if not isinstance(covariance, Tensor) or tuple(covariance.shape) != (d, d):
        got = tuple(covariance.shape) if isinstance(covariance, Tensor) else type(covariance).__name__
        raise ValueError(f"covariance: expected a ({d}, {d}) matrix, got {got}")
    cov = covariance.detach().to(torch.float64)
    chol, info = torch.linalg.cholesky_ex(0.5 * (cov + cov.T))
    if int(info) != 0 or not bool(torch.isfinite(cov).all()):
        raise ValueError("covariance: expected a finite symmetric positive definite matrix")
    centre = z.detach().reshape(1, *shape)
    gen = torch.Generator().manual_seed(int(seed))
    xi = torch.randn((n, d), generator=gen, dtype=torch.float64).to(cov.device)
    draws = (centre.reshape(1, d).to(torch.float64) + xi @ chol.T).to(centre).reshape(n, *shape)
    with torch.no_grad():
        u0 = problem.potential(centre, y, space="latent").to(torch.float64).reshape(())
        u = torch.cat([problem.potential(draws[i:i + batch_size], y, space="latent").to(torch.float64)
                       .reshape(-1) for i in range(0, n, batch_size)])
    du = u - u0
    if not bool(torch.isfinite(du).all()):
        raise FloatingPointError("laplace_energy_check: the potential is not finite at some draws")
    half = d / 2.0
    return {"ratio": float(du.mean() / half), "ratio_se": float(du.std() / math.sqrt(n) / half),
            "delta_u_mean": float(du.mean()), "delta_u_std": float(du.std()),
            "expected_mean": half, "expected_std": math.sqrt(half),
            "fraction_below_map": float((du < 0).double().mean()), "n": n, "dim": d}
