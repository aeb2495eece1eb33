"""bayesinv: Bayesian inverse problems with normalizing-flow priors, as Pyro models.

One model (:class:`InverseProblem`), three inference families (MAP, variational, MCMC), one
diagnostics layer (ArviZ).
"""

from importlib.metadata import PackageNotFoundError, version

from . import data, diagnostics, metrics, operators, priors
from .diagnostics.report import uq_report
from .infer import (
    Posterior,
    exact_gaussian_posterior,
    fit_variational,
    gaussian_posterior_mean,
    map_estimate,
    sample_posterior,
)
from .problem import GaussianNoise, InverseProblem

try:
    __version__ = version("bayesinv")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "InverseProblem",
    "GaussianNoise",
    "Posterior",
    "map_estimate",
    "sample_posterior",
    "fit_variational",
    "operators",
    "priors",
    "data",
    "diagnostics",
    "uq_report",
    "metrics",
    "exact_gaussian_posterior",
    "gaussian_posterior_mean",
    "__version__",
]
