"""Procedural velocity models: seeding, range, layering, faults, unit maps, bad inputs."""

import time

import numpy as np
import pytest
import torch

from bayesinv.data.velocity import (
    VMAX,
    VMIN,
    faulted_velocity,
    from_unit,
    layered_velocity,
    to_unit,
    velocity_models,
)


def test_seeded_shapes_and_range():
    a = velocity_models(50, 32, seed=3)
    b = velocity_models(50, 32, seed=3)
    c = velocity_models(50, 32, seed=4)
    assert a.shape == (50, 1, 32, 32) and a.dtype == torch.get_default_dtype()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert float(a.min()) >= VMIN and float(a.max()) <= VMAX
    lay = layered_velocity(7, (16, 24), seed=1, vmin=2.0, vmax=3.0, dtype=torch.float64)
    assert lay.shape == (7, 1, 16, 24) and lay.dtype == torch.float64
    assert float(lay.min()) >= 2.0 and float(lay.max()) <= 3.0
    assert torch.equal(lay, layered_velocity(7, (16, 24), seed=1, vmin=2.0, vmax=3.0,
                                             dtype=torch.float64))


def test_layered_velocity_increases_with_depth_in_every_column():
    v = layered_velocity(200, 32, seed=0)
    dz = v[:, :, 1:] - v[:, :, :-1]
    assert float(dz.min()) >= 0.0  # non-decreasing down every column of every model
    row_mean = v.mean(dim=(0, 1, 3))
    assert bool((row_mean[1:] >= row_mean[:-1]).all())
    assert float(row_mean[-1] - row_mean[0]) > 1.0  # km/s, a real trend
    # number of distinct velocities per model lies in the layer range
    k = [len(torch.unique(m)) for m in v[:, 0]]
    assert min(k) >= 1 and max(k) <= 6
    assert np.mean(k) > 3.0
    # undulating interfaces: some models have lateral variation; flat ones have none
    flat = layered_velocity(20, 32, seed=0, undulation=0.0)
    lateral = (v[..., 1:] != v[..., :-1]).any(dim=-1).flatten(1).any(1)
    assert float(lateral.float().mean()) > 0.5
    # tilt still allows lateral changes without undulation, but far fewer
    assert (flat[..., 1:] != flat[..., :-1]).float().mean() < (v[..., 1:] != v[..., :-1]).float().mean()


def test_mixture_mean_velocity_increases_with_depth():
    v = velocity_models(400, 32, seed=11)
    row_mean = v.mean(dim=(0, 1, 3))
    # faults can invert a column locally; the mean over models still increases monotonically
    assert bool((row_mean[1:] >= row_mean[:-1] - 1e-3).all())
    assert float(row_mean[-4:].mean() - row_mean[:4].mean()) > 1.0


def test_faulted_models_have_a_lateral_discontinuity_at_the_fault():
    n = 100
    f, hang = faulted_velocity(n, 32, seed=5, throw=(4.0, 8.0), return_fault=True)
    lay = layered_velocity(n, 32, seed=5)
    # same random stream: identical to the layered model on the footwall, different on the hanging wall
    assert torch.equal(f[~hang], lay[~hang])
    diff_hanging = (f != lay) & hang
    assert float(diff_hanging.flatten(1).any(1).float().mean()) > 0.9
    # the velocity jumps across the fault trace far more often in faulted than in layered models
    cross = hang[..., 1:] & ~hang[..., :-1]  # (pixel j, j+1) straddles the fault
    jump_f = ((f[..., 1:] - f[..., :-1]).abs() > 1e-6) & cross
    jump_l = ((lay[..., 1:] - lay[..., :-1]).abs() > 1e-6) & cross
    rate_f = float(jump_f.sum()) / float(cross.sum())
    rate_l = float(jump_l.sum()) / float(cross.sum())
    assert rate_f > 0.25 and rate_f > 3 * rate_l
    # zero throw: no fault at all
    f0 = faulted_velocity(n, 32, seed=5, throw=(0.0, 0.0))
    assert torch.equal(f0, lay)


def test_unit_maps_round_trip_and_range():
    v = velocity_models(20, 32, seed=2, dtype=torch.float64)
    u = to_unit(v)
    assert float(u.min()) >= 0.0 and float(u.max()) <= 1.0
    torch.testing.assert_close(from_unit(u), v, rtol=0, atol=1e-12)
    assert float(to_unit(torch.tensor(VMIN))) == 0.0 and float(to_unit(torch.tensor(VMAX))) == 1.0
    a = np.array([2.0, 3.0])
    np.testing.assert_allclose(from_unit(to_unit(a, 1.0, 5.0), 1.0, 5.0), a)


def test_fast_for_1000_models():
    t0 = time.perf_counter()
    velocity_models(1000, 32, seed=0)
    assert time.perf_counter() - t0 < 2.0  # < 1 s unloaded; margin for a shared CI machine


@pytest.mark.parametrize(("fn", "kwargs", "exc", "match"), [
    (layered_velocity, {"n": 0}, ValueError, "n"),
    (layered_velocity, {"n": 2.5}, TypeError, "n"),
    (layered_velocity, {"n": 2, "size": 2}, ValueError, "size"),
    (layered_velocity, {"n": 2, "size": "a"}, TypeError, "size"),
    (layered_velocity, {"n": 2, "layers": (1, 3)}, ValueError, "layers"),
    (layered_velocity, {"n": 2, "layers": (4, 3)}, ValueError, "layers"),
    (layered_velocity, {"n": 2, "layers": 3}, TypeError, "layers"),
    (layered_velocity, {"n": 2, "vmin": 3.0, "vmax": 2.0}, ValueError, "vmax"),
    (layered_velocity, {"n": 2, "vmin": -1.0}, ValueError, "vmin"),
    (layered_velocity, {"n": 2, "undulation": -1.0}, ValueError, "undulation"),
    (layered_velocity, {"n": 2, "seed": -1}, ValueError, "seed"),
    (faulted_velocity, {"n": 2, "throw": (5.0, 1.0)}, ValueError, "throw"),
    (faulted_velocity, {"n": 2, "throw": (-1.0, 1.0)}, ValueError, "throw"),
    (faulted_velocity, {"n": 2, "throw": 3.0}, TypeError, "throw"),
    (velocity_models, {"n": 2, "faulted_fraction": 1.5}, ValueError, "faulted_fraction"),
])
def test_bad_inputs(fn, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fn(**kwargs)


def test_unit_map_bad_inputs():
    with pytest.raises(TypeError, match="v"):
        to_unit([1.0, 2.0])
    with pytest.raises(TypeError, match="u"):
        from_unit("x")
    with pytest.raises(ValueError, match="vmax"):
        to_unit(torch.ones(2), vmin=3.0, vmax=3.0)
