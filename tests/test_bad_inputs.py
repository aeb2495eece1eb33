"""Table-driven sweep of bad inputs over every public entry point.

Each row is ``(callable, kwargs, exception, regex)``: calling ``callable(**kwargs)`` must raise
``exception`` (``ValueError``/``TypeError``, or ``FloatingPointError`` for numerical blow-ups)
with a message matching ``regex``, which names the offending argument. Rows for inputs that
are currently accepted silently, or fail with a deep traceback instead of a named error, are
``xfail(strict=True)`` with the file and line in the reason, so they stay visible and turn into
failures (to be un-marked) once fixed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bayesinv import data as bdata
from bayesinv import metrics
from bayesinv.data import pretrained
from bayesinv.diagnostics import maps as dmaps
from bayesinv.diagnostics.arviz_io import load_posterior, save_posterior
from bayesinv.diagnostics.report import uq_report
from bayesinv.flows.glow import Glow
from bayesinv.flows.io import load_flow, save_flow
from bayesinv.flows.patch import PatchFlow
from bayesinv.flows.train import load_checkpoint, train_flow
from bayesinv.infer.exact import exact_gaussian_posterior
from bayesinv.infer.map import map_estimate
from bayesinv.infer.mcmc import sample_posterior
from bayesinv.infer.posterior import Posterior
from bayesinv.operators import (
    MRI,
    Blur,
    CompressedSensing,
    Eikonal,
    Identity,
    Inpainting,
    MatrixOperator,
    Radon,
    SuperResolution,
    cartesian_mask,
    gaussian_kernel,
    random_gaussian_matrix,
)
from bayesinv.priors import FlowPrior, GaussianPrior
from bayesinv.priors.patchnr import PatchNRPrior
from bayesinv.priors.wpp import WassersteinPatchPrior
from bayesinv.problem import GaussianNoise, InverseProblem
from bayesinv.testing import linear_gaussian_problem

S = (1, 4, 4)
NAN, INF = float("nan"), float("inf")
CUDA = "cuda" if not torch.cuda.is_available() else "cuda:999"  # a device that is not there
CASE = linear_gaussian_problem(S, seed=0)
P, Y = CASE.problem, CASE.y
X = torch.full((1, *S), 0.5, dtype=torch.float64)
OPS = {
    "Identity": Identity(S),
    "Inpainting": Inpainting(S, fraction=0.5),
    "CompressedSensing": CompressedSensing(S, m=6),
    "Blur": Blur(S, kernel="gaussian", width=1.0),
    "SuperResolution": SuperResolution(S, factor=2),
    "MRI": MRI(S, acceleration=2.0),
    "Radon": Radon(S, n_angles=4),
    "MatrixOperator": MatrixOperator(random_gaussian_matrix(6, 16), S),
}
GAUSS = GaussianPrior.stationary(S, std=0.3, length_scale=1.0)
FLOW = Glow(S, levels=1, steps=1, hidden=8)
FLOWPRIOR = FlowPrior(FLOW)
PATCHFLOW = PatchFlow(patch_size=2, n_blocks=1, hidden=8)
PATCHNR = PatchNRPrior(PATCHFLOW, S, patch_size=2, n_patches=None)
POST = Posterior(samples=torch.rand(2, 5, *S), method="test", kind="markov")
GEN = torch.Generator().manual_seed(0)
PATCHES = torch.rand(32, 4, generator=GEN)
TRAINFLOW = PatchFlow(patch_size=2, n_blocks=1, hidden=8)  # (PATCHNR froze PATCHFLOW's parameters)


def train_fresh(**kw):
    """train_flow on a fresh flow (for rows that may take an optimisation step)."""
    return train_flow(PatchFlow(patch_size=2, n_blocks=1, hidden=8), **kw)


def nan_like(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = NAN
    return t


def with_noise(sigma):
    return InverseProblem(P.operator, P.prior, sigma)


def xfail(*row, reason: str):
    return pytest.param(*row, marks=pytest.mark.xfail(strict=True, reason=reason))


OBJ = np.array([0.5] * 16, dtype=object).reshape(1, *S)
QUICK_MCMC = dict(kernel="mala", num_chains=1, num_samples=3, warmup_steps=2, init="zeros", progress=False)

ROWS = [
    # -- InverseProblem construction ------------------------------------------------------------
    (InverseProblem, dict(operator=object(), prior=GAUSS, noise=0.1), TypeError, "operator"),
    (InverseProblem, dict(operator=OPS["Identity"], prior=object(), noise=0.1), TypeError, "prior"),
    (InverseProblem, dict(operator=OPS["Identity"], prior=GAUSS, noise="0.1"), TypeError, "noise"),
    (InverseProblem, dict(operator=OPS["Identity"], prior=GAUSS, noise=-0.1), ValueError, "sigma|noise"),
    (InverseProblem, dict(operator=OPS["Identity"], prior=GAUSS, noise=0.0), ValueError, "sigma|noise"),
    (InverseProblem, dict(operator=OPS["Identity"], prior=GAUSS, noise=NAN), ValueError, "sigma|noise"),
    (InverseProblem, dict(operator=OPS["Identity"], prior=GAUSS, noise=INF), ValueError, "sigma|noise"),
    (InverseProblem, dict(operator=Identity((1, 4, 5)), prior=GAUSS, noise=0.1), ValueError, "operator/prior"),
    (GaussianNoise, dict(sigma=-1.0), ValueError, "sigma"),
    # -- InverseProblem methods -----------------------------------------------------------------
    (P.model, dict(y=torch.zeros(3)), ValueError, "y"),
    (P.model, dict(y=torch.zeros(1, 8, dtype=torch.complex64)), TypeError, "y"),
    (P.model, dict(y=[0.0] * 8), TypeError, "y"),
    (P.simulate, dict(x=torch.zeros(1, 1, 4, 5)), ValueError, "x"),
    (P.simulate, dict(x=nan_like(X)), ValueError, "x"),
    (P.simulate, dict(x=X.to(torch.complex128)), TypeError, "x"),
    (P.simulate, dict(x="image"), TypeError, "x"),
    (P.simulate, dict(x=X, seed=-1), ValueError, "seed"),
    (P.simulate, dict(x=OBJ), TypeError, r"^x:"),
    (P.simulate, dict(x=X.to("meta")), ValueError, r"x.*device"),
    (P.potential, dict(value=X, y=Y, space="pixel"), ValueError, "space"),
    (P.potential, dict(value=torch.zeros(1, 1, 4, 5, dtype=torch.float64), y=Y, space="image"), ValueError, "^x"),
    (P.potential, dict(value=X, y=torch.zeros(1, 3, dtype=torch.float64), space="image"), ValueError, "^y"),
    (P.check_measurement, dict(y="abc"), TypeError, "y"),
    (P.check_measurement, dict(y=nan_like(Y)), ValueError, "y"),
    # -- operator constructors ------------------------------------------------------------------
    (Identity, dict(in_shape=(4, 4)), ValueError, "in_shape"),
    (Identity, dict(in_shape=(1, 0, 4)), ValueError, "in_shape"),
    (Inpainting, dict(in_shape=S), ValueError, "mask|fraction"),
    (Inpainting, dict(in_shape=S, mask=torch.zeros(S)), ValueError, "mask"),
    (Inpainting, dict(in_shape=S, mask=torch.ones(2, 2)), ValueError, "mask"),
    (Inpainting, dict(in_shape=S, mask=torch.ones(S, dtype=torch.complex64)), TypeError, "mask"),
    (Inpainting, dict(in_shape=S, mask=nan_like(torch.ones(S))), ValueError, "mask"),
    (Inpainting, dict(in_shape=S, fraction=0.0), ValueError, "fraction"),
    (Inpainting, dict(in_shape=S, fraction=1.5), ValueError, "fraction"),
    (CompressedSensing, dict(in_shape=S, m=0), ValueError, "m"),
    (CompressedSensing, dict(in_shape=S, m=100), ValueError, "m"),
    (CompressedSensing, dict(in_shape=S, m=2.5), TypeError, "m"),
    (CompressedSensing, dict(in_shape=S, m=4, kind="fourier"), ValueError, "kind"),
    (Blur, dict(in_shape=S, kernel="box"), ValueError, "kernel"),
    (Blur, dict(in_shape=S, width=-1.0), ValueError, "width"),
    (Blur, dict(in_shape=S, width=NAN), ValueError, "width"),
    (Blur, dict(in_shape=S, kernel=nan_like(torch.ones(3, 3))), ValueError, "kernel"),
    (Blur, dict(in_shape=S, kernel=torch.zeros(3, 3)), ValueError, "kernel"),
    (Blur, dict(in_shape=S, kernel=torch.ones(3, 3, dtype=torch.complex64)), TypeError, "kernel"),
    (SuperResolution, dict(in_shape=S, factor=3), ValueError, "factor"),
    (SuperResolution, dict(in_shape=S, factor=0), ValueError, "factor"),
    (MRI, dict(in_shape=S, acceleration=0.0), ValueError, "acceleration"),
    (MRI, dict(in_shape=S, mask="spiral"), ValueError, "mask"),
    (MRI, dict(in_shape=S, center_fraction=1.5), ValueError, "center_fraction"),
    (MRI, dict(in_shape=S, mask=torch.zeros(4, 4)), ValueError, "mask"),
    (Radon, dict(in_shape=(1, 4, 6)), ValueError, "in_shape"),
    (Radon, dict(in_shape=S, n_angles=0), ValueError, "n_angles"),
    (Radon, dict(in_shape=S, angles=[NAN, 0.5]), ValueError, "angles"),
    (Radon, dict(in_shape=S, angles=[]), ValueError, "angles"),
    (MatrixOperator, dict(matrix=torch.randn(6, 15), in_shape=S), ValueError, "matrix"),
    (MatrixOperator, dict(matrix=nan_like(torch.randn(6, 16)), in_shape=S), ValueError, "matrix"),
    (MatrixOperator, dict(matrix=torch.randn(6, 16, dtype=torch.complex64), in_shape=S), TypeError, "matrix"),
    (MatrixOperator, dict(matrix=torch.randn(16), in_shape=S), ValueError, "matrix"),
    (Eikonal, dict(in_shape=(1, 8, 8), spacing=-1.0), ValueError, "spacing"),
    (Eikonal, dict(in_shape=(1, 8, 8), geometry="circle"), ValueError, "geometry"),
    (Eikonal, dict(in_shape=(1, 8, 8), parametrization="density"), ValueError, "parametrization"),
    (Eikonal, dict(in_shape=(1, 8, 8), n_sources=0), ValueError, "n_sources"),
    (gaussian_kernel, dict(size=4, width=1.0), ValueError, "size"),
    (gaussian_kernel, dict(size=3, width=0.0), ValueError, "width"),
    (cartesian_mask, dict(shape=(8, 8), acceleration=-2.0), ValueError, "acceleration"),
    (cartesian_mask, dict(shape=(8, 8), center_fraction=-0.1), ValueError, "center_fraction"),
    (random_gaussian_matrix, dict(m=0, d=4), ValueError, "m"),
    # -- operator forward / adjoint (every operator) ----------------------------------------------
    *[(op.forward, dict(x=torch.zeros(1, 1, 5, 5)), ValueError, "x") for op in OPS.values()],
    *[(op.forward, dict(x=torch.zeros(1, *S, dtype=torch.complex64)), TypeError, "x") for op in OPS.values()],
    *[(op.forward, dict(x=torch.zeros(1, *S, dtype=torch.int64)), TypeError, "x") for op in OPS.values()],
    *[(op.forward, dict(x="image"), TypeError, "x") for op in OPS.values()],
    *[(op.adjoint, dict(y=torch.zeros(1, 3, 3, 3)), ValueError, "y") for op in OPS.values()],
    *[(op.init_estimate, dict(y=torch.zeros(1, 3, 3, 3)), ValueError, "y") for op in OPS.values()],
    # -- priors ---------------------------------------------------------------------------------------
    (GaussianPrior.stationary, dict(image_shape=S, std=-1.0), ValueError, "std"),
    (GaussianPrior.stationary, dict(image_shape=S, length_scale=0.0), ValueError, "length_scale"),
    (GaussianPrior.stationary, dict(image_shape=S, nugget=-1.0), ValueError, "nugget"),
    # (H, W) is accepted and read as (1, H, W), like the constructor's mean (see
    # test_stationary_reads_hw_as_one_channel); a shape that is neither is refused:
    (GaussianPrior.stationary, dict(image_shape=(1, 1, 4, 4)), ValueError, "image_shape"),
    (GaussianPrior.stationary, dict(image_shape=(1, 0, 4)), ValueError, "image_shape"),
    (GaussianPrior, dict(mean=torch.zeros(S), covariance=torch.eye(15)), ValueError, "covariance"),
    (GaussianPrior, dict(mean=torch.zeros(S), covariance=-torch.eye(16)), ValueError, "covariance"),
    (GaussianPrior, dict(mean=torch.zeros(S), covariance=torch.eye(16), scale_tril=torch.eye(16)), ValueError,
     "covariance|scale_tril"),
    (GaussianPrior, dict(mean=nan_like(torch.zeros(S)), covariance=torch.eye(16)), ValueError, "mean"),
    (GaussianPrior, dict(mean=torch.zeros(S), covariance=torch.eye(16, dtype=torch.complex64)), TypeError, "covariance"),
    (GAUSS.log_prob, dict(x=torch.zeros(1, 1, 4, 5)), ValueError, "x"),
    (GAUSS.sample, dict(n=0), ValueError, "n"),
    (GAUSS.sample, dict(n=2.5), TypeError, "n"),
    (FlowPrior, dict(flow=object()), TypeError, "flow"),
    (FlowPrior, dict(flow=torch.nn.Linear(2, 2)), TypeError, "flow"),
    (FLOWPRIOR.log_prob, dict(x=torch.zeros(1, 1, 4, 5)), ValueError, "x"),
    (FLOWPRIOR.generate, dict(z=torch.zeros(1, 1, 3, 3)), ValueError, "z"),
    (PatchNRPrior, dict(flow=PATCHFLOW, image_shape=S, weight=-1.0), ValueError, "weight"),
    (PatchNRPrior, dict(flow=object(), image_shape=S), TypeError, "flow"),
    (PatchNRPrior, dict(flow=PATCHFLOW, image_shape=S, patch_size=3), ValueError, "patch_size"),
    (PATCHNR.log_prob, dict(x=torch.zeros(1, 1, 4, 5)), ValueError, "x"),
    (WassersteinPatchPrior, dict(reference=nan_like(torch.rand(1, 16, 16)), image_shape=(1, 8, 8), patch_size=2),
     ValueError, "reference"),
    (WassersteinPatchPrior, dict(reference=torch.rand(1, 16, 16), image_shape=(1, 8, 8), weight=-1.0, patch_size=2),
     ValueError, "weight"),
    (WassersteinPatchPrior, dict(reference=torch.rand(1, 2, 2), image_shape=(1, 8, 8), patch_size=6),
     ValueError, "scales|reference|patch_size"),
    # -- map_estimate ---------------------------------------------------------------------------------
    (map_estimate, dict(problem=object(), y=Y), TypeError, "problem"),
    (map_estimate, dict(problem=P, y=torch.zeros(3)), ValueError, "y"),
    (map_estimate, dict(problem=P, y=nan_like(Y)), ValueError, "y"),
    (map_estimate, dict(problem=P, y=Y.to(torch.complex128)), TypeError, "y"),
    (map_estimate, dict(problem=P, y=Y, method="newton"), ValueError, "method"),
    (map_estimate, dict(problem=P, y=Y, optimizer="sgd"), ValueError, "optimizer"),
    (map_estimate, dict(problem=P, y=Y, steps=0), ValueError, "steps"),
    (map_estimate, dict(problem=P, y=Y, steps=1.5), TypeError, "steps"),
    (map_estimate, dict(problem=P, y=Y, lr=-1.0), ValueError, "lr"),
    (map_estimate, dict(problem=P, y=Y, lr=NAN), ValueError, "lr"),
    (map_estimate, dict(problem=P, y=Y, restarts=0), ValueError, "restarts"),
    (map_estimate, dict(problem=P, y=Y, init="random"), ValueError, "init"),
    (map_estimate, dict(problem=P, y=Y, method="image", init=torch.zeros(5)), ValueError, "init"),
    (map_estimate, dict(problem=P, y=Y, method="image", init=nan_like(X)), ValueError, "init"),
    (map_estimate, dict(problem=P, y=Y, method="image", clamp=(1.0, 0.0)), ValueError, "clamp"),
    (map_estimate, dict(problem=P, y=Y, gamma=-1.0), ValueError, "gamma"),
    (map_estimate, dict(problem=P, y=Y, tol=-1.0), ValueError, "tol"),
    (map_estimate, dict(problem=P, y=Y, seed=-1), ValueError, "seed"),
    (map_estimate, dict(problem=P, y=Y, method="image", gaussianize=torch.nn.Identity()), ValueError, "gaussianize"),
    (map_estimate, dict(problem=with_noise(1e-200), y=Y, steps=3), FloatingPointError, r"step \d+.*sigma"),
    # -- sample_posterior -------------------------------------------------------------------------------
    (sample_posterior, dict(problem=object(), y=Y, **QUICK_MCMC), TypeError, "problem"),
    (sample_posterior, dict(problem=P, y=Y, **{**QUICK_MCMC, "kernel": "gibbs"}), ValueError, "kernel"),
    (sample_posterior, dict(problem=P, y=Y, chain_method="threads", **QUICK_MCMC), ValueError, "chain_method"),
    (sample_posterior, dict(problem=P, y=nan_like(Y), **QUICK_MCMC), ValueError, "y"),
    (sample_posterior, dict(problem=P, y=torch.zeros(2, 8, dtype=torch.float64), **QUICK_MCMC), ValueError, "y"),
    (sample_posterior, dict(problem=P, y=Y, step_size=0.0, **QUICK_MCMC), ValueError, "step_size"),
    (sample_posterior, dict(problem=P, y=Y, step_size=-1.0, **QUICK_MCMC), ValueError, "step_size"),
    (sample_posterior, dict(problem=P, y=Y, target_accept_prob=1.5, **QUICK_MCMC), ValueError, "target_accept_prob"),
    (sample_posterior, dict(problem=P, y=Y, thin=0, **QUICK_MCMC), ValueError, "thin"),
    (sample_posterior, dict(problem=P, y=Y, **{**QUICK_MCMC, "num_samples": 0}), ValueError, "num_samples"),
    (sample_posterior, dict(problem=P, y=Y, **{**QUICK_MCMC, "warmup_steps": -1}), ValueError, "warmup_steps"),
    (sample_posterior, dict(problem=P, y=Y, **{**QUICK_MCMC, "num_chains": 2.0}), TypeError, "num_chains"),
    (sample_posterior, dict(problem=P, y=Y, **{**QUICK_MCMC, "init": torch.zeros(5)}), ValueError, "init"),
    (sample_posterior, dict(problem=P, y=Y, checkpoint_every=0, **QUICK_MCMC), ValueError, "checkpoint_every"),
    (sample_posterior, dict(problem=P, y=Y, preconditioner=-1.0, **QUICK_MCMC), ValueError, "preconditioner"),
    (sample_posterior, dict(problem=P, y=Y, preconditioner=torch.full((4,), 1.0), **QUICK_MCMC), ValueError,
     "preconditioner"),
    (sample_posterior, dict(problem=P, y=Y, preconditioner="ones", **QUICK_MCMC), TypeError, "preconditioner"),
    (sample_posterior, dict(problem=P, y=Y, **{**QUICK_MCMC, "kernel": "mala", "step_size": 1e300,
                                                 "adapt_step_size": False}), FloatingPointError, "step_size"),
    # -- exact_gaussian_posterior -----------------------------------------------------------------------
    (exact_gaussian_posterior, dict(problem=InverseProblem(OPS["Identity"], FLOWPRIOR, 0.1), y=torch.zeros(S)),
     ValueError, "problem.*GaussianPrior"),
    (exact_gaussian_posterior, dict(problem=P, y=torch.zeros(3)), ValueError, "y"),
    (exact_gaussian_posterior, dict(problem=P, y=nan_like(Y)), ValueError, "y"),
    (exact_gaussian_posterior, dict(problem=P, y=Y, num_samples=0), ValueError, "num_samples"),
    (exact_gaussian_posterior, dict(problem=P, y=Y, tol=-1.0), ValueError, "tol"),
    (exact_gaussian_posterior, dict(problem=P, y=Y, max_iter=0), ValueError, "max_iter"),
    (exact_gaussian_posterior, dict(problem=object(), y=Y), TypeError, "problem"),
    # -- train_flow -----------------------------------------------------------------------------------
    (train_flow, dict(model=torch.nn.Linear(2, 2), data=PATCHES, steps=1, batch_size=4), TypeError, "model"),
    (train_flow, dict(model=TRAINFLOW, data=PATCHES, steps=0, batch_size=4), ValueError, "steps"),
    (train_flow, dict(model=TRAINFLOW, data=PATCHES, steps=1, batch_size=0), ValueError, "batch_size"),
    (train_flow, dict(model=TRAINFLOW, data=PATCHES, steps=1, batch_size=4, lr=-1.0), ValueError, "lr"),
    (train_flow, dict(model=TRAINFLOW, data=PATCHES, steps=1, batch_size=4, lr=NAN), ValueError, "lr"),
    (train_flow, dict(model=TRAINFLOW, data=PATCHES, steps=1, batch_size=4, dequantize="gaussian"), ValueError,
     "dequantize"),
    (train_flow, dict(model=TRAINFLOW, data=[[0.0] * 4] * 8, steps=1, batch_size=4), TypeError, "data"),
    (train_flow, dict(model=TRAINFLOW, data=torch.rand(8), steps=1, batch_size=4), ValueError, "data"),
    (train_flow, dict(model=TRAINFLOW, data=nan_like(PATCHES), steps=1, batch_size=4), ValueError, "data"),
    (train_flow, dict(model=TRAINFLOW, data=PATCHES.to(torch.complex64), steps=1, batch_size=4), TypeError, "data"),
    (train_flow, dict(model=TRAINFLOW, data=PATCHES * 3, steps=1, batch_size=4, dequantize="uniform"), ValueError,
     "data"),
    (train_flow, dict(model=TRAINFLOW, data=PATCHES, val_data=torch.rand(4, 5), steps=1, batch_size=4), ValueError,
     "val_data"),
    (train_flow, dict(model=TRAINFLOW, data=PATCHES, steps=1, batch_size=4, device=CUDA), ValueError, "device"),
    (train_flow, dict(model=TRAINFLOW, data=PATCHES, steps=1, batch_size=4, device="tpu:0"), ValueError, "device"),
    (train_flow, dict(model=TRAINFLOW, data=PATCHES, steps=1, batch_size=4, grad_clip=0.0), ValueError, "grad_clip"),
    (train_flow, dict(model=TRAINFLOW, data=PATCHES, steps=1, batch_size=4, resume="yes"), TypeError, "resume"),
    (train_flow, dict(model=TRAINFLOW, data=PATCHES, steps=1, batch_size=4, patch_sampler=3), TypeError,
     "patch_sampler"),
    (train_flow, dict(model=TRAINFLOW, data=torch.rand(8, 5), steps=1, batch_size=4), ValueError, "trailing|dim|data"),
    (train_flow, dict(model=TRAINFLOW, data=lambda n, g: torch.rand(n + 1, 4), steps=1, batch_size=4), ValueError,
     "data"),
    (train_fresh, dict(data=PATCHES, steps=3, batch_size=4, lr=1e30, device="cpu"), FloatingPointError,
     r"step \d+"),
    # -- save / load -----------------------------------------------------------------------------------
    (save_flow, dict(flow=torch.nn.Linear(2, 2), path="unused.safetensors"), TypeError, "flow"),
    (load_flow, dict(path="/nonexistent/flow.safetensors"), ValueError, "flow.json|flow.safetensors"),
    (load_checkpoint, dict(path="/nonexistent/ckpt.safetensors"), ValueError, "ckpt.safetensors"),
    (save_posterior, dict(posterior=POST, path="/nonexistent/dir/post.nc"), ValueError, "path"),
    (save_posterior, dict(posterior=POST, path=3), TypeError, "path"),
    (save_posterior, dict(posterior=object(), path="unused.nc"), TypeError, "posterior"),
    (load_posterior, dict(path="/nonexistent/post.nc"), ValueError, "post.nc"),
    (load_posterior, dict(path=3), TypeError, "path"),
    (Posterior, dict(samples=[1.0, 2.0], method="x"), TypeError, "samples"),
    (Posterior, dict(samples=torch.rand(5, *S), method="x", kind="markov"), ValueError, "samples"),
    (Posterior, dict(samples=torch.rand(2, 5, *S), method="x", kind="sometimes"), ValueError, "kind"),
    # -- data loaders and pretrained weights -------------------------------------------------------------
    (bdata.load_image, dict(name="lena"), ValueError, "name"),
    (bdata.load_image, dict(name="camera", size=0), ValueError, "size"),
    (bdata.load_image, dict(name="camera", crop=0.0), ValueError, "crop"),
    (bdata.load_image, dict(name="camera", device=CUDA), ValueError, "device"),
    (bdata.ellipse_phantoms, dict(n=0), ValueError, "n"),
    (bdata.ellipse_phantoms, dict(n=1, size=0), ValueError, "size"),
    (bdata.ellipse_phantoms, dict(n=1, size=8, n_ellipses=(5, 2)), ValueError, "n_ellipses"),
    (bdata.ellipse_phantoms, dict(n=1, size=8, device=CUDA), ValueError, "device"),
    (bdata.image_crops, dict(name="camera", n=1, size=100_000), ValueError, "size"),
    (pretrained.load_prior, dict(name="nope"), ValueError, "name"),
    (pretrained.load_flow_weights, dict(name=3), TypeError, "name"),
    (pretrained.load_flow_weights, dict(name="glow_phantom32", map_location=CUDA), ValueError,
     "map_location|device"),
    (load_flow, dict(path="unused.safetensors", map_location=CUDA), ValueError, "map_location"),
    # -- metrics ---------------------------------------------------------------------------------------
    (metrics.psnr, dict(estimate=torch.rand(1, 4, 4), truth=torch.rand(1, 4, 5)), ValueError, "shape|truth"),
    (metrics.psnr, dict(estimate=torch.rand(1, 4, 4), truth=torch.rand(1, 4, 4), data_range=0.0), ValueError,
     "data_range"),
    (metrics.psnr, dict(estimate=nan_like(torch.rand(1, 4, 4)), truth=torch.rand(1, 4, 4)), ValueError,
     "estimate"),
    (metrics.psnr, dict(estimate=torch.rand(1, 4, 4), truth=nan_like(torch.rand(1, 4, 4))), ValueError, "truth"),
    (metrics.psnr, dict(estimate=torch.rand(1, 4, 4, dtype=torch.complex64), truth=torch.rand(1, 4, 4)), TypeError,
     "estimate"),
    (metrics.ssim, dict(estimate=torch.rand(1, 8, 8), truth=torch.rand(1, 8, 9)), ValueError, "shape|truth"),
    (metrics.error_std_correlation, dict(mean=torch.rand(1, 4, 4), std=-torch.rand(1, 4, 4),
                                         truth=torch.rand(1, 4, 4)), ValueError, "std"),
    # -- diagnostics -----------------------------------------------------------------------------------
    (dmaps.rhat_map, dict(samples=torch.rand(5)), ValueError, "samples"),
    (dmaps.rhat_map, dict(samples=torch.rand(2, 5, *S, dtype=torch.complex64)), TypeError, "samples"),
    # NaN draws give NaN maps at their pixels, with a warning (documented, see
    # test_nan_draws_warn_and_stay_in_their_pixel); infinite draws are refused:
    (dmaps.rhat_map, dict(samples=torch.rand(2, 5, *S).index_fill_(1, torch.tensor([2]), INF)), ValueError,
     "samples"),
    (dmaps.ess_map, dict(samples=torch.rand(2, 5, *S), method="foo"), ValueError, "method"),
    (dmaps.hdi_map, dict(samples=torch.rand(2, 5, *S), hdi_prob=1.5), ValueError, "hdi_prob"),
    (dmaps.rhat_map, dict(samples=torch.rand(2, 5, *S), chunk_size=0), ValueError, "chunk_size"),
    (dmaps.convergence_maps, dict(samples=torch.rand(2, 5, *S), which=("foo",)), ValueError, "which"),
    (dmaps.error_map, dict(estimate=torch.rand(*S), truth=torch.rand(1, 4, 5)), ValueError, "truth|shape"),
    (dmaps.zscore_map, dict(estimate=torch.rand(*S), truth=torch.rand(*S), std=torch.ones(1, 4, 5)), ValueError, "std"),
    (dmaps.posterior_maps, dict(posterior=object()), TypeError, "posterior"),
    (dmaps.posterior_maps, dict(posterior=POST, hdi_prob=0.0), ValueError, "hdi_prob"),
    (dmaps.posterior_maps, dict(posterior=POST, hdi_prob=1.0), ValueError, "hdi_prob"),
    (dmaps.rhat_map, dict(samples=np.zeros((2, 5, 4), dtype=object)), TypeError, "samples"),
    (uq_report, dict(posterior=object(), path="unused.html"), TypeError, "posterior"),
    (uq_report, dict(posterior=POST, path="/nonexistent/dir/report.html"), ValueError, "path"),
]


def _row_id(row) -> str:
    values = row.values if hasattr(row, "values") else row
    fn, kwargs = values[0], values[1]
    name = getattr(fn, "__qualname__", getattr(fn, "__name__", type(fn).__name__))
    bound = getattr(fn, "__self__", None)
    if bound is not None and not isinstance(bound, type) and not type(bound).__name__ == "module":
        name = f"{type(bound).__name__}.{fn.__name__}"
    return f"{name}-{'-'.join(sorted(kwargs))}"


@pytest.mark.parametrize("fn,kwargs,exc,match", ROWS, ids=[_row_id(r) for r in ROWS])
def test_bad_input_raises_a_named_error(fn, kwargs, exc, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # rows that would write "unused.*" files write them here
    with pytest.raises(exc, match=match):
        fn(**kwargs)


def test_the_table_covers_every_entry_point():
    names = {_row_id(r).split("-")[0] for r in ROWS}
    n_rows = len(ROWS)
    n_xfail = sum(1 for r in ROWS if hasattr(r, "marks"))
    assert n_rows >= 150 and n_xfail < n_rows // 4, (n_rows, n_xfail)
    for required in ("InverseProblem", "InverseProblem.simulate", "InverseProblem.potential", "map_estimate",
                     "sample_posterior", "exact_gaussian_posterior", "train_flow", "save_flow", "load_flow",
                     "load_posterior", "save_posterior", "GaussianPrior", "FlowPrior", "PatchNRPrior", "psnr",
                     "rhat_map", "posterior_maps", "uq_report", "load_image"):
        assert required in names, required
    assert math.isfinite(n_rows)


def test_stationary_reads_hw_as_one_channel():
    """``image_shape=(H, W)`` means ``(1, H, W)``: same prior as the explicit 3-D shape."""
    hw = GaussianPrior.stationary((4, 4), std=0.3, length_scale=1.0)
    chw = GaussianPrior.stationary((1, 4, 4), std=0.3, length_scale=1.0)
    assert hw.image_shape == (1, 4, 4) and hw.latent_shape == (1, 4, 4)
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hw.log_prob(x), chw.log_prob(x))


def test_nan_draws_warn_and_stay_in_their_pixel():
    """A NaN draw is not silent: a RuntimeWarning names ``samples``; only its pixel's R-hat is NaN."""
    x = nan_like(torch.rand(2, 8, *S, generator=torch.Generator().manual_seed(1)))
    with pytest.warns(RuntimeWarning, match=r"samples: 1 draw value\(s\) are NaN"):
        r = dmaps.rhat_map(x)
    assert np.isnan(r.reshape(-1)[0]) and np.isfinite(r.reshape(-1)[1:]).all()


def test_kernel_refuses_a_preconditioner_of_the_wrong_shape():
    """Used directly (e.g. with pyro.infer.MCMC), MALA checks M against the initial point."""
    from bayesinv.infer.kernels import MALA

    kernel = MALA(lambda p: P.potential(p["x"][None], Y, space="image").sum(), 0.01,
                  preconditioner=torch.full((4,), 1.0))
    kernel.initial_params = {"x": X[0]}
    with pytest.raises(ValueError, match=r"preconditioner: .*\(1, 4, 4\).*\(4,\)"):
        kernel.setup(warmup_steps=0)
    kernel = MALA(lambda p: P.potential(p["x"][None], Y, space="image").sum(), 0.01,
                  preconditioner=torch.full(S, 2.0, dtype=torch.float64))
    kernel.initial_params = {"x": X[0]}
    kernel.setup(warmup_steps=0)  # the right shape is accepted
