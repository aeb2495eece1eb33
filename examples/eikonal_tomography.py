#!/usr/bin/env python
r"""Cross-well traveltime tomography with a velocity Glow prior: Tikhonov vs latent MAP vs NUTS.

Usage::

    python examples/eikonal_tomography.py            # 4 held-out models (~25-35 CPU minutes)
    python examples/eikonal_tomography.py --quick    # 1 model, short chains (~4-6 minutes)
    python examples/eikonal_tomography.py --out DIR  # figure + JSON into DIR

Setting
-------
A 1 km × 1 km medium on a 32×32 grid (``h = 1/31`` km), velocity 1.5–4.5 km/s
(:mod:`bayesinv.data.velocity`, held-out models ``velocity_models(1, seed=10_000 + i)``).
Cross-well geometry: 12 sources on the left well (column 0) and 12 receivers on the right well
(column 31), both at rows 8..23 — the top and bottom 8 rows lie outside the aperture. Data:
first-arrival traveltimes :math:`T = A(v)` (:class:`~bayesinv.operators.eikonal.Eikonal`,
factored fast sweeping, adjoint-state gradients) plus white noise, :math:`\sigma = 5` ms.
Everything is inverted in unit scale :math:`u = (v - 1.5)/3`.

Methods
-------
(a) Tikhonov: :math:`\min_u \tfrac{1}{2\sigma^2}\|A(u) - y\|^2 + \tfrac w2\|\nabla u\|^2`
    (smoothness; :func:`bayesinv.baselines.tikhonov`, L-BFGS from the constant 3 km/s), ``w``
    chosen by grid search on a separate validation model (seed 20_000), as in seed paper 000's
    traveltime baseline.
(b) Latent MAP (Asim et al. 2020) with the velocity Glow ``glow_velocity32``:
    :math:`\min_z \tfrac{1}{2\sigma^2}\|A(G(z)) - y\|^2 + \tfrac12\|z\|^2` (L-BFGS).
(c) Latent MAP + Gaussianization layer (Li et al. 2023): :math:`x = G(g(z))`.
(d) NUTS on the latent (Hoffman & Gelman 2014; Pyro) in **Laplace-whitened** coordinates
    :math:`z = \hat z + L^{-\top} w` (:class:`WhitenedLatentPrior`; :math:`LL^\top` the
    Gauss-Newton Hessian of (e) — the same posterior, NUTS with mass matrix ``H``), 2 chains
    started at the MAP (b), warm-up with step-size adaptation only, max tree depth 3, 75 draws
    per chain (sized for a CPU: each gradient is one eikonal solve plus an adjoint sparse
    solve); posterior mean and per-pixel std of the velocity (unit scale).

Metrics: PSNR on unit-scale velocity (estimates clipped to [0, 1], data range 1). Ray coverage:
the **ray density in slowness** :math:`r_j = \sum_{s,r} \partial T_{sr}/\partial s_j` at the NUTS
posterior mean (:func:`ray_density`; the total first-arrival ray length through cell ``j``, one
adjoint solve), zero where no ray goes. "The std is larger where rays do not reach" is measured
as (i) the ratio of the mean posterior std over the 25 % of pixels with the lowest :math:`r_j`
to that over the 25 % with the highest, (ii) the ratio between "unreached" pixels
(:math:`r_j < 0.05\,h`) and the rest, (iii) the Spearman correlation of :math:`r_j` and the std
(negative if the std grows where fewer rays pass), and (iv) the ratio between the rows outside
the aperture and the centre block inside it — for NUTS and for the Laplace draws, each for the
raw std and for the std **normalised by the prior std** of the same pixel (512 flow draws): the
raw std also carries the prior's own variance pattern (the Glow varies most around the
mid-depth interfaces), the normalised one isolates what the data removed. The previous
version's coverage, the velocity sensitivity :math:`|\partial T/\partial u_j| = 3\,r_j/v_j^2`
(small wherever the velocity is high), is kept under ``velocity_sensitivity`` for comparison.

(e) For reference, a Laplace approximation at the latent MAP (Gauss–Newton Hessian
:math:`J^\top J/\sigma^2 + I` of the latent potential, 144 adjoint solves; 256 draws pushed
through the flow): a cheap, globally spread UQ that the short NUTS chains can be compared
with. Even whitened, NUTS adapts steps of only ~0.05 (in units of the Laplace std; the
upwind-eikonal potential is only piecewise smooth), so 2 x 75 draws from the MAP explore a
local neighbourhood (lag-1 latent autocorrelation recorded); the Laplace draws are independent
but Gaussian in the latent. Both stds are reported; neither is a converged posterior std.

Writes ``eikonal_tomography.png`` and ``eikonal_inversion.json`` into ``--out`` (default
``benchmarks/results/``). ``main(quick)`` returns the same dict.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bayesinv.baselines import tikhonov
from bayesinv.data.velocity import VMAX, VMIN, from_unit, to_unit, velocity_models
from bayesinv.flows.io import load_flow
from bayesinv.gaussianize.layer import GaussianizationLayer
from bayesinv.infer.map import map_estimate
from bayesinv.infer.mcmc import sample_posterior
from bayesinv.metrics import psnr
from bayesinv.operators.base import Operator
from bayesinv.operators.eikonal import Eikonal
from bayesinv.priors.base import LatentPrior, standard_normal_log_prob
from bayesinv.priors.flow import FlowPrior
from bayesinv.problem import InverseProblem

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "bayesinv" / "data" / "weights" / "glow_velocity32.safetensors"
DEFAULT_OUT = ROOT / "benchmarks" / "results"
N = 32
SPACING = 1.0 / (N - 1)  # km
SIGMA = 0.005  # s, traveltime noise (~1.5 % of a 0.33 s cross-well time)
APERTURE = (8, 23)  # rows of the sources and receivers
N_WELL = 12
TEST_SEED0 = 10_000
VAL_SEED = 20_000
NOISE_SEED0 = 777
V_FLOOR = 0.5  # km/s: velocities fed to the solver are clamped below (only off-prior iterates)
NUTS_SAMPLES_FULL = 75  # kept NUTS draws per chain in the full run (~190 s per model)


class UnitVelocityEikonal(Operator):
    r"""Traveltimes of a unit-scale velocity: :math:`u \mapsto \kappa\,T(\max(v_{min} + (v_{max} -
    v_{min})u,\ v_{floor}))`.

    ``scale`` :math:`\kappa` (default 1) whitens the data for solvers whose objective has no
    noise level (:math:`\kappa = 1/\sigma`).
    """

    def __init__(self, eikonal: Eikonal, scale: float = 1.0) -> None:
        super().__init__(eikonal.in_shape, eikonal.out_shape)
        self.eikonal = eikonal
        self.scale = float(scale)

    def velocity(self, u: Tensor) -> Tensor:
        return from_unit(u, VMIN, VMAX).clamp_min(V_FLOOR)

    def _forward(self, u: Tensor) -> Tensor:
        t = self.eikonal(self.velocity(u))
        return t * self.scale if self.scale != 1.0 else t

    def _settings(self) -> dict[str, object]:
        return {"eikonal": self.eikonal.describe(), "scale": self.scale,
                "unit": f"v = {VMIN} + {VMAX - VMIN} u (km/s), clamped at {V_FLOOR}"}


def make_eikonal() -> Eikonal:
    rows = np.round(np.linspace(APERTURE[0], APERTURE[1], N_WELL)).astype(np.int64)
    src = np.stack([rows, np.zeros_like(rows)], 1)
    rec = np.stack([rows, np.full_like(rows, N - 1)], 1)
    return Eikonal((1, N, N), SPACING, sources=src, receivers=rec, tol=1e-3, max_sweeps=50)


def settings(quick: bool) -> dict:
    return {
        "n_models": 1 if quick else 4,
        "tikhonov_grid": [10.0, 100.0, 1000.0] if quick else [3.0, 10.0, 30.0, 100.0, 300.0, 1000.0],
        "tikhonov_iters": 40 if quick else 80,
        "map_steps": 4 if quick else 8,  # L-BFGS outer steps, <= 20 iterations each
        "n_prior_draws": 512,
        "n_laplace_draws": 256,
        # NUTS in Laplace-whitened latents (WhitenedLatentPrior: mass matrix = Gauss-Newton
        # Hessian at the MAP), so step-size adaptation only; (the plain chains needed steps ~0.01,
        # and a diagonal mass matrix estimated in a ~20-draw window was 30x off)
        "nuts": {"num_chains": 2, "warmup_steps": 15 if quick else 30,
                 "num_samples": 25 if quick else NUTS_SAMPLES_FULL, "max_tree_depth": 3,
                 "step_size": 0.5, "adapt_mass_matrix": False},
    }


def coverage_map(op: UnitVelocityEikonal, u: Tensor) -> Tensor:
    r"""Velocity sensitivity :math:`\sum_{s,r}|\partial T_{sr}/\partial u_j|` at ``u`` ``(1, 1, H, W)``.

    Since :math:`\partial T/\partial v_j = -\ell_j/v_j^2` (:math:`\ell_j` the ray length in cell
    ``j``), this is small wherever the velocity is high, reached or not: it is kept for reference
    only; the ray coverage proper is :func:`ray_density`.
    """
    x = u.detach().clone().requires_grad_(True)
    op(x).sum().backward()
    return x.grad.abs()[0, 0]


def slowness_eikonal(eik: Eikonal) -> Eikonal:
    """The same acquisition and solver settings as ``eik``, parametrised by the slowness."""
    return Eikonal(eik.in_shape, eik.spacing, sources=eik.sources.cpu().numpy(),
                   receivers=eik.receivers.cpu().numpy(), tol=eik.tol, max_sweeps=eik.max_sweeps,
                   sweeps=eik.sweeps, parametrization="slowness")


def ray_density(eik_s: Eikonal, v: Tensor) -> Tensor:
    r"""Ray coverage in slowness: :math:`r_j = \sum_{s,r}\partial T_{sr}/\partial s_j` (km).

    By Fermat's principle :math:`T_{sr} = \int_{\text{ray}} s\,d\ell`, so
    :math:`\partial T_{sr}/\partial s_j` is the length of the ray ``s -> r`` inside cell ``j``
    and :math:`r_j` the total ray length through the cell — the hit count weighted by length
    (the "ray density" of tomography, e.g. Rawlinson & Sambridge 2003, *Adv. Geophys.* 46),
    independent of the size of the local velocity; zero where no first-arrival ray goes. One
    adjoint-state solve of the slowness-parametrised :class:`Eikonal` (``eik_s``) at the
    velocity ``v`` ``(1, 1, H, W)`` (km/s). Homogeneity of ``T`` in ``s`` gives the check
    :math:`\sum_j s_j r_j = \sum_{s,r} T_{sr}`. Returns ``(H, W)``.
    """
    s = (1.0 / v.detach()).clone().requires_grad_(True)
    eik_s(s).sum().backward()
    return s.grad[0, 0].clamp_min(0.0)


class WhitenedLatentPrior(LatentPrior):
    r"""The flow prior in Laplace-whitened latents :math:`z = \hat z + L^{-\top} w`.

    ``L`` is the Cholesky factor of the Gauss-Newton Hessian :math:`H = LL^\top` at the latent
    MAP :math:`\hat z` (:func:`laplace_draws`). A linear change of variables with a constant
    Jacobian, so the posterior of :math:`z(w)` is exactly the latent posterior, while in ``w`` it is
    :math:`\approx\mathcal N(0, I)`: NUTS on ``w`` equals NUTS on ``z`` with the fixed mass matrix
    ``H`` (a Riemannian metric frozen at the mode; Girolami & Calderhead 2011), which removes the
    ~100:1 spread of curvatures that made the plain chains crawl (step ~0.01). Latent prior:
    :math:`\log p(w) = \log\mathcal N(z(w); 0, I) + \text{const}`.
    """

    def __init__(self, base: LatentPrior, z_map: Tensor, chol: Tensor) -> None:
        super().__init__(base.image_shape, base.latent_shape)
        self.base = base
        d = z_map.numel()
        eye = torch.eye(d, dtype=torch.float64)
        m = torch.linalg.solve_triangular(chol.T.double(), eye, upper=True)  # L^{-T}
        self.register_buffer("z_map", z_map.detach().reshape(d).clone())
        self.register_buffer("m", m.to(z_map.dtype))
        self.register_buffer("chol", chol.to(z_map.dtype))

    def latent(self, w: Tensor) -> Tensor:
        """:math:`z(w)` for ``(..., *latent_shape)``."""
        lead = w.shape[:w.dim() - len(self.latent_shape)]
        z = self.z_map + w.reshape(*lead, -1) @ self.m.T
        return z.reshape(*lead, *self.latent_shape)

    def generate(self, w: Tensor) -> Tensor:
        return self.base.generate(self.latent(w))

    def latent_log_prob(self, w: Tensor) -> Tensor:
        return standard_normal_log_prob(self.latent(w), len(self.latent_shape))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, log_det = self.base.encode(x)
        lead = z.shape[:z.dim() - len(self.latent_shape)]
        w = (z.reshape(*lead, -1) - self.z_map) @ self.chol  # L^T (z - z_map)
        return w.reshape(z.shape), log_det + self.chol.diagonal().log().sum()

    def log_prob(self, x: Tensor) -> Tensor:
        return self.base.log_prob(x)  # the same prior on x


def laplace_draws(problem: InverseProblem, z_map: Tensor, n: int,
                  seed: int) -> tuple[Tensor, int, Tensor]:
    r"""Laplace approximation at the latent MAP, pushed through the flow (MacKay 1992).

    With :math:`J = \partial A(G(z))/\partial z` at :math:`\hat z` (one adjoint solve per datum),
    :math:`z \sim \mathcal N(\hat z, H^{-1})`, :math:`H = J^\top J/\sigma^2 + I` (Gauss-Newton
    Hessian of the latent potential), and the image draws are :math:`G(z)` (float64 algebra).
    Returns the draws ``(n, 1, H, W)``, the number of eigenvalues of ``H`` above 2 (the latent
    directions the data constrain more than the prior does) and the Cholesky factor ``L`` of
    ``H = L L^T`` (float64), which :class:`WhitenedLatentPrior` uses to precondition NUTS.
    """
    z = z_map.detach().reshape(1, -1).clone().requires_grad_(True)
    t = problem.operator(problem.prior.generate(z)).flatten()
    jac = torch.zeros(t.numel(), z.numel(), dtype=torch.float64)
    for k in range(t.numel()):
        e = torch.zeros_like(t)
        e[k] = 1.0
        jac[k] = torch.autograd.grad(t, z, e, retain_graph=True)[0][0].double()
    sigma = problem.noise.sigma
    hess = jac.T @ jac / sigma**2 + torch.eye(z.numel(), dtype=torch.float64)
    chol = torch.linalg.cholesky(hess)
    xi = torch.randn(z.numel(), n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    dz = torch.linalg.solve_triangular(chol.T, xi, upper=True).T
    with torch.no_grad():
        x = problem.prior.generate((z.detach().double() + dz).to(z.dtype))
    return x, int((torch.linalg.eigvalsh(hess) > 2.0).sum()), chol


# "unreached": total ray length through the cell below 5 % of one spacing (one straight ray
# crossing a cell adds ~h). Not relative to the median density: over 40 % of the cells carry no
# ray at all, so the median is ~0.01 h and would be 0 with a little less coverage.
UNREACHED_FRACTION = 0.05


def std_ratios(std: Tensor, rays: Tensor, sens: Tensor) -> dict:
    r"""Is the posterior std larger where the rays do not reach?

    ``rays`` is the ray density :math:`r_j` (:func:`ray_density`), ``sens`` the old velocity
    sensitivity (:func:`coverage_map`). Reported on the ray density:

    * quantiles: mean std over the 25 % of pixels with the lowest :math:`r_j` over that of the
      25 % with the highest;
    * threshold: "unreached" pixels :math:`r_j < 0.05\,h` (less than 5 % of one ray crossing)
      vs the rest;
    * the Spearman rank correlation of :math:`r_j` and the std (negative if the std grows where
      fewer rays pass);

    plus the rows outside the aperture vs the centre block inside it, and, labelled
    ``velocity_sensitivity``, the quantile ratio and Spearman on :math:`|\partial T/\partial u|`.
    """
    s, c = std.flatten(), rays.flatten()
    lo, hi = torch.quantile(c, 0.25), torch.quantile(c, 0.75)
    low = c <= lo
    high = c >= hi
    unreached = c < UNREACHED_FRACTION * SPACING
    rows = torch.arange(N)
    outside = (rows < APERTURE[0]) | (rows > APERTURE[1])
    inside = ~outside
    centre = std[inside][:, 4:N - 4]
    out = {"std_low_ray_density": float(s[low].mean()), "std_high_ray_density": float(s[high].mean()),
           "ratio_low_vs_high_ray_density": float(s[low].mean() / s[high].mean()),
           "n_low_ray_density": int(low.sum()),
           "std_unreached": float(s[unreached].mean()) if bool(unreached.any()) else float("nan"),
           "std_reached": float(s[~unreached].mean()),
           "ratio_unreached_vs_reached": (float(s[unreached].mean() / s[~unreached].mean())
                                          if bool(unreached.any()) else float("nan")),
           "n_unreached": int(unreached.sum()),
           "ray_density_std_spearman": _spearman(c, s),
           "std_outside_aperture_rows": float(std[outside].mean()),
           "std_top_rows": float(std[:APERTURE[0]].mean()),
           "std_bottom_rows": float(std[APERTURE[1] + 1:].mean()),
           "std_centre": float(centre.mean()),
           "ratio_outside_rows_vs_centre": float(std[outside].mean() / centre.mean()),
           "ratio_top_rows_vs_centre": float(std[:APERTURE[0]].mean() / centre.mean())}
    v = sens.flatten()
    vlo, vhi = torch.quantile(v, 0.25), torch.quantile(v, 0.75)
    out["velocity_sensitivity"] = {
        "std_low_coverage": float(s[v <= vlo].mean()), "std_high_coverage": float(s[v >= vhi].mean()),
        "ratio_low_vs_high_coverage": float(s[v <= vlo].mean() / s[v >= vhi].mean()),
        "coverage_std_spearman": _spearman(v, s)}
    return out


def _spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation (ties, e.g. the many zero ray densities, get average ranks)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy())[0])


def _psnr(est: Tensor, truth: Tensor) -> float:
    return psnr(est.clamp(0, 1).reshape(truth.shape), truth)


def run_tikhonov(op_w: UnitVelocityEikonal, y: Tensor, w: float, iters: int) -> Tensor:
    x0 = torch.full((1, 1, N, N), float(to_unit(torch.tensor(3.0))))
    return tikhonov(op_w, y / SIGMA, w, kind="gradient", x0=x0, solver="lbfgs", max_iter=iters,
                    tol=1e-7)


def main(quick: bool = False, out: str | os.PathLike | None = None, *,
         weights: str | os.PathLike = WEIGHTS, progress: bool | None = False) -> dict:
    """Run the comparison; returns (and writes) the results dict."""
    cfg = settings(quick)
    out_dir = Path(out) if out is not None else DEFAULT_OUT
    out_dir.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    torch.manual_seed(0)
    eik = make_eikonal()
    op = UnitVelocityEikonal(eik)
    op_w = UnitVelocityEikonal(eik, scale=1.0 / SIGMA)
    eik_s = slowness_eikonal(eik)
    flow = load_flow(weights)
    flow.eval()
    for p in flow.parameters():
        p.requires_grad_(False)
    prior = FlowPrior(flow)
    problem = InverseProblem(op, prior, noise=SIGMA)
    with torch.no_grad():  # prior pixel std, to separate the data's effect from the prior's
        prior_std = prior.generate(torch.randn((cfg["n_prior_draws"], *prior.latent_shape),
                                               generator=torch.Generator().manual_seed(1))).std(0)[0]

    def data(seed: int, k: int) -> tuple[Tensor, Tensor]:
        u = to_unit(velocity_models(1, N, seed=seed))
        with torch.no_grad():
            y = problem.simulate(u, seed=NOISE_SEED0 + k)
        return u, y

    # (a) Tikhonov weight on a separate validation model
    t0 = time.perf_counter()
    u_val, y_val = data(VAL_SEED, 99)
    val_scores = {}
    for w in cfg["tikhonov_grid"]:
        val_scores[w] = _psnr(run_tikhonov(op_w, y_val, w, cfg["tikhonov_iters"]), u_val[0])
    w_best = max(val_scores, key=val_scores.get)
    t_val = time.perf_counter() - t0

    models = []
    figs = []
    for i in range(cfg["n_models"]):
        seed = TEST_SEED0 + i
        u, y = data(seed, i)
        rec: dict = {"seed": seed}
        t0 = time.perf_counter()
        x_tik = run_tikhonov(op_w, y, w_best, cfg["tikhonov_iters"])
        rec["tikhonov"] = {"psnr": _psnr(x_tik, u[0]), "time_s": time.perf_counter() - t0}

        t0 = time.perf_counter()
        p_map = map_estimate(problem, y, method="latent", steps=cfg["map_steps"], seed=i,
                             progress=progress)
        x_map = p_map.point_estimate
        rec["map"] = {"psnr": _psnr(x_map, u[0]), "time_s": time.perf_counter() - t0,
                      "objective": p_map.settings["final_objective"],
                      "latent_norm": float(p_map.latent_samples.norm())}

        t0 = time.perf_counter()
        layer = GaussianizationLayer(prior.latent_shape)
        p_g = map_estimate(problem, y, method="latent", steps=cfg["map_steps"], seed=i,
                           gaussianize=layer, progress=progress)
        x_g = p_g.point_estimate
        rec["map_gaussianized"] = {"psnr": _psnr(x_g, u[0]), "time_s": time.perf_counter() - t0,
                                   "objective": p_g.settings["final_objective"],
                                   "latent_norm": float(p_g.latent_samples.norm())}

        t0 = time.perf_counter()
        lap, n_constrained, chol = laplace_draws(problem, p_map.latent_samples[0, 0],
                                                 cfg["n_laplace_draws"], seed)
        lap_std = lap.std(0)[0]
        t_lap = time.perf_counter() - t0

        t0 = time.perf_counter()
        nc = cfg["nuts"]["num_chains"]
        wprior = WhitenedLatentPrior(prior, p_map.latent_samples[0, 0], chol)
        wproblem = InverseProblem(op, wprior, noise=SIGMA)
        # every chain at the MAP (w = 0): started at Laplace draws instead, the chains (step ~0.02)
        # stayed near their start and the mean lost 3 dB (quick run, model 10_000)
        w_init = torch.zeros((nc, *prior.latent_shape))
        post = sample_posterior(wproblem, y, kernel="nuts", init=w_init, seed=i,
                                progress=progress, truth=u[0], **cfg["nuts"])
        draws = post.samples.flatten(0, 1)  # (chain*draw, 1, H, W)
        mean = draws.mean(0)
        std = draws.std(0)
        t_nuts = time.perf_counter() - t0
        sens = coverage_map(op, mean[None])  # old: velocity sensitivity |dT/du|
        rays = ray_density(eik_s, op.velocity(mean[None]))  # ray coverage in slowness
        stats = post.sample_stats
        rec["nuts"] = {"psnr_mean": _psnr(mean, u[0]), "time_s": t_nuts,
                       "mean_std": float(std.mean()),
                       "accept_prob": float(stats["accept_prob"].float().mean()),
                       "divergences": int(stats["diverging"].sum()),
                       "mean_leapfrog_steps": float(stats["num_steps"].float().mean()),
                       "step_size": [float(s) for s in post.settings["final_step_size"]],
                       "error_std_corr": _corr((mean - u[0]).abs(), std),
                       "latent_lag1_autocorr": _lag1(post.latent_samples),
                       **std_ratios(std[0], rays, sens),
                       "normalised": std_ratios(std[0] / prior_std, rays, sens)}
        rec["laplace"] = {"psnr_mean": _psnr(lap.mean(0), u[0]), "time_s": t_lap,
                          "n_constrained_latent_directions": n_constrained,
                          "mean_std": float(lap_std.mean()), **std_ratios(lap_std, rays, sens),
                          "normalised": std_ratios(lap_std / prior_std, rays, sens)}
        rec["prior_std"] = std_ratios(prior_std, rays, sens)
        rec["ray_density"] = {"sum_s_times_density_over_sum_T": float(
            ((1.0 / op.velocity(mean[None])[0, 0]) * rays).sum() / op(mean[None]).sum()),
            "median_km": float(rays.median()), "max_km": float(rays.max()),
            "fraction_zero": float((rays == 0).float().mean())}
        models.append(rec)
        figs.append((u[0, 0], x_tik[0, 0], x_map[0], x_g[0], mean[0], std[0], std[0] / prior_std,
                     lap_std, rays, sens))
        nu, la = rec["nuts"], rec["laplace"]
        print(f"model {seed}: PSNR tikhonov {rec['tikhonov']['psnr']:.2f}  map {rec['map']['psnr']:.2f}"
              f"  map+G {rec['map_gaussianized']['psnr']:.2f}  nuts mean {nu['psnr_mean']:.2f};"
              f" std ratio low/high ray density: nuts {nu['ratio_low_vs_high_ray_density']:.2f},"
              f" laplace {la['ratio_low_vs_high_ray_density']:.2f}; unreached/reached: nuts"
              f" {nu['ratio_unreached_vs_reached']:.2f}, laplace {la['ratio_unreached_vs_reached']:.2f};"
              f" spearman nuts {nu['ray_density_std_spearman']:.2f},"
              f" laplace {la['ray_density_std_spearman']:.2f}", flush=True)

    def avg(key: str, sub: str = "psnr", norm: bool = False) -> float:
        return float(np.mean([(m[key]["normalised"] if norm else m[key])[sub] for m in models]))

    def summary(sub: str) -> dict[str, float]:
        out = {f"{k}{'_normalised' if n else ''}": avg(k, sub, n)
               for k in ("nuts", "laplace") for n in (False, True)}
        out["prior_std"] = avg("prior_std", sub)
        return out

    def vsens(key: str, sub: str, norm: bool = False) -> float:
        return float(np.mean([(m[key]["normalised"] if norm else m[key])["velocity_sensitivity"][sub]
                              for m in models]))

    result = {
        "example": "examples/eikonal_tomography.py", "quick": quick,
        "setting": {"grid": [N, N], "spacing_km": SPACING, "velocity_km_s": [VMIN, VMAX],
                    "sigma_s": SIGMA, "geometry": "crosswell", "n_sources": N_WELL,
                    "n_receivers": N_WELL, "aperture_rows": list(APERTURE),
                    "eikonal_tol": eik.tol, "prior": str(Path(weights).name),
                    "psnr": "unit-scale velocity u = (v - 1.5)/3, clipped to [0, 1], data range 1"},
        "settings": cfg,
        "tikhonov_validation": {"seed": VAL_SEED, "scores": {str(k): v for k, v in val_scores.items()},
                                "weight": w_best, "time_s": t_val},
        "models": models,
        "mean_psnr": {"tikhonov": avg("tikhonov"), "map": avg("map"),
                      "map_gaussianized": avg("map_gaussianized"),
                      "nuts_mean": avg("nuts", "psnr_mean")},
        "std_vs_ray_coverage": {
            "coverage": "ray density r_j = sum_{s,r} dT_sr/ds_j (ray length per cell, km), at the "
                        "NUTS posterior mean",
            "criterion_judged_on": "both reported (means over the models): nuts = "
                                   "Laplace-preconditioned NUTS from the MAP, laplace = "
                                   "Gauss-Newton Laplace at the MAP",
            "mean_ratio_low_vs_high_ray_density": summary("ratio_low_vs_high_ray_density"),
            "mean_ratio_unreached_vs_reached": summary("ratio_unreached_vs_reached"),
            "unreached_definition": f"r_j < {UNREACHED_FRACTION} * spacing (km)",
            "mean_ray_density_std_spearman": summary("ray_density_std_spearman"),
            "mean_ratio_outside_rows_vs_centre": summary("ratio_outside_rows_vs_centre"),
            "mean_ratio_top_rows_vs_centre": summary("ratio_top_rows_vs_centre"),
        },
        "velocity_sensitivity_old": {
            "coverage": "|dT/du| (u = unit-scale velocity), the coverage map of the previous "
                        "version: small where v is high, reached or not",
            "mean_ratio_low_vs_high_coverage": {
                "nuts": vsens("nuts", "ratio_low_vs_high_coverage"),
                "nuts_normalised": vsens("nuts", "ratio_low_vs_high_coverage", True),
                "laplace": vsens("laplace", "ratio_low_vs_high_coverage"),
                "laplace_normalised": vsens("laplace", "ratio_low_vs_high_coverage", True)},
            "mean_coverage_std_spearman": {"nuts": vsens("nuts", "coverage_std_spearman"),
                                           "laplace": vsens("laplace", "coverage_std_spearman")},
        },
        "total_time_s": time.perf_counter() - t_all,
        "platform": {"python": platform.python_version(), "torch": torch.__version__,
                     "threads": torch.get_num_threads()},
    }
    result["figure"] = str(_figure(figs, out_dir / "eikonal_tomography.png"))
    (out_dir / "eikonal_inversion.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _lag1(w: Tensor) -> float:
    """Lag-1 autocorrelation of the latent draws ``(chain, draw, D)``, averaged over chains and D."""
    w = w.double().flatten(2)
    d = w - w.mean(1, keepdim=True)
    num = (d[:, 1:] * d[:, :-1]).sum(1)
    den = (d * d).sum(1).clamp_min(1e-300)
    return float((num / den).mean())


def _corr(a: Tensor, b: Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    if float(a.std()) == 0 or float(b.std()) == 0:
        return 0.0
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def _figure(rows: list, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = ["truth", "Tikhonov", "latent MAP", "MAP + G", "NUTS mean", "NUTS std",
              "NUTS std / prior std", "Laplace std", "ray density (slowness)",
              "old: |dT/du| (velocity)"]
    fig, axes = plt.subplots(len(rows), 10, figsize=(23, 2.6 * len(rows)), squeeze=False)
    for r, panels in enumerate(rows):
        for k, (ax, img) in enumerate(zip(axes[r], panels, strict=True)):
            a = img.detach().cpu().numpy()
            if k < 5:
                im = ax.imshow(from_unit(np.clip(a, 0, 1)), vmin=VMIN, vmax=VMAX, cmap="viridis")
            elif k in (5, 7):
                im = ax.imshow(a * (VMAX - VMIN), cmap="magma")
            elif k == 6:
                im = ax.imshow(a, cmap="magma")
            elif k == 8:  # ray length per cell in units of the spacing, log scale
                im = ax.imshow(np.log10(a / SPACING + 1e-3), cmap="gray", vmin=-3)
            else:
                im = ax.imshow(np.log10(a + 1e-12 * a.max() + 1e-30), cmap="gray")
            ax.set_title(titles[k] if r == 0 else "", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= 4:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
            if k == 0:
                rows_src = np.round(np.linspace(APERTURE[0], APERTURE[1], N_WELL))
                ax.plot(np.zeros_like(rows_src), rows_src, "r>", ms=3)
                ax.plot(np.full_like(rows_src, N - 1), rows_src, "wv", ms=3)
    fig.suptitle("cross-well tomography (km/s; std in km/s; std ratio unitless; ray density "
                 "log10(ray length per cell / h + 1e-3); old coverage log10 |dT/du|)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Eikonal cross-well tomography with a Glow prior")
    p.add_argument("--quick", action="store_true", help="1 model, short chains")
    p.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results)")
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    r = main(a.quick, a.out)
    print(json.dumps(r["mean_psnr"], indent=1))
    c = r["std_vs_ray_coverage"]
    print("std ratio low/high ray density:", json.dumps(c["mean_ratio_low_vs_high_ray_density"]))
    print("std ratio unreached/reached:", json.dumps(c["mean_ratio_unreached_vs_reached"]))
    print("spearman(ray density, std):", json.dumps(c["mean_ray_density_std_spearman"]))
    print(f"total {r['total_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
