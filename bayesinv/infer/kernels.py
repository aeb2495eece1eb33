r"""Langevin MCMC kernels (ULA and MALA) in image space, as Pyro ``MCMCKernel`` s.

Both kernels sample :math:`\pi(x) \propto \exp(-U(x))` for a potential
:math:`U(x) = -\log p(x \mid y)` given as ``potential_fn({"x": x}) -> scalar`` (e.g. built from
:meth:`bayesinv.InverseProblem.potential` with ``space="image"``), with an optional fixed
diagonal (or scalar) preconditioner :math:`M`:

* **ULA**, the unadjusted Langevin algorithm (Roberts & Tweedie 1996; Durmus & Moulines 2017)

  .. math:: x_{k+1} = x_k - \delta M \nabla U(x_k) + \sqrt{2\delta}\, M^{1/2} \xi_k,
            \qquad \xi_k \sim \mathcal N(0, I),

  with a fixed step :math:`\delta`. It is biased by :math:`O(\delta)`: for a Gaussian target
  :math:`\mathcal N(m, P^{-1})` (and :math:`M = I`) its stationary law is Gaussian with mean
  :math:`m` and covariance :math:`(P - \tfrac{\delta}{2} P^2)^{-1}` (an AR(1) recursion).
  Reference setting with patchNR on CT (Hertrich et al., "On the power of patches", seed
  paper 004): :math:`\lambda = 6000`, :math:`\delta = 2\cdot 10^{-7}`.
* **MALA**, the Metropolis-adjusted Langevin algorithm (Roberts & Tweedie 1996): the ULA step
  is a proposal :math:`x'`, accepted with probability

  .. math:: \alpha = \min\Big(1, \frac{\exp(-U(x'))\, q(x \mid x')}{\exp(-U(x))\, q(x' \mid x)}\Big),
            \qquad \log q(x' \mid x) = -\frac{\|M^{-1/2}(x' - x + \delta M\nabla U(x))\|^2}{4\delta},

  so the chain is exact. During warm-up :math:`\log\delta` is adapted by dual averaging
  (Nesterov 2009; Hoffman & Gelman 2014, Alg. 5, as in Pyro's HMC adaptation) toward the
  optimal acceptance rate 0.574 (Roberts & Rosenthal 1998) and frozen at its averaged value
  afterwards.

Randomness comes from torch's global generator, so ``pyro.set_rng_seed`` makes runs
reproducible, and the kernels work with ``pyro.infer.MCMC(kernel, num_samples, warmup_steps,
initial_params={"x": ...})``. Each ``sample`` call records ``last_stats`` (``accept_prob``,
``step_size``, ``potential_energy``, ``diverging``) for per-draw sample statistics;
:meth:`get_state`/:meth:`set_state` expose the adaptation state for exact checkpointing.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel
from pyro.ops.dual_averaging import DualAveraging
from torch import Tensor

from .._checks import check_positive

PotentialFn = Callable[[dict[str, Tensor]], Tensor]

#: Optimal MALA acceptance rate in high dimension (Roberts & Rosenthal 1998).
MALA_TARGET_ACCEPT = 0.574
#: Reference ULA step with patchNR on CT (Hertrich et al.; used with lambda = 6000).
ULA_REFERENCE_STEP = 2e-7

_HINT = ("the step size is too large for this posterior (reduce step_size), or the prior "
         "weight lambda / 1/sigma^2 make the potential too stiff")


def potential_and_grad(potential_fn: PotentialFn, x: Tensor, site: str = "x") -> tuple[Tensor, Tensor]:
    """Return :math:`U(x)` (detached scalar) and :math:`\\nabla U(x)`."""
    x = x.detach().requires_grad_(True)
    u = potential_fn({site: x})
    (g,) = torch.autograd.grad(u, x)
    return u.detach(), g.detach()


def check_preconditioner(preconditioner: float | Tensor | None,
                         shape: tuple[int, ...] | None = None) -> Tensor | None:
    """Validate a scalar or diagonal preconditioner :math:`M` (``None`` passes through).

    ``M`` must be positive and finite, and either a scalar (one element) or a tensor of exactly
    the sampled ``shape`` (when given): a smaller tensor would silently broadcast.
    """
    if preconditioner is None:
        return None
    if isinstance(preconditioner, bool) or not isinstance(preconditioner, (int, float, Tensor)):
        raise TypeError("preconditioner: expected a positive number or a tensor, got "
                        f"{type(preconditioner).__name__}")
    p = torch.as_tensor(preconditioner)
    if p.is_complex() or not (p.is_floating_point() or p.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"preconditioner: expected a real tensor, got dtype {p.dtype}")
    if p.numel() != 1 and shape is not None and tuple(p.shape) != tuple(shape):
        raise ValueError(f"preconditioner: expected a scalar or a diagonal of the sampled shape "
                         f"{tuple(shape)}, got shape {tuple(p.shape)}")
    if p.numel() == 1:
        p = p.reshape(())
    if not bool(torch.isfinite(p).all()) or bool((p <= 0).any()):
        raise ValueError("preconditioner: expected positive finite values (a diagonal M)")
    return p


class _LangevinKernel(MCMCKernel):
    """Shared state and bookkeeping of ULA and MALA (see the module docstring)."""

    site = "x"
    name = "langevin"
    #: Pyro's MCMC looks for a model and transforms; the potential is already unconstrained.
    model = None
    transforms: dict[str, Any] = {}

    def __init__(self, potential_fn: PotentialFn, step_size: float, *,
                 preconditioner: float | Tensor | None = None) -> None:
        if not callable(potential_fn):
            raise TypeError(f"potential_fn: expected a callable, got {type(potential_fn).__name__}")
        self.potential_fn = potential_fn
        self._initial_step_size = check_positive(step_size, "step_size")
        self._precond: Tensor | None = check_preconditioner(preconditioner)
        self._initial_params: dict[str, Tensor] | None = None
        self._reset()

    # -- Pyro MCMCKernel interface ------------------------------------------------------------
    @property
    def initial_params(self) -> dict[str, Tensor]:
        if self._initial_params is None:
            raise ValueError(f"initial_params: {type(self).__name__} needs initial_params={{'x': x0}}")
        return self._initial_params

    @initial_params.setter
    def initial_params(self, params: dict[str, Tensor]) -> None:
        if not isinstance(params, dict) or set(params) != {self.site}:
            raise ValueError(f"initial_params: expected a dict with the single key {self.site!r}")
        self._initial_params = {self.site: params[self.site].detach().clone()}

    def _reset(self) -> None:
        self.step_size = self._initial_step_size
        self._t = 0
        self._warmup_steps = 0
        self._accept_cnt = 0
        self._mean_accept_prob = 0.0
        self._cache: tuple[Tensor, Tensor, Tensor] | None = None
        self.last_stats: dict[str, float] = {}

    def setup(self, warmup_steps: int, *args: Any, **kwargs: Any) -> None:
        self._reset()
        self._warmup_steps = int(warmup_steps)
        x = self.initial_params[self.site]
        check_preconditioner(self._precond, tuple(x.shape))
        u, g = potential_and_grad(self.potential_fn, x, self.site)
        if not (bool(torch.isfinite(u)) and bool(torch.isfinite(g).all())):
            raise FloatingPointError(f"{self.name}: the potential or its gradient is not finite at "
                                     "the initial point; choose another init")
        self._cache = (x, u, g)

    def cleanup(self) -> None:
        self._cache = None

    def logging(self) -> dict[str, str]:
        return OrderedDict([("step size", f"{self.step_size:.2e}"),
                            ("acc. prob", f"{self._mean_accept_prob:.3f}")])

    def diagnostics(self) -> dict[str, Any]:
        n = max(self._t - self._warmup_steps, 1)
        return {"divergences": [], "acceptance rate": self._accept_cnt / n,
                "step size": self.step_size}

    # -- the Langevin step ---------------------------------------------------------------------
    def _m(self, x: Tensor) -> Tensor | float:
        return 1.0 if self._precond is None else self._precond.to(device=x.device, dtype=x.dtype)

    def _propose(self, x: Tensor, g: Tensor) -> Tensor:
        m = self._m(x)
        noise = torch.randn(x.shape, dtype=x.dtype, device=x.device)
        sqrt_m = m ** 0.5 if isinstance(m, float) else m.sqrt()
        return x - self.step_size * m * g + math.sqrt(2.0 * self.step_size) * sqrt_m * noise

    def _log_q(self, x_to: Tensor, x_from: Tensor, g_from: Tensor) -> Tensor:
        """:math:`\\log q(x_{to} \\mid x_{from})` up to a constant shared by both directions."""
        m = self._m(x_from)
        r = x_to - x_from + self.step_size * m * g_from
        return -(r.pow(2) / m).sum() / (4.0 * self.step_size)

    def _fetch(self, params: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        x = params[self.site]
        if self._cache is None or self._cache[0] is not x:
            u, g = potential_and_grad(self.potential_fn, x, self.site)
            self._cache = (x, u, g)
        return self._cache

    def _nonfinite(self, what: str) -> FloatingPointError:
        stage = "warm-up" if self._t < self._warmup_steps else "sampling"
        k = self._t if self._t < self._warmup_steps else self._t - self._warmup_steps
        return FloatingPointError(
            f"{self.name}: the {what} became non-finite at {stage} iteration {k} "
            f"(step_size={self.step_size:.3g}); likely cause: {_HINT}")

    def _record(self, accept_prob: float, accepted: bool, u: Tensor, step_used: float) -> None:
        self._t += 1
        if self._t > self._warmup_steps:
            n = self._t - self._warmup_steps
            self._accept_cnt += int(accepted)
        else:
            n = self._t
        self._mean_accept_prob += (accept_prob - self._mean_accept_prob) / n
        self.last_stats = {"accept_prob": accept_prob, "step_size": step_used,
                           "potential_energy": float(u), "diverging": False}

    # -- checkpointing ---------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable adaptation state (the position is stored by the caller)."""
        return {"step_size": self.step_size, "t": self._t, "warmup_steps": self._warmup_steps,
                "accept_cnt": self._accept_cnt, "mean_accept_prob": self._mean_accept_prob}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state` after ``setup`` (continues the run exactly)."""
        self.step_size = float(state["step_size"])
        self._t = int(state["t"])
        self._warmup_steps = int(state["warmup_steps"])
        self._accept_cnt = int(state["accept_cnt"])
        self._mean_accept_prob = float(state["mean_accept_prob"])


class ULA(_LangevinKernel):
    r"""Unadjusted Langevin algorithm with a fixed step (biased by :math:`O(\delta)`).

    Parameters
    ----------
    potential_fn
        :math:`U` as a function of ``{"x": x}`` returning a scalar tensor.
    step_size
        :math:`\delta` (reference with patchNR on CT: :data:`ULA_REFERENCE_STEP` = 2e-7 with
        :math:`\lambda = 6000`).
    preconditioner
        Fixed scalar or diagonal :math:`M` (broadcastable to ``x``), default identity.
    """

    name = "ULA"

    def sample(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        x, u, g = self._fetch(params)
        x_new = self._propose(x, g)
        u_new, g_new = potential_and_grad(self.potential_fn, x_new, self.site)
        if not bool(torch.isfinite(u_new)):
            raise self._nonfinite("potential")
        if not bool(torch.isfinite(g_new).all()):
            raise self._nonfinite("gradient of the potential")
        self._cache = (x_new, u_new, g_new)
        self._record(1.0, True, u_new, self.step_size)
        return {self.site: x_new}


class MALA(_LangevinKernel):
    r"""Metropolis-adjusted Langevin algorithm with warm-up step-size adaptation.

    Parameters
    ----------
    potential_fn
        :math:`U` as a function of ``{"x": x}`` returning a scalar tensor.
    step_size
        Initial :math:`\delta` (the fixed one when ``adapt_step_size=False``).
    adapt_step_size
        Adapt :math:`\log\delta` by dual averaging during warm-up (Hoffman & Gelman 2014) toward
        ``target_accept_prob``; frozen (at the averaged iterate) after warm-up.
    target_accept_prob
        Default 0.574, optimal for MALA (Roberts & Rosenthal 1998).
    preconditioner
        Fixed scalar or diagonal :math:`M`, default identity.

    Notes
    -----
    A non-finite potential or gradient at a proposal is a rejection during adapted warm-up
    (the step then shrinks); anywhere else it raises ``FloatingPointError`` naming the
    iteration and the step size.
    """

    name = "MALA"

    def __init__(self, potential_fn: PotentialFn, step_size: float = 1e-3, *,
                 adapt_step_size: bool = True, target_accept_prob: float = MALA_TARGET_ACCEPT,
                 preconditioner: float | Tensor | None = None) -> None:
        super().__init__(potential_fn, step_size, preconditioner=preconditioner)
        self.adapt_step_size = bool(adapt_step_size)
        t = float(target_accept_prob)
        if not 0.0 < t < 1.0:
            raise ValueError(f"target_accept_prob: expected a number in (0, 1), got {target_accept_prob!r}")
        self.target_accept_prob = t
        self._da = DualAveraging(prox_center=math.log(10.0 * self._initial_step_size))

    def _reset(self) -> None:
        super()._reset()
        self._da = DualAveraging(prox_center=math.log(10.0 * self._initial_step_size))

    def sample(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        x, u, g = self._fetch(params)
        warmup = self._t < self._warmup_steps
        lenient = warmup and self.adapt_step_size
        step_used = self.step_size
        x_new = self._propose(x, g)
        u_new, g_new = potential_and_grad(self.potential_fn, x_new, self.site)
        finite = bool(torch.isfinite(u_new)) and bool(torch.isfinite(g_new).all())
        if finite:
            log_alpha = (u - u_new + self._log_q(x, x_new, g_new) - self._log_q(x_new, x, g)).item()
            if math.isnan(log_alpha):
                finite = False
        if not finite:
            if not lenient:
                raise self._nonfinite("potential" if not bool(torch.isfinite(u_new)) else
                                      "gradient of the potential")
            log_alpha = -math.inf
        accept_prob = math.exp(min(log_alpha, 0.0))
        rand = float(torch.rand((), dtype=torch.float64))
        accepted = rand < accept_prob
        if accepted:
            self._cache = (x_new, u_new, g_new)
            out, u_out = x_new, u_new
        else:
            out, u_out = x, u
            self._cache = (x, u, g)
        self._record(accept_prob, accepted, u_out, step_used)
        if warmup and self.adapt_step_size:
            self._da.step(self.target_accept_prob - accept_prob)
            log_step, log_step_avg = self._da.get_state()
            if self._t == self._warmup_steps:  # end of warm-up: freeze at the averaged iterate
                self.step_size = math.exp(log_step_avg)
            else:
                self.step_size = math.exp(log_step)
        return {self.site: out}

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state["dual_averaging"] = {"x_avg": float(self._da._x_avg), "g_avg": float(self._da._g_avg),
                                   "t": int(self._da._t), "prox_center": float(self._da.prox_center),
                                   "x_t": float(getattr(self._da, "_x_t", 0.0))}
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        da = state["dual_averaging"]
        self._da.prox_center = da["prox_center"]
        self._da._x_avg, self._da._g_avg, self._da._t = da["x_avg"], da["g_avg"], da["t"]
        self._da._x_t = da["x_t"]
