"""Peers of the speed benchmarks (``benchmarks/bench_patchnr_peer.py``, ``bench_langevin.py``).

* the FrEIA network built from our PatchFlow computes the same latent and log-determinant (the
  weight mapping is exact), and its log-determinant equals a brute-force Jacobian ``slogdet``;
* the plain-torch patchNR regulariser equals ``PatchNRPrior.energy`` on all patches, and the
  plain-torch MAP loop retraces ``map_estimate`` when the regulariser is deterministic;
* the plain-torch ULA step equals our ULA kernel's step for the same noise draw; MALA chains
  agree; ``sample_posterior`` equals the peer seeded with its chain seed; the peer ULA has the
  known stationary variance of ULA on a Gaussian;
* bad inputs raise errors naming the argument; both ``main`` functions run on tiny settings.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("FrEIA")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a top-level folder, not part of the package
    sys.path.insert(0, str(ROOT))

from bayesinv.flows.patch import PatchFlow  # noqa: E402
from bayesinv.infer.kernels import MALA, ULA  # noqa: E402
from bayesinv.priors.patchnr import PatchNRPrior  # noqa: E402
from benchmarks import bench_langevin as bl  # noqa: E402
from benchmarks import bench_patchnr_peer as bp  # noqa: E402


def _random_flow(patch_size: int = 4, hidden: int = 16, n_blocks: int = 3, dtype=torch.float32) -> PatchFlow:
    flow = PatchFlow(patch_size=patch_size, hidden=hidden, n_blocks=n_blocks, seed=3)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # zero-init last layers would make every coupling the identity
        for p in flow.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return flow.to(dtype).requires_grad_(False)


# ============================================================================ FrEIA weight copy
def test_freia_copy_gives_the_same_latent_and_logdet():
    flow = _random_flow(dtype=torch.float64)
    inn = bp.freia_from_patchflow(flow)
    p = 0.5 + 0.3 * torch.randn(200, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z0, ld0 = flow.encode(p)
    z1, ld1 = inn(p)
    assert ld0.abs().max() > 0.5  # a non-trivial flow
    torch.testing.assert_close(z1, z0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld1, ld0, rtol=1e-10, atol=1e-10)
    # inverse direction of the FrEIA network undoes our encoding
    x_back, _ = inn(z0, rev=True)
    torch.testing.assert_close(x_back, p, rtol=1e-9, atol=1e-9)


def test_freia_logdet_equals_brute_force_jacobian():
    flow = _random_flow(patch_size=2, hidden=8, dtype=torch.float64)  # D = 4
    inn = bp.freia_from_patchflow(flow)
    for k in range(3):
        p = torch.randn(4, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda v: inn(v[None])[0][0], p)
        _, logabsdet = torch.linalg.slogdet(jac)
        with torch.no_grad():
            ld = float(inn(p[None])[1][0])
        assert ld == pytest.approx(float(logabsdet), abs=1e-9)


def test_freia_copy_of_the_shipped_patchnr_ct_flow():
    from bayesinv.data.pretrained import load_flow_weights, weight_files

    if not weight_files("patchnr_ct")["weights"].exists():
        pytest.skip("shipped patchnr_ct weights not found")
    flow = load_flow_weights("patchnr_ct")
    check = bp.check_weight_copy(flow, bp.freia_from_patchflow(flow), n=500)
    assert check["nll_max_rel"] < 1e-5 and check["logdet_max_rel"] < 1e-5, check


def test_reference_network_is_the_create_nf_architecture():
    import FrEIA.modules as Fm

    inn = bp.reference_network(hidden=32)
    kinds = [type(m) for m in inn]
    assert kinds == [Fm.GLOWCouplingBlock, Fm.PermuteRandom] * 5
    lin = [m for m in inn[0].subnet1 if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(18, 32), (32, 32), (32, 36)]
    p = torch.randn(10, 36)
    z, ld = inn(p, rev=True)
    back, ld_f = inn(z)
    torch.testing.assert_close(back, p, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ld_f, -ld, rtol=1e-4, atol=1e-4)


# ============================================================================ patchNR MAP peer
def test_peer_regulariser_equals_prior_energy_on_all_patches():
    flow = _random_flow()
    inn = bp.freia_from_patchflow(flow)
    x = torch.rand(1, 1, 11, 10, generator=torch.Generator().manual_seed(1))
    for pad in (0, 2):
        prior = PatchNRPrior(flow, (1, 11, 10), weight=1.0, n_patches=None, pad=pad)
        with torch.no_grad():
            expected = float(prior.energy(x))
            got = float(bp.peer_regulariser(inn, x, None, patch_size=4, pad=pad))
        assert got == pytest.approx(expected, rel=1e-5)


def test_peer_map_retraces_map_estimate_with_a_deterministic_regulariser():
    from bayesinv.infer.map import map_estimate
    from bayesinv.operators.tomography import Radon
    from bayesinv.problem import InverseProblem

    flow = _random_flow()
    inn = bp.freia_from_patchflow(flow).requires_grad_(False)
    op = Radon.sparse_view((1, 12, 12), n_angles=6)
    truth = torch.zeros(1, 1, 12, 12)
    truth[..., 3:9, 4:8] = 0.8
    lam, sigma = 3.0, 0.5
    problem = InverseProblem(op, PatchNRPrior(flow, (1, 12, 12), lam, n_patches=None, pad=2), noise=sigma)
    y = problem.simulate(truth, seed=1)
    x0 = op.init_estimate(y)
    ours = map_estimate(problem, y, method="image", steps=8, lr=0.01, seed=0, tol=0.0,
                        progress=False).point_estimate
    peer = bp.peer_map(inn, op, y, x0, lam=lam, sigma=sigma, n_patches=None, lr=0.01, steps=8,
                       patch_size=4, pad=2)
    assert float((peer[0] - x0[0]).abs().max()) > 0.05  # it moved
    torch.testing.assert_close(peer[0], ours, rtol=0, atol=1e-4)


# ============================================================================ Langevin peers
def _quadratic(prec: torch.Tensor, mean: torch.Tensor):
    return lambda x: 0.5 * ((x - mean) * prec * (x - mean)).sum()


def test_peer_ula_step_equals_our_ula_step_for_the_same_noise():
    x0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    prec = torch.linspace(0.5, 3.0, 12, dtype=torch.float64).reshape(3, 4)
    mean = torch.full((3, 4), 0.3, dtype=torch.float64)
    u = _quadratic(prec, mean)
    step = 0.05
    torch.manual_seed(11)
    xi = torch.randn(3, 4, dtype=torch.float64)
    by_hand = x0 - step * prec * (x0 - mean) + math.sqrt(2 * step) * xi
    torch.manual_seed(11)
    peer, energies = bl.peer_ula(u, x0, step, 1)
    kernel = ULA(lambda p: u(p["x"]), step)
    torch.manual_seed(11)
    kernel.initial_params = {"x": x0}
    kernel.setup(0)
    ours = kernel.sample(kernel.initial_params)["x"]
    torch.testing.assert_close(peer[0], by_hand, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours, by_hand, rtol=0, atol=1e-12)
    assert float(energies[0]) == pytest.approx(float(u(by_hand)), rel=1e-12)


def test_peer_mala_chain_equals_our_mala_chain():
    prec = torch.linspace(1.0, 20.0, 16, dtype=torch.float64).reshape(4, 4)
    u = _quadratic(prec, torch.zeros(4, 4, dtype=torch.float64))
    x0 = torch.full((4, 4), 0.5, dtype=torch.float64)
    step, n = 0.08, 60
    torch.manual_seed(5)
    chain, energies, probs = bl.peer_mala(u, x0, step, n)
    kernel = MALA(lambda p: u(p["x"]), step, adapt_step_size=False)
    torch.manual_seed(5)
    kernel.initial_params = {"x": x0}
    kernel.setup(0)
    params = kernel.initial_params
    ours, ours_probs = [], []
    for _ in range(n):
        params = kernel.sample(params)
        ours.append(params["x"])
        ours_probs.append(kernel.last_stats["accept_prob"])
    assert 0.1 < float(probs.mean()) < 0.95  # both branches (accept and reject) were taken
    torch.testing.assert_close(torch.stack(ours), chain, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.tensor(ours_probs, dtype=torch.float64), probs, rtol=1e-9, atol=1e-12)


def test_sample_posterior_equals_the_peer_with_its_chain_seed():
    from bayesinv.infer.mcmc import sample_posterior
    from bayesinv.testing import linear_gaussian_problem

    case = linear_gaussian_problem((1, 3, 3), sigma=0.2)
    problem, y = case.problem, case.y
    x0 = case.mean.reshape(1, 3, 3).clone()
    step, n = 1e-3, 25
    post = sample_posterior(problem, y, kernel="ula", num_chains=1, num_samples=n, warmup_steps=0,
                            init=x0, step_size=step, seed=4, progress=False)
    torch.manual_seed(bl.sample_posterior_chain_seed(4))
    peer, energies = bl.peer_ula(lambda x: problem.potential(x[None], y, space="image").sum(), x0, step, n)
    torch.testing.assert_close(post.samples[0].to(peer.dtype), peer, rtol=0, atol=1e-10)
    torch.testing.assert_close(-post.sample_stats["lp"][0], energies.to(torch.float64), rtol=1e-9, atol=1e-9)


def test_peer_ula_has_the_ula_stationary_variance():
    # ULA on N(0, 1): x' = (1 - d) x + sqrt(2d) xi, stationary variance 2d / (1 - (1 - d)^2)
    d = 0.5
    expected = 2 * d / (1 - (1 - d) ** 2)  # = 1 / (1 - d/2) = 1.333
    torch.manual_seed(0)
    chain, _ = bl.peer_ula(lambda x: 0.5 * x.pow(2).sum(), torch.zeros(4000, dtype=torch.float64), d, 30)
    var = float(chain[-1].var())
    assert var == pytest.approx(expected, rel=0.08)  # sd of the estimate ~ 2.2 %


# ============================================================================ bad inputs
@pytest.mark.parametrize("kwargs, match", [
    (dict(step=-1.0), "step"), (dict(step=float("nan")), "step"), (dict(n_iter=0), "n_iter"),
    (dict(n_iter=2.5), "n_iter"), (dict(x0=torch.tensor([float("nan")])), "x0"),
])
def test_peer_langevin_bad_inputs(kwargs, match):
    args = dict(x0=torch.zeros(2), step=0.1, n_iter=3)
    args.update(kwargs)
    for fn in (bl.peer_ula, bl.peer_mala):
        with pytest.raises(ValueError, match=match):
            fn(lambda x: x.pow(2).sum(), **args)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lam=0.0), "lam"), (dict(sigma=-1.0), "sigma"), (dict(lr=float("inf")), "lr"),
    (dict(steps=0), "steps"), (dict(n_patches=0), "n_patches"), (dict(x0=torch.zeros(1, 8, 8)), "x0"),
    (dict(patch_size=0), "patch_size"),
])
def test_peer_map_bad_inputs(kwargs, match):
    flow = _random_flow(hidden=4, n_blocks=1)
    inn = bp.freia_from_patchflow(flow)
    args = dict(lam=1.0, sigma=1.0, n_patches=None, lr=0.01, steps=2, x0=torch.zeros(1, 1, 8, 8),
                patch_size=4)
    args.update(kwargs)
    x0 = args.pop("x0")
    with pytest.raises(ValueError, match=match):
        bp.peer_map(inn, lambda x: x, torch.zeros(1, 1, 8, 8), x0, pad=0, **args)


def test_freia_mapping_bad_inputs():
    with pytest.raises(TypeError, match="flow"):
        bp.freia_from_patchflow(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="flow"):
        bp.freia_from_patchflow(PatchFlow(patch_size=3, hidden=4, n_blocks=1))  # D = 9 is odd


# ============================================================================ main() plumbing
def test_langevin_main_tiny(tmp_path, monkeypatch):
    monkeypatch.setitem(bl.QUICK, "ula_iters", 3)
    monkeypatch.setitem(bl.QUICK, "mala_iters", 2)
    res = bl.main(quick=True, out_dir=tmp_path)
    assert (tmp_path / "langevin.quick.json").exists() and (tmp_path / "langevin.quick.md").exists()
    assert not (tmp_path / "langevin.json").exists()
    for kind in ("ula", "mala"):
        assert res[kind]["checks"]["ours_kernel"]["chain_max_abs_diff"] == 0.0
        # one gradient per step: sample_posterior's chain is the unshifted peer chain
        assert res[kind]["checks"]["ours_sample_posterior"]["chain_max_abs_diff"] == 0.0
        assert res[kind]["ratio_ours_sample_posterior_over_peer_cpu"] > 0
    assert res["threads"] == 1 and "torchvision::nms" in res["deepinv"]


def test_patchnr_peer_main_tiny(tmp_path, monkeypatch):
    monkeypatch.setattr(bp, "QUICK", {"steps": 3, "repeats": 1, "n_cost": 64, "cost_repeats": 1,
                                      "ref_hidden": 16})
    res = bp.main(quick=True, out_dir=tmp_path)
    assert (tmp_path / "patchnr_peer.quick.json").exists() and (tmp_path / "patchnr_peer.quick.md").exists()
    assert not (tmp_path / "patchnr_peer.json").exists()
    assert res["weight_copy_check"]["nll_max_rel"] < 1e-5
    assert res["same_patches_energy"]["rel_diff"] < 1e-5
    assert len(res["ours"]["final_psnr"]) == 1 and res["ratio_peer_over_ours"]["per_iteration_cpu"] > 0
    assert "torchvision::nms" in res["deepinv"]
