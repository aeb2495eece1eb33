"""Contract tests of every flow layer and flow (bayesinv.flows), patch extraction and FlowPrior.

One parametrised contract (zuko style) runs over every layer and flow, including conditional
ones with a context: shapes, inverse(forward) = id, log-det = brute-force Jacobian slogdet
(float64, parameters randomly perturbed since zero-init couplings start as the identity),
finite parameter gradients, save/load round trip, TransformedDistribution agreement.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from bayesinv.flows.conditional import ConditionalGlow
from bayesinv.flows.glow import Glow
from bayesinv.flows.io import load_flow, save_flow
from bayesinv.flows.layers import (
    ActNorm,
    AffineCoupling,
    FlowLayer,
    Invertible1x1Conv,
    Permutation,
    Squeeze,
    glow_step,
)
from bayesinv.flows.patch import PatchFlow
from bayesinv.operators.matrix import MatrixOperator
from bayesinv.priors.flow import FlowPrior
from bayesinv.priors.patches import extract_patches, random_patches
from bayesinv.problem import InverseProblem


# ---------------------------------------------------------------------------------------------
# cases: build(seed) -> transform (a Pyro TransformModule latent -> data), latent shape,
# optional context, and whether it is a registered flow (save/load through bayesinv.flows.io)
@dataclass
class Case:
    name: str
    build: Callable[[int], torch.nn.Module]
    latent_shape: tuple[int, ...]
    data_shape: tuple[int, ...]
    context_shape: tuple[int, ...] | None = None
    registered: bool = False


def _mlp_hidden() -> list[int]:
    return [16, 16]


CASES = [
    Case("actnorm_image", lambda s: ActNorm(3, 3), (3, 4, 4), (3, 4, 4)),
    Case("actnorm_vector", lambda s: ActNorm(8, 1), (8,), (8,)),
    Case("conv1x1", lambda s: Invertible1x1Conv(4, seed=s), (4, 4, 4), (4, 4, 4)),
    Case("coupling_image", lambda s: AffineCoupling(4, 3, hidden=8), (4, 4, 4), (4, 4, 4)),
    Case("coupling_image_odd", lambda s: AffineCoupling(3, 3, hidden=8, parity=1), (3, 4, 4), (3, 4, 4)),
    Case("coupling_vector", lambda s: AffineCoupling(8, 1, hidden=_mlp_hidden()), (8,), (8,)),
    Case("coupling_vector_parity1", lambda s: AffineCoupling(7, 1, hidden=16, parity=1), (7,), (7,)),
    Case("squeeze", lambda s: Squeeze(), (4, 2, 2), (1, 4, 4)),
    Case("permutation_vector", lambda s: Permutation(8, 1, seed=s), (8,), (8,)),
    Case("permutation_channels", lambda s: Permutation(4, 3, seed=s), (4, 2, 2), (4, 2, 2)),
    Case("glow_1x4x4", lambda s: Glow((1, 4, 4), levels=2, steps=2, hidden=8, seed=s),
         (16,), (1, 4, 4), registered=True),
    Case("glow_2x4x4", lambda s: Glow((2, 4, 4), levels=1, steps=2, hidden=8, seed=s),
         (32,), (2, 4, 4), registered=True),
    Case("patchflow", lambda s: PatchFlow(patch_size=2, channels=2, n_blocks=2, hidden=16, seed=s),
         (8,), (8,), registered=True),
    Case("cond_glow_image_ctx", lambda s: ConditionalGlow((1, 4, 4), (1, 2, 2), levels=2, steps=1,
                                                          hidden=8, cond_channels=2, cond_hidden=4, seed=s),
         (16,), (1, 4, 4), context_shape=(1, 2, 2), registered=True),
    Case("cond_glow_vector_ctx", lambda s: ConditionalGlow((1, 4, 4), (5,), levels=1, steps=2, hidden=8,
                                                           cond_channels=2, cond_hidden=4, seed=s),
         (16,), (1, 4, 4), context_shape=(5,), registered=True),
]


def _perturb(module: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    """Random (seeded) perturbation of all parameters; mark ActNorms initialised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))
        for m in module.modules():
            if isinstance(m, ActNorm):
                m.initialized.fill_(True)
                m._init_known = False


def _make(case: Case, dtype: torch.dtype, seed: int = 0, scale: float = 0.3):
    module = case.build(seed).to(dtype)
    _perturb(module, seed + 100, scale)
    gen = torch.Generator().manual_seed(seed + 7)
    ctx = None
    if case.context_shape is not None:
        ctx = torch.randn((2, *case.context_shape), generator=gen, dtype=dtype)
    transform = module.condition(ctx) if ctx is not None else module
    u = torch.randn((2, *case.latent_shape), generator=gen, dtype=dtype)
    return module, transform, u, ctx


def _base(case: Case, dtype: torch.dtype) -> dist.Distribution:
    return dist.Normal(torch.zeros((), dtype=dtype), 1.0).expand(case.latent_shape).to_event(
        len(case.latent_shape))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_flow_contract(case: Case, tmp_path):
    # --- shapes and round trip, float64 and float32 ------------------------------------------
    for dtype, atol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        module, t, u, ctx = _make(case, dtype, scale=0.1)
        assert isinstance(t, pyro.distributions.torch_transform.TransformModule)
        assert t.bijective
        x = t(u)
        assert x.shape == (2, *case.data_shape) and x.dtype == dtype
        assert tuple(t.forward_shape(u.shape)) == tuple(x.shape)
        assert tuple(t.inverse_shape(x.shape)) == tuple(u.shape)
        ladj = t.log_abs_det_jacobian(u, x)
        assert ladj.shape == (2,)
        u_back = t.inv(x)
        torch.testing.assert_close(u_back, u, atol=atol, rtol=0)
        torch.testing.assert_close(t(t.inv(x)), x, atol=atol * max(1.0, float(x.detach().abs().max())), rtol=0)
        # the inverse direction's log-det is the negative (fresh calls, no cache)
        t2 = module.condition(ctx) if ctx is not None else module
        x2 = t2(u)
        u2 = t2.inv(x2.clone())
        torch.testing.assert_close(t2.log_abs_det_jacobian(u2, x2.clone()), ladj,
                                   atol=1e-4 if dtype == torch.float32 else 1e-10, rtol=1e-5)

    # --- brute-force log-det in float64 --------------------------------------------------------
    module, t, u, ctx = _make(case, torch.float64)
    x = t(u)
    ladj = t.log_abs_det_jacobian(u, x)
    for b in range(2):
        tb = module.condition(ctx[b:b + 1]) if ctx is not None else module

        def f(v, tb=tb):
            return tb(v.reshape(1, *case.latent_shape)).reshape(-1)

        jac = torch.autograd.functional.jacobian(f, u[b].reshape(-1))
        sign, logabs = torch.linalg.slogdet(jac)
        assert float(sign) != 0
        torch.testing.assert_close(ladj[b], logabs, atol=1e-8, rtol=1e-8)
    if case.name.startswith("coupling") or case.name.startswith("glow"):
        assert float(ladj.detach().abs().max()) > 1e-3  # the perturbation made the log-det non-trivial

    # --- TransformedDistribution agreement (and vs. the flows' own log_prob) ------------------
    base = module.conditional_base() if ctx is not None else _base(case, torch.float64)
    td = (dist.ConditionalTransformedDistribution(base, [module]).condition(ctx) if ctx is not None
          else dist.TransformedDistribution(base, [module]))
    assert tuple(td.event_shape) == case.data_shape
    lp_td = td.log_prob(x.detach())
    lp_brute = torch.stack([
        _base(case, torch.float64).log_prob(u[b]) - torch.linalg.slogdet(torch.autograd.functional.jacobian(
            lambda v, b=b: (module.condition(ctx[b:b + 1]) if ctx is not None else module)(
                v.reshape(1, *case.latent_shape)).reshape(-1), u[b].reshape(-1)))[1]
        for b in range(2)])
    torch.testing.assert_close(lp_td, lp_brute, atol=1e-8, rtol=1e-8)
    if case.registered:
        own = module.log_prob(x.detach(), ctx) if ctx is not None else module.log_prob(x.detach())
        torch.testing.assert_close(own, lp_td, atol=1e-10, rtol=1e-10)
        draws = td.rsample((3,))
        assert draws.shape == ((3, 2, *case.data_shape) if ctx is not None else (3, *case.data_shape))

    # --- finite gradients of log_prob w.r.t. every parameter -------------------------------
    module.zero_grad()
    x_data = x.detach() + 0.01
    t_fresh = module.condition(ctx) if ctx is not None else module
    lp = (dist.ConditionalTransformedDistribution(base, [module]).condition(ctx) if ctx is not None
          else dist.TransformedDistribution(base, [t_fresh])).log_prob(x_data)
    assert bool(torch.isfinite(lp).all())
    params = list(module.parameters())
    if params:
        lp.sum().backward()
        grads = [p.grad for p in params]
        assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0

    # --- save / load round trip: identical outputs ------------------------------------------
    if case.registered:
        path = tmp_path / "flow.safetensors"
        save_flow(module, path)
        loaded = load_flow(path)
        assert type(loaded) is type(module) and loaded.config == module.config
        t_l = loaded.condition(ctx) if ctx is not None else loaded
        assert torch.equal(t_l(u), t(u))
        assert torch.equal(t_l.inv(x.detach()), t.inv(x.detach()))
    else:
        fresh = case.build(1).to(torch.float64)
        fresh.load_state_dict(st_load(st_save({k: v.contiguous() for k, v in module.state_dict().items()})))
        assert torch.equal(fresh(u), t(u))
        assert torch.equal(fresh.inv(x.detach()), t.inv(x.detach()))


# ---------------------------------------------------------------------------------------------
def test_actnorm_data_dependent_init_and_persists(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(64, 3, 5, 5, generator=gen) * torch.tensor([1.0, 0.5, 4.0])[:, None, None]
    layer = ActNorm(3)
    assert not bool(layer.initialized)
    u = layer.inv(x)
    assert bool(layer.initialized)
    torch.testing.assert_close(u.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(u.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    # a second batch does not re-initialise; the flag survives a state_dict round trip
    bias = layer.bias.detach().clone()
    layer.inv(x + 10.0)
    assert torch.equal(layer.bias.detach(), bias)
    fresh = ActNorm(3)
    fresh.load_state_dict(st_load(st_save(dict(layer.state_dict()))))
    assert bool(fresh.initialized) and torch.equal(fresh.bias, layer.bias)
    fresh.inv(x - 5.0)  # loaded as initialised: no re-initialisation on new data
    assert torch.equal(fresh.bias.detach(), bias)

    # Glow: first encode initialises every ActNorm, save/load keeps the flags
    glow = Glow((1, 4, 4), levels=2, steps=1, hidden=8)
    z, _ = glow.encode(torch.rand(32, 1, 4, 4, generator=gen))
    assert all(bool(m.initialized) for m in glow.modules() if isinstance(m, ActNorm))
    save_flow(glow, tmp_path / "g.safetensors")
    back = load_flow(tmp_path / "g.safetensors")
    assert all(bool(m.initialized) for m in back.modules() if isinstance(m, ActNorm))


def test_conv1x1_lu_weight_and_inverse():
    layer = Invertible1x1Conv(5, seed=3).double()
    _perturb(layer, 1)
    w, w_inv = layer.weight(), layer.inverse_weight()
    torch.testing.assert_close(w @ w_inv, torch.eye(5, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.slogdet(w)[1], layer.log_s.sum(), atol=1e-12, rtol=0)
    # an unperturbed layer is a rotation
    rot = Invertible1x1Conv(5, seed=3).double().weight()
    torch.testing.assert_close(rot @ rot.T, torch.eye(5, dtype=torch.float64), atol=1e-6, rtol=0)


def test_zero_init_couplings_are_identity():
    x = torch.randn(3, 4, 4, 4)
    c = AffineCoupling(4, 3, hidden=8)
    torch.testing.assert_close(c.inv(x), x)
    steps = glow_step(4, hidden=8)
    assert [type(s) for s in steps] == [ActNorm, Invertible1x1Conv, AffineCoupling]
    assert all(isinstance(s, FlowLayer) for s in steps)


def test_coupling_scale_is_bounded():
    c = AffineCoupling(4, 1, hidden=8, clamp=0.5).double()
    _perturb(c, 0, scale=50.0)
    x = 100 * torch.randn(10, 4, dtype=torch.float64)
    _, ld = c.inverse_and_ladj(x)
    assert float(ld.detach().abs().max()) <= 0.5 * 2 + 1e-12  # |s| <= clamp on each of the 2 updated features


def test_conditional_conveniences_batched_over_contexts():
    flow = ConditionalGlow((1, 4, 4), (1, 8, 8), levels=2, steps=1, hidden=8, cond_channels=2,
                           cond_hidden=4).double()
    _perturb(flow, 5)
    y = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    x, logq = flow.rsample_and_log_prob(y, n=4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 1, 4, 4) and logq.shape == (4, 3)
    torch.testing.assert_close(flow.log_prob(x, y), logq, atol=1e-9, rtol=1e-9)
    # the context matters, and per-context evaluation equals the batched one
    with torch.no_grad():
        assert float((flow.log_prob(x[0], y) - flow.log_prob(x[0], y.flip(0))).abs().max()) > 1e-3
    torch.testing.assert_close(flow.log_prob(x[0, 1:2], y[1:2]), logq[0, 1:2], atol=1e-9, rtol=1e-9)
    s = flow.sample(y, 2)
    assert s.shape == (2, 3, 1, 4, 4) and not s.requires_grad
    # rsample is differentiable w.r.t. the parameters (backward KL)
    x, logq = flow.rsample_and_log_prob(y, n=2)
    (x.pow(2).sum() + logq.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in flow.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="y"):
        flow.log_prob(x[0], torch.randn(3, 2, 8, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="y"):
        flow.log_prob(x[0], [1.0, 2.0])

    # a 2-D (sinogram-like) context is flattened through the context MLP
    sino = ConditionalGlow((1, 4, 4), (3, 5), levels=1, steps=1, hidden=8, cond_channels=2,
                           cond_hidden=4).double()
    _perturb(sino, 6)
    ys = torch.randn(2, 3, 5, dtype=torch.float64)
    xs, lq = sino.rsample_and_log_prob(ys, n=3)
    assert xs.shape == (3, 2, 1, 4, 4)
    torch.testing.assert_close(sino.log_prob(xs, ys), lq, atol=1e-9, rtol=1e-9)
    # the Pyro conditional distribution agrees with the convenience method
    d = dist.ConditionalTransformedDistribution(sino.conditional_base(), [sino]).condition(ys)
    torch.testing.assert_close(d.log_prob(xs), lq, atol=1e-9, rtol=1e-9)


def test_patchflow_energy_and_sampling():
    flow = PatchFlow(patch_size=3, channels=1, n_blocks=2, hidden=16).double()
    _perturb(flow, 2, scale=0.1)
    p = torch.randn(6, 9, dtype=torch.float64)
    z, ld = flow.encode(p)
    torch.testing.assert_close(flow.energy(p), 0.5 * z.pow(2).sum(-1) - ld)
    torch.testing.assert_close(flow.log_prob(p), -flow.energy(p) - 4.5 * math.log(2 * math.pi))
    assert flow.sample(5, generator=torch.Generator().manual_seed(0)).shape == (5, 9)
    with pytest.raises(ValueError, match="patches"):
        flow.energy(torch.randn(6, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="hidden"):
        PatchFlow(hidden=2.5)


def test_glow_sample_and_bad_inputs():
    g = Glow((1, 8, 8), levels=2, steps=1, hidden=8)
    a = g.sample(3, generator=torch.Generator().manual_seed(0))
    b = g.sample(3, generator=torch.Generator().manual_seed(0))
    assert a.shape == (3, 1, 8, 8) and torch.equal(a, b)
    # unbatched and multi-batch latents
    z = torch.randn(2, 5, 64)
    assert g.generate(z).shape == (2, 5, 1, 8, 8)
    with pytest.raises(ValueError, match="z"):
        g.generate(torch.randn(2, 63))
    with pytest.raises(ValueError, match="x"):
        g.encode(torch.randn(2, 1, 8, 4))
    with pytest.raises(ValueError, match="image_shape"):
        Glow((1, 6, 6), levels=2)
    with pytest.raises(ValueError, match="levels"):
        Glow((1, 8, 8), levels=0)
    with pytest.raises(ValueError, match="context_shape"):
        ConditionalGlow((1, 4, 4), (), levels=1)


# ---------------------------------------------------------------------------------------------
def test_io_corruption_raises_naming_the_file(tmp_path):
    flow = Glow((1, 4, 4), levels=1, steps=1, hidden=8)
    path = tmp_path / "prior.safetensors"
    cpath = save_flow(flow, path)
    assert cpath == tmp_path / "prior.json"
    meta = json.loads(cpath.read_text())
    assert meta["class"] == "Glow" and meta["format_version"] == 1 and meta["weights"]["size"] == path.stat().st_size
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries
    good = path.read_bytes()

    path.write_bytes(good[:-10])  # truncated
    with pytest.raises(ValueError, match="prior.safetensors.*truncated"):
        load_flow(path)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01  # one flipped bit
    path.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="prior.safetensors.*checksum"):
        load_flow(path)
    path.write_bytes(good)
    assert isinstance(load_flow(path), Glow)

    # wrong config: another architecture than the weights (checksum recomputed to match)
    bad = dict(meta, config=dict(meta["config"], steps=2))
    cpath.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="prior.safetensors.*do not match"):
        load_flow(path)
    cpath.write_text(json.dumps(dict(meta, config=dict(meta["config"], hidden=4))))
    with pytest.raises(ValueError, match="prior.safetensors.*shape"):
        load_flow(path)
    cpath.write_text(json.dumps(dict(meta, config=dict(meta["config"], bogus=1))))
    with pytest.raises(ValueError, match="prior.json.*config"):
        load_flow(path)
    cpath.write_text(json.dumps(dict(meta, format_version=99)))
    with pytest.raises(ValueError, match="prior.json.*format_version"):
        load_flow(path)
    cpath.write_text(json.dumps(dict(meta, **{"class": "os.system"})))
    with pytest.raises(ValueError, match="prior.json.*unknown flow class"):
        load_flow(path)
    cpath.write_text("{not json")
    with pytest.raises(ValueError, match="prior.json"):
        load_flow(path)
    cpath.unlink()
    with pytest.raises(ValueError, match="prior.json.*not found"):
        load_flow(path)
    # explicit config path
    other = tmp_path / "cfg" / "flow-config.json"
    save_flow(flow, path, config_path=other)
    assert torch.equal(load_flow(path, other).generate(torch.ones(1, 16)), flow.generate(torch.ones(1, 16)))
    with pytest.raises(TypeError, match="flow"):
        save_flow(ActNorm(2), path)


# ---------------------------------------------------------------------------------------------
def test_extract_patches_matches_naive_loop():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 6, generator=gen)
    for k, s in ((3, 1), (2, 2), (3, 2)):
        p = extract_patches(x, k, stride=s)
        naive = torch.stack([
            torch.stack([x[b, :, i:i + k, j:j + k].reshape(-1)
                         for i in range(0, 7 - k + 1, s) for j in range(0, 6 - k + 1, s)])
            for b in range(2)])
        assert torch.equal(p, naive)
    assert extract_patches(x[0, 0], 6).shape == (1, 2, 36)


def test_random_patches_match_naive_and_are_differentiable():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 9, 8, generator=gen, requires_grad=True)
    p, pos = random_patches(x, 4, 50, generator=torch.Generator().manual_seed(1), return_positions=True)
    assert p.shape == (2, 50, 32) and pos.shape == (2, 50, 2)
    naive = torch.stack([torch.stack([x[b, :, i:i + 4, j:j + 4].reshape(-1) for i, j in pos[b].tolist()])
                         for b in range(2)])
    assert torch.equal(p, naive)
    assert int(pos[..., 0].min()) >= 0 and int(pos[..., 0].max()) <= 5 and int(pos[..., 1].max()) <= 4
    # every valid position is reachable (uniform corners): with many draws all 6×5 corners appear
    _, pos_many = random_patches(x, 4, 2000, generator=torch.Generator().manual_seed(2), return_positions=True)
    assert len({tuple(v) for v in pos_many[0].tolist()}) == 30
    # gradients flow to x: d/dx sum(p) counts how often each pixel was sampled
    p.sum().backward()
    counts = torch.zeros_like(x)
    for b in range(2):
        for i, j in pos[b].tolist():
            counts[b, :, i:i + 4, j:j + 4] += 1
    assert torch.equal(x.grad, counts)
    # reproducible with a generator
    a = random_patches(x, 4, 5, generator=torch.Generator().manual_seed(3))
    b = random_patches(x, 4, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_random_patches_without_replacement_are_distinct_uniform_subsets():
    x = torch.randn(3, 1, 9, 8, generator=torch.Generator().manual_seed(0))
    p, pos = random_patches(x, 4, 12, generator=torch.Generator().manual_seed(1), return_positions=True,
                            replace=False)
    for b in range(3):  # 12 distinct corners of the 6×5 grid, and the patches at them
        assert len({tuple(v) for v in pos[b].tolist()}) == 12
        assert torch.equal(p[b], torch.stack([x[b, :, i:i + 4, j:j + 4].reshape(-1) for i, j in pos[b].tolist()]))
    _, full = random_patches(x, 4, 30, generator=torch.Generator().manual_seed(2), return_positions=True,
                             replace=False)
    assert sorted(map(tuple, full[0].tolist())) == [(i, j) for i in range(6) for j in range(5)]
    # each corner equally likely: over 600 draws of 6 of 30, each appears ~120 times (sd ~10)
    gen = torch.Generator().manual_seed(3)
    counts = torch.zeros(30)
    for _ in range(600):
        _, q = random_patches(x[:1], 4, 6, generator=gen, return_positions=True, replace=False)
        counts.index_add_(0, q[0, :, 0] * 5 + q[0, :, 1], torch.ones(6))
    assert float(counts.min()) > 80 and float(counts.max()) < 160
    with pytest.raises(ValueError, match="only 30 positions"):
        random_patches(x, 4, 31, replace=False)
    with pytest.raises(TypeError, match="replace"):
        random_patches(x, 4, 3, replace="no")


def test_patch_bad_inputs():
    x = torch.zeros(1, 1, 5, 5)
    with pytest.raises(ValueError, match="patch_size"):
        extract_patches(x, 6)
    with pytest.raises(TypeError, match="patch_size"):
        random_patches(x, 2.0, 3)
    with pytest.raises(ValueError, match="stride"):
        extract_patches(x, 2, stride=0)
    with pytest.raises(ValueError, match="n"):
        random_patches(x, 2, 0)
    with pytest.raises(ValueError, match="x"):
        extract_patches(torch.zeros(5), 2)


# ---------------------------------------------------------------------------------------------
def test_flow_prior_in_inverse_problem(tmp_path):
    glow = Glow((1, 4, 4), levels=2, steps=1, hidden=8)
    _perturb(glow, 3, scale=0.1)
    prior = FlowPrior(glow)
    assert prior.latent_shape == (16,) and prior.image_shape == (1, 4, 4)
    x = torch.rand(3, 1, 4, 4)
    torch.testing.assert_close(prior.log_prob(x), glow.log_prob(x))
    assert prior.sample(4, generator=torch.Generator().manual_seed(0)).shape == (4, 1, 4, 4)
    d = prior.describe()
    assert d["name"] == "FlowPrior" and d["flow"] == "Glow" and d["config"]["levels"] == 2
    json.dumps(d)

    gen = torch.Generator().manual_seed(4)
    op = MatrixOperator(torch.randn(8, 16, generator=gen) / 4, in_shape=(1, 4, 4))
    problem = InverseProblem(op, prior, noise=0.1)
    y = problem.simulate(x, seed=0)
    tr = pyro.poutine.trace(problem.model).get_trace(y)
    assert tr.nodes["z"]["value"].shape == (3, 16)
    assert tr.nodes["x"]["type"] == "sample" and tr.nodes["x"]["value"].shape == (3, 1, 4, 4)
    torch.testing.assert_close(tr.nodes["x"]["value"], glow.generate(tr.nodes["z"]["value"]))
    tr.compute_log_prob()
    assert torch.isfinite(tr.log_prob_sum())
    z = torch.randn(3, 16, requires_grad=True)
    u = problem.potential(z, y)
    assert u.shape == (3,) and bool(torch.isfinite(u).all())
    u.sum().backward()
    assert bool(torch.isfinite(z.grad).all())

    save_flow(glow, tmp_path / "glow.safetensors")
    again = FlowPrior.from_file(tmp_path / "glow.safetensors")
    torch.testing.assert_close(again.log_prob(x), prior.log_prob(x), atol=0, rtol=0)
    with pytest.raises(TypeError, match="flow"):
        FlowPrior(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="flow"):
        FlowPrior(ConditionalGlow((1, 4, 4), (3,), levels=1, steps=1, hidden=4))
