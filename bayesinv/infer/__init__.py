"""Inference: MAP, variational and MCMC, all returning a :class:`Posterior`."""

from .exact import exact_gaussian_posterior, gaussian_posterior_mean, gaussian_posterior_moments
from .kernels import MALA, ULA
from .laplace import laplace_energy_check, latent_gauss_newton_hessian, latent_laplace_covariance
from .map import map_estimate
from .mcmc import sample_posterior
from .posterior import Posterior
from .variational import (
    ConditionalAffineFlow,
    NotConvergedWarning,
    VariationalPosterior,
    fit_variational,
    loss_trend,
)
from .zero_shot import zero_shot_sr

__all__ = ["Posterior", "map_estimate", "sample_posterior", "MALA", "ULA", "fit_variational",
           "VariationalPosterior", "ConditionalAffineFlow", "zero_shot_sr", "exact_gaussian_posterior", "gaussian_posterior_mean",
           "gaussian_posterior_moments", "latent_gauss_newton_hessian", "latent_laplace_covariance",
           "laplace_energy_check", "NotConvergedWarning", "loss_trend"]
