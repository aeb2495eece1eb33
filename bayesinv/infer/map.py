r"""Maximum a posteriori (MAP) estimation, in latent or image coordinates.

**Latent MAP** (Bora et al. 2017; Asim et al. 2020, "Invertible generative models for inverse
problems") for a latent prior :math:`x = G(w)`:

.. math::

    \hat w = \arg\min_w \; \frac{1}{2\sigma^2}\|A(G(w)) - y\|^2 + \gamma \|w\|^2,
    \qquad \hat x = G(\hat w),

started at :math:`w_0 = 0` (Asim et al. find it best), with L-BFGS or Adam and a few random
restarts. :math:`\gamma = 1/2` is the exact posterior mode of the latent. With a
Gaussianization layer :math:`g` (Li et al. 2023, "Differentiable Gaussianization layers for
inverse problems regularized by deep generative models") the free variable is :math:`z` and
:math:`w = g(z)` is kept in the Gaussian typical set: :math:`\hat x = G(g(\hat z))`.

**Image MAP** minimises the image-space potential
:math:`U(x) = \frac{1}{2\sigma^2}\|A(x) - y\|^2 - \log p(x)` with Adam on the pixels, started at
the operator's cheap inverse (pseudo-inverse, FBP, bicubic). This is how patch priors are used
(patchNR and Wasserstein patch prior, Hertrich et al.: their :math:`\lambda R(x)` is
``-log p(x)``), and it works for any prior with ``log_prob``.

Both return a :class:`~bayesinv.infer.posterior.Posterior` of kind ``"point"``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import as_image_batch, check_choice, check_int, check_positive, make_generator
from ..priors.base import LatentPrior
from ..problem import InverseProblem
from ._progress import check_loss_finite, progress_bar
from .posterior import Posterior

METHODS = ("auto", "latent", "image")
OPTIMIZERS = ("lbfgs", "adam")


def map_estimate(
    problem: InverseProblem,
    y: Tensor,
    *,
    method: str = "auto",
    optimizer: str | None = None,
    steps: int | None = None,
    lr: float | None = None,
    gamma: float = 0.5,
    gaussianize: nn.Module | None = None,
    restarts: int = 1,
    init: str | Tensor = "auto",
    clamp: tuple[float, float] | None = None,
    tol: float = 1e-7,
    seed: int | None = 0,
    truth: Tensor | None = None,
    progress: bool | None = None,
    callback: Callable[[int, float, Tensor], None] | None = None,
) -> Posterior:
    r"""MAP estimate of the image given one measurement ``y``.

    Parameters
    ----------
    problem
        The :class:`~bayesinv.InverseProblem`.
    y
        One measurement, ``measurement_shape`` or ``(1, *measurement_shape)``.
    method
        ``"latent"`` (optimise the latent of a latent prior), ``"image"`` (optimise the pixels),
        or ``"auto"``: latent for latent priors, image otherwise.
    optimizer
        ``"lbfgs"`` (default for latent MAP) or ``"adam"`` (default for image MAP).
    steps
        Outer iterations: L-BFGS steps of up to 20 inner iterations each (default 25, i.e.
        at most ~500 iterations as in Li et al.) or Adam steps (default 300).
    lr
        Learning rate (default 1 for L-BFGS with a strong-Wolfe line search; 0.01 for Adam).
    gamma
        Weight :math:`\gamma` of :math:`\gamma\|w\|^2` in latent MAP (1/2 = the posterior mode).
    gaussianize
        A module :math:`g` (e.g. :class:`~bayesinv.gaussianize.GaussianizationLayer`) applied to
        the free latent before the generator: :math:`x = G(g(z))`. Latent MAP only.
    restarts
        Number of starts; the first starts at ``init``, the others at
        :math:`\mathcal N(0, 0.1^2 I)` perturbations of it (seeded) or, when ``init`` is the
        random draw of a Gaussianized run, at fresh standard-normal draws (Li et al.'s "seeds");
        the lowest objective wins.
    init
        ``"auto"`` (zeros for latent MAP — a seeded standard-normal draw when ``gaussianize`` is
        given, since the layer is undefined at a constant latent — and the operator's
        ``init_estimate(y)`` for image MAP),
        ``"zeros"``, ``"pinv"`` (image MAP; for latent MAP the latent encoding of
        ``init_estimate(y)``), or a tensor in the optimised space.
    clamp
        Image MAP: project pixels to ``[lo, hi]`` after each step (``None``: no projection).
    tol
        Stop when the relative change of the objective over one outer step is below ``tol``
        (Adam: measured over 20 steps).
    seed
        Seed of the restarts and of stochastic priors (patch sampling).
    truth
        Ground truth ``(C, H, W)`` stored in the posterior for reports.
    progress
        Show a progress bar (``None``: when stderr is a terminal).
    callback
        Called as ``callback(step, loss, x)`` after each outer step.

    Returns
    -------
    Posterior
        Kind ``"point"``, with the latent (when optimised), the objective history in
        ``settings["loss_history"]`` and the wall time.
    """
    if not isinstance(problem, InverseProblem):
        raise TypeError(f"problem: expected an InverseProblem, got {type(problem).__name__}")
    check_choice(method, "method", METHODS)
    tol = check_positive(tol, "tol", allow_zero=True)
    y = problem.check_measurement(y)
    if y.shape[0] != 1:
        raise ValueError(f"y: expected one measurement, got a batch of {y.shape[0]}")
    if method == "auto":
        method = "latent" if problem.has_latent else "image"
    if method == "latent" and not isinstance(problem.prior, LatentPrior):
        raise ValueError(f"method: 'latent' needs a latent prior, got {type(problem.prior).__name__}")
    if gaussianize is not None and method != "latent":
        raise ValueError("gaussianize: a Gaussianization layer acts on latents; use method='latent'")
    optimizer = optimizer or ("lbfgs" if method == "latent" else "adam")
    check_choice(optimizer, "optimizer", OPTIMIZERS)
    steps = check_int(steps if steps is not None else (25 if optimizer == "lbfgs" else 300), "steps")
    lr = check_positive(lr if lr is not None else (1.0 if optimizer == "lbfgs" else 0.01), "lr")
    gamma = check_positive(gamma, "gamma", allow_zero=True)
    restarts = check_int(restarts, "restarts")
    if clamp is not None and not (len(clamp) == 2 and clamp[0] < clamp[1]):
        raise ValueError(f"clamp: expected (lo, hi) with lo < hi, got {clamp!r}")

    gen = make_generator(seed, device="cpu")
    if seed is not None:
        torch.manual_seed(seed)  # stochastic energies (random patches) draw from the global stream
    start = _initial_value(problem, y, method, init, gaussianize=gaussianize, generator=gen)
    fresh = method == "latent" and _random_start(init, gaussianize)
    objective = _objective(problem, y, method, gamma, gaussianize)
    t0 = time.perf_counter()
    best: tuple[float, Tensor, list[float]] | None = None
    for r in range(restarts):
        v0 = restart_start(start, r, gen, fresh=fresh)
        v, history = _minimise(objective, v0, optimizer=optimizer, steps=steps, lr=lr, tol=tol,
                               clamp=clamp if method == "image" else None, progress=progress,
                               desc=f"MAP ({method}, restart {r + 1}/{restarts})",
                               callback=None if callback is None else
                               (lambda i, loss, v: callback(i, loss, _to_image(problem, method, gaussianize, v))))
        if best is None or history[-1] < best[0]:
            best = (history[-1], v, history)
    assert best is not None
    final_loss, v, history = best
    elapsed = time.perf_counter() - t0
    with torch.no_grad():
        x = _to_image(problem, method, gaussianize, v)
    latent = None
    if method == "latent":
        with torch.no_grad():
            latent = (gaussianize(v) if gaussianize is not None else v)[None]
    settings: dict[str, Any] = {
        "method": method, "optimizer": optimizer, "steps": steps, "lr": lr, "restarts": restarts,
        "tol": tol, "gaussianize": gaussianize is not None, "final_objective": final_loss,
        "loss_history": history,
    }
    if method == "latent":
        settings["gamma"] = gamma
    if clamp is not None:
        settings["clamp"] = list(clamp)
    return Posterior(
        samples=x[None], method="map", kind="point", latent_samples=latent, observed=y[0],
        truth=None if truth is None else as_image_batch(truth, "truth", problem.image_shape)[0],
        settings=settings, seed=seed, timings={"total_s": elapsed}, problem=problem.describe(),
    )


def _to_image(problem: InverseProblem, method: str, gaussianize: nn.Module | None, v: Tensor) -> Tensor:
    if method == "image":
        return v
    w = gaussianize(v) if gaussianize is not None else v
    return problem.prior.generate(w)


def _objective(problem: InverseProblem, y: Tensor, method: str, gamma: float,
               gaussianize: nn.Module | None) -> Callable[[Tensor], Tensor]:
    if method == "image":
        return lambda x: problem.potential(x, y, space="image").sum()

    def latent_objective(v: Tensor) -> Tensor:
        w = gaussianize(v) if gaussianize is not None else v
        x = problem.prior.generate(w)
        return problem.negative_log_likelihood(x, y).sum() + gamma * w.pow(2).sum()

    return latent_objective


def restart_start(start: Tensor, restart: int, generator: torch.Generator, *, fresh: bool) -> Tensor:
    r"""Start of restart number ``restart`` (0-based) of a multi-start optimisation.

    Restart 0 starts at ``start``. Later ones start at :math:`v_0 + 0.1\,\varepsilon` (a local
    perturbation, for deterministic starts such as Asim et al.'s :math:`z_0 = 0`) or, with
    ``fresh``, at a new draw :math:`\varepsilon` (for random starts, so that each restart is an
    independent seed as in Li et al. 2023); :math:`\varepsilon \sim \mathcal N(0, I)` from
    ``generator`` (CPU), moved to ``start``'s device and dtype.
    """
    if restart == 0:
        return start
    eps = torch.randn(start.shape, generator=generator).to(start)
    return eps if fresh else start + 0.1 * eps


def _random_start(init: str | Tensor, gaussianize: nn.Module | None) -> bool:
    """Whether latent MAP with this ``init`` starts from a standard-normal draw."""
    return (isinstance(init, str) and init == "auto" and gaussianize is not None
            and getattr(gaussianize, "enabled", True))


def _initial_value(problem: InverseProblem, y: Tensor, method: str, init: str | Tensor, *,
                   gaussianize: nn.Module | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
    if isinstance(init, Tensor):
        shape = problem.prior.latent_shape if method == "latent" else problem.image_shape
        v = init.detach().to(device=y.device, dtype=y.dtype)
        if v.dim() == len(shape):
            v = v[None]
        if tuple(v.shape) != (1, *shape):
            raise ValueError(f"init: expected a tensor of shape {tuple(shape)} for {method} MAP, "
                             f"got {tuple(init.shape)}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError("init: contains NaN/inf")
        return v.clone()
    check_choice(init, "init", ("auto", "zeros", "pinv"))
    if method == "latent":
        if _random_start(init, gaussianize):
            # g standardises groups of the latent, so it is undefined at a constant latent;
            # start, as Li et al. (2023) do, from a draw of the latent prior (seeded).
            z0 = torch.randn((1, *problem.prior.latent_shape), generator=generator)
            return z0.to(device=y.device, dtype=y.dtype)
        if init in ("auto", "zeros"):
            return y.new_zeros((1, *problem.prior.latent_shape))
        with torch.no_grad():
            z, _ = problem.prior.encode(problem.operator.init_estimate(y))
        return z
    if init == "zeros":
        return y.new_zeros((1, *problem.image_shape))
    with torch.no_grad():
        return problem.operator.init_estimate(y).reshape(1, *problem.image_shape)


def _minimise(objective: Callable[[Tensor], Tensor], v0: Tensor, *, optimizer: str, steps: int,
              lr: float, tol: float, clamp: tuple[float, float] | None, progress: bool | None,
              desc: str, callback: Callable[[int, float, Tensor], None] | None) -> tuple[Tensor, list[float]]:
    v = v0.detach().clone().requires_grad_(True)
    history: list[float] = []
    hint = "the learning rate is too large, or sigma too small for the data"
    with progress_bar(steps, desc, progress) as bar:
        if optimizer == "lbfgs":
            opt = torch.optim.LBFGS([v], lr=lr, max_iter=20, history_size=20,
                                    line_search_fn="strong_wolfe", tolerance_grad=1e-10,
                                    tolerance_change=1e-14)

            def closure() -> Tensor:
                opt.zero_grad()
                loss = objective(v)
                loss.backward()
                return loss

            for i in range(steps):
                loss = float(opt.step(closure).detach())
                check_loss_finite(loss, i, "map_estimate", hint)
                with torch.no_grad():
                    current = float(objective(v))
                check_loss_finite(current, i, "map_estimate", hint)
                history.append(current)
                bar.set_postfix(objective=f"{current:.4g}")
                bar.update()
                if callback is not None:
                    callback(i, current, v.detach())
                if len(history) > 1 and abs(history[-2] - current) <= tol * max(abs(current), 1.0):
                    break
        else:
            opt = torch.optim.Adam([v], lr=lr)
            window = 20
            for i in range(steps):
                opt.zero_grad()
                loss = objective(v)
                value = float(loss.detach())
                check_loss_finite(value, i, "map_estimate", hint)
                loss.backward()
                opt.step()
                if clamp is not None:
                    with torch.no_grad():
                        v.clamp_(*clamp)
                history.append(value)
                bar.set_postfix(objective=f"{value:.4g}")
                bar.update()
                if callback is not None:
                    callback(i, value, v.detach())
                if len(history) > window:
                    old = history[-window - 1]
                    if abs(old - value) <= tol * max(abs(value), 1.0):
                        break
    if optimizer == "adam":
        with torch.no_grad():
            final = float(objective(v))
        check_loss_finite(final, len(history), "map_estimate", hint)
        history.append(final)
    if not math.isfinite(history[-1]):
        raise FloatingPointError(f"map_estimate: non-finite objective; likely cause: {hint}")
    return v.detach(), history
