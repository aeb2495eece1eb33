"""patchNR and Wasserstein patch priors: exact math on tiny cases, MAP quality on small problems.

Quality thresholds were measured (see the comments) and set with margin. Training phantoms use
seeds < 1000, test phantoms seeds >= 10_000; texture truth and reference are disjoint crops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from bayesinv.data.images import ellipse_phantoms, load_image
from bayesinv.flows.patch import PatchFlow
from bayesinv.flows.train import train_flow
from bayesinv.infer.map import map_estimate
from bayesinv.metrics import psnr
from bayesinv.operators.blur import Blur, SuperResolution
from bayesinv.operators.tomography import Radon
from bayesinv.priors.patches import random_patches
from bayesinv.priors.patchnr import PatchNRPrior, reference_settings
from bayesinv.priors.wpp import (
    WassersteinPatchPrior,
    dual_objective,
    nearest_patches,
    wasserstein_patch_distance,
)
from bayesinv.problem import InverseProblem


def _naive_patches(x: torch.Tensor, k: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return torch.stack([torch.stack([x[n, :, i:i + k, j:j + k].reshape(-1)
                                     for i in range(h - k + 1) for j in range(w - k + 1)])
                        for n in range(b)])


@pytest.fixture
def tiny_flow() -> PatchFlow:
    return PatchFlow(patch_size=3, channels=1, n_blocks=2, hidden=16, seed=1).double()


# ===================================================================================== patchNR
def test_patchnr_energy_is_the_mean_flow_energy_over_all_patches(tiny_flow):
    x = torch.rand(2, 1, 9, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    prior = PatchNRPrior(tiny_flow, (1, 9, 8), weight=2.5, n_patches=None)
    expected = tiny_flow.energy(_naive_patches(x, 3)).mean(-1)
    torch.testing.assert_close(prior.energy(x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(prior.log_prob(x), -2.5 * expected, rtol=1e-12, atol=1e-12)
    padded = PatchNRPrior(tiny_flow, (1, 9, 8), weight=1.0, n_patches=None, pad=2)
    xp = F.pad(x, [2] * 4, mode="reflect")
    assert torch.equal(xp[..., 2:-2, 2:-2], x)
    torch.testing.assert_close(padded.energy(x), tiny_flow.energy(_naive_patches(xp, 3)).mean(-1))


def test_patchnr_gradient_matches_finite_differences(tiny_flow):
    x = torch.rand(1, 1, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    prior = PatchNRPrior(tiny_flow, (1, 7, 7), weight=1.0, n_patches=None, pad=1)
    assert not any(p.requires_grad for p in tiny_flow.parameters())  # frozen by default
    xg = x.clone().requires_grad_(True)
    prior.energy(xg).sum().backward()
    assert xg.grad is not None and bool(torch.isfinite(xg.grad).all()) and xg.grad.abs().max() > 0
    v = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    h = 1e-6
    fd = (prior.energy(x + h * v) - prior.energy(x - h * v)) / (2 * h)
    assert float(fd) == pytest.approx(float((xg.grad * v).sum()), rel=1e-6)


def test_random_patch_energy_is_unbiased(tiny_flow):
    x = torch.rand(1, 1, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    exact = float(PatchNRPrior(tiny_flow, (1, 10, 10), n_patches=None).energy(x))
    prior = PatchNRPrior(tiny_flow, (1, 10, 10), n_patches=16, seed=5)
    draws = torch.stack([prior.energy(x)[0] for _ in range(400)])
    se = float(draws.std()) / 20.0
    assert se > 0  # the estimate is random...
    assert abs(float(draws.mean()) - exact) < 4 * se  # ...and centred on the all-patches value
    # seeded: the same seed gives the same sequence of patch draws
    a = PatchNRPrior(tiny_flow, (1, 10, 10), n_patches=16, seed=5).energy(x)
    assert torch.equal(a, draws[0:1])
    b = PatchNRPrior(tiny_flow, (1, 10, 10), n_patches=16,
                     generator=torch.Generator().manual_seed(5)).energy(x)
    assert torch.equal(b, draws[0:1])
    with pytest.raises(ValueError, match="seed/generator"):
        PatchNRPrior(tiny_flow, (1, 10, 10), seed=1, generator=torch.Generator())


def test_patches_without_replacement_are_unbiased_with_less_spread(tiny_flow):
    x = torch.rand(1, 1, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    exact = float(PatchNRPrior(tiny_flow, (1, 10, 10), n_patches=None).energy(x))
    draws = {}
    for replace in (True, False):
        prior = PatchNRPrior(tiny_flow, (1, 10, 10), n_patches=32, seed=5, replace=replace)
        draws[replace] = torch.stack([prior.energy(x)[0] for _ in range(400)])
    without = draws[False]
    assert abs(float(without.mean()) - exact) < 4 * float(without.std()) / 20.0
    # 32 of the 64 positions of a 3×3 patch without replacement: variance × (64-32)/(64-1) = 0.51
    ratio = float(without.var() / draws[True].var())
    assert 0.35 < ratio < 0.7
    # N_p above the number of positions: all of them, so the exact energy
    capped = PatchNRPrior(tiny_flow, (1, 10, 10), n_patches=1000, seed=5, replace=False)
    assert float(capped.energy(x)) == pytest.approx(exact, rel=1e-12)
    assert capped.describe()["replace"] is False
    with pytest.raises(TypeError, match="replace"):
        PatchNRPrior(tiny_flow, (1, 10, 10), replace=1)


def test_patchnr_in_a_pyro_model_places_x_and_the_prior_factor(tiny_flow):
    flow = tiny_flow.float()
    prior = PatchNRPrior(flow, (1, 8, 8), weight=3.0, n_patches=None)
    problem = InverseProblem(Blur((1, 8, 8), width=1.0), prior, noise=0.1)
    x0 = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    y = problem.simulate(x0, seed=0)
    tr = poutine.trace(poutine.condition(problem.model, data={"x": x0})).get_trace(y)
    assert tr.nodes["x"]["type"] == "sample"
    assert isinstance(tr.nodes["x"]["fn"], pyro.distributions.ImproperUniform)
    assert "prior" in tr.nodes and tr.nodes["prior"]["type"] == "sample"
    tr.compute_log_prob()
    torch.testing.assert_close(tr.nodes["prior"]["log_prob"], -3.0 * prior.energy(x0))
    # the joint log density is -potential (up to the likelihood constant)
    total = tr.log_prob_sum()
    const = problem.noise.log_normalizer(int(np.prod(problem.measurement_shape)))
    torch.testing.assert_close(total, -problem.potential(x0, y).sum() + const, rtol=1e-5, atol=1e-4)


def test_reference_weight_conversion_keeps_the_objective_proportional(tiny_flow):
    s = reference_settings("superresolution")
    assert s["weight"] == pytest.approx(0.15 / (2 * 0.01**2)) and s["n_patches"] == 130_000
    assert s["lr"] == 0.03
    ct = reference_settings("ct", sigma=0.5)
    assert (ct["lam_ref"], ct["n_patches"], ct["lr"], ct["steps"]) == (700.0, 40_000, 0.005, 300)
    assert reference_settings("limited_angle_ct", sigma=0.5)["steps"] == 3000
    assert reference_settings("deblurring")["lam_ref"] == 0.87
    # ||Ax - y||^2 + lam R(x) = 2 sigma^2 * U(x) for our potential U with weight lam / (2 sigma^2)
    sigma, lam = 0.05, 0.7
    op = Blur((1, 8, 8), width=1.0)
    prior = PatchNRPrior(tiny_flow.float(), (1, 8, 8), weight=reference_settings("deblurring", sigma)["weight"]
                         * lam / 0.87, n_patches=None)
    problem = InverseProblem(op, prior, noise=sigma)
    gen = torch.Generator().manual_seed(0)
    y = problem.simulate(torch.rand(1, 1, 8, 8, generator=gen), seed=1)
    for _ in range(2):
        x = torch.rand(1, 1, 8, 8, generator=gen)
        ref_loss = (op(x) - y).pow(2).sum() + lam * prior.energy(x).sum()
        torch.testing.assert_close(problem.potential(x, y).sum() * 2 * sigma**2, ref_loss, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="sigma"):
        reference_settings("ct")
    with pytest.raises(ValueError, match="task"):
        reference_settings("mri")


def _train_ct_flow(size: int, steps: int) -> PatchFlow:
    train = torch.cat([ellipse_phantoms(1, size, seed=s) for s in range(32)])  # seeds < 1000

    def sampler(batch_size: int, gen: torch.Generator) -> torch.Tensor:
        p = random_patches(train, 6, batch_size // 32, generator=gen).reshape(batch_size, 36)
        return p + 0.01 * torch.randn(p.shape, generator=gen)

    flow = PatchFlow(patch_size=6, n_blocks=3, hidden=48, seed=0)
    train_flow(flow, sampler, steps=steps, batch_size=128, lr=2e-3, device="cpu", seed=0, grad_clip=10.0)
    return flow


def test_patchnr_map_beats_fbp_on_sparse_view_ct():
    # measured (flow 200 steps, 15 angles, sigma 1, weight 10): FBP 16.3, clamped FBP 17.4,
    # weight 1e-3 (≈ least squares) ~19, patchNR ~22.5
    size = 32
    flow = _train_ct_flow(size, steps=200)
    op = Radon.sparse_view((1, size, size), n_angles=15)
    truth = ellipse_phantoms(1, size, seed=10_000)
    results = {}
    for w in (10.0, 1e-3):
        problem = InverseProblem(op, PatchNRPrior(flow, (1, size, size), w, n_patches=None), noise=1.0)
        y = problem.simulate(truth, seed=20_000)
        post = map_estimate(problem, y, method="image", steps=200, lr=0.005, seed=0)
        results[w] = psnr(post.point_estimate, truth[0])
    fbp = psnr(op.fbp(y)[0].clamp(0, 1), truth[0])
    assert results[10.0] > fbp + 3.0, (results, fbp)
    assert results[10.0] > results[1e-3] + 1.0, (results, fbp)  # the prior, not just data fitting


# ============================================================================= Wasserstein PP
def _tiny_ot_case(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, 5, 5, generator=gen, dtype=torch.float64)
    ref = torch.rand(1, 1, 5, 5, generator=gen, dtype=torch.float64)
    prior = WassersteinPatchPrior(ref, (1, 5, 5), 1.0, patch_size=2, scales=1, inner_steps=0)
    return x, prior


def _exact_ot(p: torch.Tensor, q: torch.Tensor) -> float:
    c = torch.cdist(p, q).pow(2).numpy()
    r, col = linear_sum_assignment(c)
    return float(c[r, col].mean())


def test_nearest_patch_search_chunked_equals_unchunked_and_brute_force():
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(103, 12, generator=gen, dtype=torch.float64)
    q = torch.rand(41, 12, generator=gen, dtype=torch.float64)
    psi = 0.1 * torch.randn(41, generator=gen, dtype=torch.float64)
    i_all, v_all = nearest_patches(p, q, psi, chunk_size=None)
    for cs in (1, 7, 64, 1000):
        i_c, v_c = nearest_patches(p, q, psi, chunk_size=cs)
        assert torch.equal(i_c, i_all)
        torch.testing.assert_close(v_c, v_all, rtol=0, atol=1e-14)
    brute = torch.cdist(p, q).pow(2) - psi
    assert torch.equal(i_all, brute.argmin(1))
    torch.testing.assert_close(v_all, brute.min(1).values, rtol=0, atol=1e-12)


def test_psi_ascent_increases_the_dual_and_reaches_the_exact_ot_cost():
    x, prior = _tiny_ot_case()
    p, q = prior.image_patches(x)[0][0], prior.reference_patches(0)
    assert p.shape == q.shape == (16, 4)  # N = M, uniform weights: OT is an assignment problem
    ot = _exact_ot(p, q)
    start = float(prior.dual_value(x))  # psi = 0: mean nearest-neighbour distance
    assert start == pytest.approx(float(nearest_patches(p, q)[1].mean()), rel=1e-12)
    values = [start]
    for steps in [3] + [100] * 20:
        prior.update_potentials(x, steps=steps, lr=0.5)
        values.append(float(prior.dual_value(x)))
        assert values[-1] <= ot + 1e-12  # weak duality: the dual never exceeds the OT cost
    assert values[1] > start and values[-1] > values[1]  # 3 steps help; more help more
    assert values[-1] == pytest.approx(ot, rel=1e-6)  # measured: exact to 1e-15
    assert float(dual_objective(p, q, prior.potentials(0)[0])) == pytest.approx(values[-1], rel=1e-12)
    # energy() warm-starts: 10 more default-lr steps from the optimum stay within 2% of it
    prior.inner_steps = 10
    assert float(prior.energy(x)) == pytest.approx(ot, rel=0.02)


def test_envelope_gradient_matches_finite_differences_of_w():
    x, prior = _tiny_ot_case(seed=1)
    q = prior.reference_patches(0)
    p0 = prior.image_patches(x)[0][0]

    def w_exact(img: torch.Tensor) -> float:
        return _exact_ot(prior.image_patches(img)[0][0], q)

    prior.update_potentials(x, steps=2000, lr=0.5)
    # precondition of the envelope theorem here: psi lies inside the optimal region, where the
    # c-transform assignment j*(i) is a permutation (the optimal one); measured: reached
    idx, _ = nearest_patches(p0, q, prior.potentials(0)[0])
    assert torch.bincount(idx, minlength=16).tolist() == [1] * 16
    xg = x.clone().requires_grad_(True)
    prior.dual_value(xg).sum().backward()
    v = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    h = 1e-5
    fd = (w_exact(x + h * v) - w_exact(x - h * v)) / (2 * h)
    assert float((xg.grad * v).sum()) == pytest.approx(fd, rel=0.05, abs=1e-6)
    # and it is the gradient of (1/N) sum ||p_i - q_{sigma(i)}||^2 for the optimal assignment
    p = prior.image_patches(xg)[0][0]
    r, c = linear_sum_assignment(torch.cdist(p.detach(), q).pow(2).numpy())
    xg2 = x.clone().requires_grad_(True)
    (prior.image_patches(xg2)[0][0][r] - q[c]).pow(2).sum(-1).mean().backward()
    torch.testing.assert_close(xg.grad, xg2.grad, rtol=1e-6, atol=1e-9)


def test_multiscale_energy_sums_the_scales_and_has_gradients():
    tex = load_image("brick", size=None)
    ref = tex[:, :40, :40]
    prior = WassersteinPatchPrior(ref, (1, 24, 24), 1.0, patch_size=4, n_reference=300, scales=2,
                                  inner_steps=3)
    assert [prior.reference_patches(s).shape for s in range(2)] == [(300, 16), (256, 16)]
    x = tex[None, :, 100:124, 100:124].clone().requires_grad_(True)
    e = prior.energy(x)
    assert e.shape == (1,) and prior.potentials(0).shape == (1, 300)
    e.sum().backward()
    assert bool(torch.isfinite(x.grad).all()) and x.grad.abs().sum() > 0
    # scale 1 alone = a single-scale prior on the downsampled image with the same patches
    parts = [dual_objective(prior.image_patches(x)[s][0].detach(), prior.reference_patches(s),
                            prior.potentials(s)[0]) for s in range(2)]
    torch.testing.assert_close(prior.dual_value(x.detach()), (parts[0] + parts[1]).reshape(1))
    prior.reset_potentials()
    assert prior.potentials(0).shape[0] == 0


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from bayesinv.data.images import load_image
    from bayesinv.priors.wpp import WassersteinPatchPrior
    def rss(field):
        for line in open('/proc/self/status'):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    tex = load_image('gravel', size=None)
    prior = WassersteinPatchPrior(tex[:, 256:, 256:], (1, 128, 128), 1.0, n_reference=4000,
                                  scales=2, inner_steps=2, chunk_size=int(sys.argv[1]))
    x = tex[None, :, :128, :128].clone().requires_grad_(True)
    prior.energy(x).sum().backward()  # warm-up (allocator, lazy init)
    x.grad = None
    import ctypes, gc
    gc.collect()
    ctypes.CDLL('libc.so.6').malloc_trim(0)  # hand freed heap back, so reuse cannot hide the peak
    base = rss('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset the peak-RSS counter VmHWM
    prior.energy(x).sum().backward()
    print(json.dumps({'peak': rss('VmHWM') - base, 'full': prior.cost_matrix_bytes(123 * 123)}))
""")


def test_wpp_memory_stays_bounded_by_the_chunk():
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, "64"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    # the full 15129 x 4000 float32 cost matrix would be 242 MB; measured peak ~10 MB
    assert r["full"] == 15129 * 4000 * 4
    assert r["peak"] < 40e6, r


def test_wpp_map_superresolution_beats_bicubic_on_a_texture():
    # measured (grass, M=1000, inner 3, 60 steps, weight 1e3): bicubic 21.74 dB / patch-W2 0.313,
    # WPP 23.00 dB / 0.303; without the prior (weight 1e-3) 22.68 dB / 0.317
    tex = load_image("grass", size=None)
    truth, ref = tex[:, :64, :64], tex[:, 256:384, 256:384]  # disjoint crops of one texture
    op = SuperResolution((1, 64, 64), factor=2)
    prior = WassersteinPatchPrior(ref, (1, 64, 64), 1e3, n_reference=600, scales=2, inner_steps=3)
    problem = InverseProblem(op, prior, noise=0.01)
    y = problem.simulate(truth, seed=10_000)
    post = map_estimate(problem, y, method="image", steps=40, lr=0.01, clamp=(0.0, 1.0), seed=0)
    bicubic = op.bicubic(y)[0].clamp(0, 1)
    est = post.point_estimate
    assert psnr(est, truth) > psnr(bicubic, truth) + 0.6
    assert wasserstein_patch_distance(est, truth) < wasserstein_patch_distance(bicubic, truth)


# ================================================================================== bad inputs
@pytest.mark.parametrize("kwargs, match", [
    (dict(image_shape=(1, 2, 2)), "patch_size"),
    (dict(weight=0.0), "weight"),
    (dict(weight=-1.0), "weight"),
    (dict(n_patches=0), "n_patches"),
    (dict(image_shape=(3, 8, 8)), "flow"),
    (dict(patch_size=4), "patch_size"),
    (dict(pad=8), "pad"),
])
def test_patchnr_bad_inputs(tiny_flow, kwargs, match):
    args = dict(image_shape=(1, 8, 8), weight=1.0)
    args.update(kwargs)
    shape = args.pop("image_shape")
    with pytest.raises(ValueError, match=match):
        PatchNRPrior(tiny_flow, shape, **args)


def test_patchnr_bad_flow_type():
    with pytest.raises(TypeError, match="flow"):
        PatchNRPrior(torch.nn.Linear(2, 2), (1, 8, 8))


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_shape=(1, 4, 4)), "patch_size"),
    (dict(weight=0.0), "weight"),
    (dict(reference=torch.rand(1, 5, 5)), "reference"),
    (dict(reference=torch.rand(3, 32, 32)), "reference"),
    (dict(scales=3, image_shape=(1, 16, 16)), "scales"),
    (dict(n_reference=0), "n_reference"),
    (dict(inner_lr=0.0), "inner_lr"),
    (dict(reference=torch.full((1, 32, 32), float("nan"))), "reference"),
])
def test_wpp_bad_inputs(kwargs, match):
    args = dict(reference=torch.rand(1, 32, 32), image_shape=(1, 16, 16), weight=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        WassersteinPatchPrior(args.pop("reference"), args.pop("image_shape"), **args)
