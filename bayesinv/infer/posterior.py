"""The result of every inference method: posterior draws of the image, with provenance.

A :class:`Posterior` holds image draws with axes ``(chain, draw, C, H, W)``:

* MAP gives a degenerate posterior (1 chain, 1 draw), so reports still work;
* variational inference gives independent draws (1 chain, n draws);
* MCMC gives ``num_chains`` Markov chains.

It also carries the latent draws where a latent prior was used, per-draw sample statistics
(divergences, acceptance, step size, ...), the observed measurement, the ground truth when it
is known, and the method, settings, seed and timings. ``to_arviz()`` and ``save``/``load``
go through :mod:`bayesinv.diagnostics.arviz_io`, the one module that talks to ArviZ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

#: Which diagnostics make sense for each kind of posterior.
POSTERIOR_KINDS = ("point", "independent", "markov")


@dataclass
class Posterior:
    """Posterior draws of an image and how they were obtained.

    Parameters
    ----------
    samples
        Image draws ``(chain, draw, C, H, W)`` (stored on the CPU).
    method
        Name of the method, e.g. ``"map"``, ``"vi"``, ``"nuts"``, ``"closed_form"``.
    kind
        ``"point"`` (one draw: MAP), ``"independent"`` (i.i.d. draws: VI, exact samplers) or
        ``"markov"`` (MCMC chains); decides which diagnostics apply.
    point_estimate
        ``(C, H, W)``; defaults to the posterior mean of ``samples``.
    latent_samples
        Latent draws ``(chain, draw, *latent_shape)`` when the prior has latents.
    sample_stats
        Per-draw statistics, each ``(chain, draw)`` (e.g. ``"diverging"``, ``"accept_prob"``).
    observed
        The measurement ``y`` (without batch axis).
    truth
        The ground-truth image ``(C, H, W)`` when known (simulations).
    settings, seed, timings, problem
        Provenance: method settings, the seed, wall times in seconds, and
        ``InverseProblem.describe()``.
    """

    samples: Tensor
    method: str
    kind: str = "independent"
    point_estimate: Tensor | None = None
    latent_samples: Tensor | None = None
    sample_stats: dict[str, Tensor] = field(default_factory=dict)
    observed: Tensor | None = None
    truth: Tensor | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    problem: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.samples, Tensor):
            raise TypeError(f"samples: expected a torch.Tensor, got {type(self.samples).__name__}")
        if self.samples.dim() != 5:
            raise ValueError("samples: expected shape (chain, draw, C, H, W), "
                             f"got {tuple(self.samples.shape)}")
        if self.kind not in POSTERIOR_KINDS:
            raise ValueError(f"kind: expected one of {POSTERIOR_KINDS}, got {self.kind!r}")
        if self.kind == "point" and self.samples.shape[:2] != (1, 1):
            raise ValueError("kind: a 'point' posterior has exactly one chain and one draw, "
                             f"got samples of shape {tuple(self.samples.shape)}")
        self.samples = self.samples.detach().cpu()
        if self.point_estimate is None:
            self.point_estimate = self.samples.mean(dim=(0, 1))
        self.point_estimate = _image3(self.point_estimate, "point_estimate", self.image_shape)
        if self.truth is not None:
            self.truth = _image3(self.truth, "truth", self.image_shape)
        if self.observed is not None:
            self.observed = self.observed.detach().cpu()
        if self.latent_samples is not None:
            self.latent_samples = self.latent_samples.detach().cpu()
            if self.latent_samples.shape[:2] != self.samples.shape[:2]:
                raise ValueError("latent_samples: leading (chain, draw) axes "
                                 f"{tuple(self.latent_samples.shape[:2])} differ from samples' "
                                 f"{tuple(self.samples.shape[:2])}")
        for key, value in list(self.sample_stats.items()):
            value = torch.as_tensor(value).detach().cpu()
            if value.shape[:2] != self.samples.shape[:2]:
                raise ValueError(f"sample_stats[{key!r}]: expected leading axes (chain, draw) = "
                                 f"{tuple(self.samples.shape[:2])}, got {tuple(value.shape)}")
            self.sample_stats[key] = value

    # -- shapes and summaries --------------------------------------------------------------------
    @property
    def num_chains(self) -> int:
        return int(self.samples.shape[0])

    @property
    def num_draws(self) -> int:
        return int(self.samples.shape[1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.samples.shape[2:])  # type: ignore[return-value]

    @property
    def mean(self) -> Tensor:
        """Posterior mean image ``(C, H, W)``."""
        return self.samples.mean(dim=(0, 1))

    @property
    def std(self) -> Tensor:
        """Posterior standard deviation per pixel ``(C, H, W)`` (zeros for a point estimate)."""
        flat = self.samples.flatten(0, 1)
        if flat.shape[0] < 2:
            return torch.zeros_like(flat[0])
        return flat.std(dim=0)

    # -- ArviZ and files ---------------------------------------------------------------------------
    def to_arviz(self):
        """ArviZ ``InferenceData`` with dims ``chain, draw, channel, row, col`` (and ``z``)."""
        from ..diagnostics.arviz_io import to_inference_data

        return to_inference_data(self)

    def save(self, path: str | os.PathLike) -> None:
        """Write the posterior as netCDF (ArviZ layout, provenance in attrs), atomically."""
        from ..diagnostics.arviz_io import save_posterior

        save_posterior(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Posterior:
        """Read a posterior written by :meth:`save`."""
        from ..diagnostics.arviz_io import load_posterior

        return load_posterior(path)

    def __repr__(self) -> str:
        return (f"Posterior(method={self.method!r}, kind={self.kind!r}, chains={self.num_chains}, "
                f"draws={self.num_draws}, image_shape={self.image_shape})")


def _image3(t: Tensor, name: str, shape: tuple[int, ...]) -> Tensor:
    t = torch.as_tensor(t).detach().cpu()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    return t
