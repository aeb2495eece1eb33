r"""The inverse problem :math:`y = A(x) + \varepsilon` as a Pyro model.

:class:`InverseProblem` joins a forward operator :math:`A`, a prior :math:`p(x)` and a noise
model :math:`p(y \mid A(x))` into one object that every inference method consumes:

.. math::

    z \sim \mathcal N(0, I),\quad x = G(z) \qquad \text{(latent prior)}

    y \mid x \sim \mathcal N(A(x), \sigma^2 I).

``model(y)`` is the Pyro model (sites ``"z"``, ``"x"``, ``"y"``; energy priors add
``"prior"``), ``simulate`` draws synthetic measurements, and ``potential`` is the negative log
posterior (up to a constant) in image or latent coordinates for custom samplers and optimisers.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ._checks import (
    Shape,
    as_image_batch,
    as_measurement_batch,
    check_choice,
    check_finite,
    check_positive,
    make_generator,
)
from .operators.base import Operator
from .priors.base import LatentPrior, Prior

_LOG_2PI = math.log(2.0 * math.pi)


class GaussianNoise(nn.Module):
    r"""Additive white Gaussian noise :math:`\varepsilon \sim \mathcal N(0, \sigma^2 I)`.

    Parameters
    ----------
    sigma
        Noise standard deviation, > 0 (in the units of the measurements).
    """

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = check_positive(sigma, "sigma")

    def distribution(self, mean: Tensor, event_dims: int) -> dist.Distribution:
        """:math:`\\mathcal N(\\text{mean}, \\sigma^2 I)` with ``event_dims`` event axes."""
        return dist.Normal(mean, self.sigma).to_event(event_dims)

    def sample(self, mean: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw :math:`y = \\text{mean} + \\sigma \\xi`."""
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                            device=generator.device if generator is not None else mean.device)
        return mean + self.sigma * noise.to(mean.device)

    def negative_log_likelihood(self, y: Tensor, mean: Tensor, event_dims: int) -> Tensor:
        r""":math:`\tfrac{1}{2\sigma^2}\|y - \text{mean}\|^2` per item (constant dropped)."""
        return 0.5 * (y - mean).pow(2).flatten(-event_dims).sum(-1) / self.sigma**2

    def log_normalizer(self, n: int) -> float:
        r"""The dropped constant :math:`-\tfrac n2\log(2\pi\sigma^2)` of ``n`` measurements."""
        return -0.5 * n * (_LOG_2PI + 2 * math.log(self.sigma))

    def describe(self) -> dict[str, object]:
        return {"name": "GaussianNoise", "sigma": self.sigma}


class InverseProblem(nn.Module):
    r"""A Bayesian inverse problem :math:`y = A(x) + \varepsilon`, :math:`x \sim p(x)`.

    Built once and reused by MAP (:func:`bayesinv.map_estimate`), variational inference and
    MCMC. It is a ``torch.nn.Module``, so ``problem.to("cuda")`` moves the operator and prior.

    Parameters
    ----------
    operator
        The forward operator :math:`A` (:class:`~bayesinv.operators.Operator`).
    prior
        The image prior (:class:`~bayesinv.priors.Prior`); its ``image_shape`` must equal the
        operator's ``in_shape``.
    noise
        The noise model; a float is read as the standard deviation of :class:`GaussianNoise`.

    Examples
    --------
    >>> from bayesinv import InverseProblem, operators, priors
    >>> A = operators.Blur((1, 32, 32), kernel="gaussian", width=1.5)
    >>> prior = priors.GaussianPrior.stationary((1, 32, 32), std=0.2, length_scale=3.0)
    >>> problem = InverseProblem(A, prior, noise=0.01)
    >>> y = problem.simulate(prior.sample(1), seed=0)
    """

    def __init__(self, operator: Operator, prior: Prior, noise: GaussianNoise | float) -> None:
        super().__init__()
        if not isinstance(operator, Operator):
            raise TypeError(f"operator: expected a bayesinv Operator, got {type(operator).__name__}")
        if not isinstance(prior, Prior):
            raise TypeError(f"prior: expected a bayesinv Prior, got {type(prior).__name__}")
        if isinstance(noise, (int, float)) and not isinstance(noise, bool):
            noise = GaussianNoise(noise)
        if not isinstance(noise, GaussianNoise):
            raise TypeError(f"noise: expected GaussianNoise or a positive float, got {type(noise).__name__}")
        if tuple(operator.in_shape) != tuple(prior.image_shape):
            raise ValueError(
                f"operator/prior: the operator takes images of shape {operator.in_shape} but the "
                f"prior is on images of shape {prior.image_shape}"
            )
        self.operator = operator
        self.prior = prior
        self.noise = noise

    # -- shapes and validation ---------------------------------------------------------------
    @property
    def image_shape(self) -> Shape:
        return self.operator.in_shape

    @property
    def measurement_shape(self) -> Shape:
        return self.operator.out_shape

    @property
    def has_latent(self) -> bool:
        return self.prior.has_latent

    @property
    def device(self) -> torch.device:
        return self.prior.device if any(True for _ in self.prior.buffers()) or any(
            True for _ in self.prior.parameters()) else self.operator.device

    def check_measurement(self, y: object, name: str = "y") -> Tensor:
        """Validate and normalise measurements to ``(B, *measurement_shape)``, finite."""
        y = as_measurement_batch(y, name, self.measurement_shape)
        return check_finite(y, name).to(self.device)

    def check_image(self, x: object, name: str = "x") -> Tensor:
        """Validate and normalise images to ``(B, C, H, W)``, finite."""
        x = as_image_batch(x, name, self.image_shape)
        return check_finite(x, name).to(self.device)

    # -- the Pyro model ------------------------------------------------------------------------
    def model(self, y: Tensor | None = None, batch_size: int | None = None) -> Tensor:
        r"""The Pyro model :math:`p(x)\,p(y\mid x)` for a batch of independent measurements.

        Sites: ``"z"`` (latent priors) and deterministic ``"x"``, or ``"x"`` and the factor
        ``"prior"`` (energy priors); the observed ``"y"``. All inside the plate
        ``"measurements"`` of size ``B``.

        Parameters
        ----------
        y
            Observed measurements ``(B, *measurement_shape)`` or ``measurement_shape``; ``None``
            samples them (prior predictive).
        batch_size
            Number of independent problems when ``y`` is ``None`` (default 1).
        """
        if y is not None:
            y = as_measurement_batch(y, "y", self.measurement_shape)
            n = y.shape[0]
        else:
            n = 1 if batch_size is None else int(batch_size)
        with pyro.plate("measurements", n):
            x = self.prior.pyro_sample()
            mean = self.operator(x)
            return pyro.sample("y", self.noise.distribution(mean, len(self.measurement_shape)), obs=y)

    # -- simulation ------------------------------------------------------------------------------
    def simulate(self, x: object, seed: int | None = None, *,
                 generator: torch.Generator | None = None) -> Tensor:
        """Simulate noisy measurements ``y = A(x) + ε`` of images ``x`` (``(B, C, H, W)``)."""
        x = self.check_image(x)
        if generator is None:
            generator = make_generator(seed, device=x.device)
        with torch.no_grad():
            return self.noise.sample(self.operator(x), generator)

    # -- log densities ---------------------------------------------------------------------------
    def negative_log_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        r""":math:`-\log p(y \mid x)` per item, up to the constant ``noise.log_normalizer``."""
        return self.noise.negative_log_likelihood(y, self.operator(x), len(self.measurement_shape))

    def potential(self, value: Tensor, y: Tensor, space: str | None = None) -> Tensor:
        r"""Negative log posterior up to a constant, per item of the batch.

        * ``space="image"``: :math:`U(x) = -\log p(y\mid x) - \log p(x)`.
        * ``space="latent"`` (latent priors only):
          :math:`U(z) = -\log p(y\mid G(z)) + \tfrac12\|z\|^2`, the posterior of the latent,
          which is what latent MAP and HMC on latents use.

        ``space=None`` picks ``"latent"`` for latent priors and ``"image"`` otherwise.
        """
        space = ("latent" if self.has_latent else "image") if space is None else space
        check_choice(space, "space", ("image", "latent"))
        m = self.measurement_shape
        if not isinstance(y, Tensor) or y.dim() not in (len(m), len(m) + 1) or tuple(y.shape[-len(m):]) != m:
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"y: expected a measurement of shape {m} or (B, *{m}), got {got}")
        if space == "latent":
            if not isinstance(self.prior, LatentPrior):
                raise ValueError(f"space: 'latent' needs a latent prior, got {type(self.prior).__name__}")
            x = self.prior.generate(value)
            return self.negative_log_likelihood(x, y) - self.prior.latent_log_prob(value)
        return self.negative_log_likelihood(value, y) - self.prior.log_prob(value)

    def describe(self) -> dict[str, object]:
        """Operator, prior and noise, as a JSON-serialisable dictionary (provenance)."""
        return {"operator": self.operator.describe(), "prior": self.prior.describe(),
                "noise": self.noise.describe()}

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}, measurement_shape={self.measurement_shape}"
