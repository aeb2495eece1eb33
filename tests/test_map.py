"""MAP estimation: exact on linear-Gaussian problems, in both latent and image coordinates."""

import pytest
import torch

from bayesinv.infer.map import map_estimate, restart_start
from bayesinv.testing import linear_gaussian_problem


@pytest.fixture
def case():
    return linear_gaussian_problem((1, 4, 4), m=8, sigma=0.1, seed=5)


def test_latent_map_is_the_posterior_mean_for_a_gaussian_prior(case):
    post = map_estimate(case.problem, case.y, method="latent", progress=False)
    assert post.kind == "point" and post.samples.shape == (1, 1, 1, 4, 4)
    assert torch.allclose(post.point_estimate.reshape(-1), case.mean, atol=1e-6)
    assert post.latent_samples.shape == (1, 1, 1, 4, 4)
    assert post.settings["loss_history"][-1] <= post.settings["loss_history"][0]


def test_image_map_with_adam_reaches_the_posterior_mean():
    # a short correlation length keeps the image-space potential well conditioned for Adam
    case = linear_gaussian_problem((1, 4, 4), m=8, sigma=0.1, length_scale=0.5, seed=5)
    post = map_estimate(case.problem, case.y, method="image", steps=2000, lr=0.01, tol=0,
                        progress=False)
    assert torch.allclose(post.point_estimate.reshape(-1), case.mean, atol=2e-3)


def test_image_map_with_lbfgs_is_exact(case):
    post = map_estimate(case.problem, case.y, method="image", optimizer="lbfgs", tol=0,
                        steps=100, progress=False)
    assert torch.allclose(post.point_estimate.reshape(-1), case.mean, atol=1e-6)


def test_gamma_zero_is_maximum_likelihood_in_latent_space():
    case = linear_gaussian_problem((1, 2, 2), m=4, sigma=0.1, seed=1)  # square, invertible
    post = map_estimate(case.problem, case.y, gamma=0.0, progress=False)
    op = case.problem.operator
    assert torch.allclose(op(post.samples[0]), case.y, atol=1e-6)


def test_restarts_keep_the_best_and_are_seeded(case):
    a = map_estimate(case.problem, case.y, restarts=3, seed=1, progress=False)
    b = map_estimate(case.problem, case.y, restarts=3, seed=1, progress=False)
    assert torch.equal(a.samples, b.samples)


def test_restart_start_perturbs_fixed_starts_and_redraws_random_ones():
    start = torch.zeros(1, 64, dtype=torch.float64)
    assert restart_start(start, 0, torch.Generator().manual_seed(0), fresh=True) is start
    near = restart_start(start + 3.0, 1, torch.Generator().manual_seed(0), fresh=False)
    new = restart_start(start + 3.0, 1, torch.Generator().manual_seed(0), fresh=True)
    assert near.dtype == new.dtype == torch.float64
    assert 0.05 < float((near - 3.0).pow(2).mean().sqrt()) < 0.2  # N(0, 0.1^2) around the start
    assert 0.7 < float(new.pow(2).mean().sqrt()) < 1.3  # a fresh N(0, I) draw, not near 3
    assert torch.allclose(near - 3.0, 0.1 * new)  # the same seeded draw


def test_gaussianized_restarts_are_independent_seeds(monkeypatch):
    import bayesinv.infer.map as map_module

    case = linear_gaussian_problem((1, 8, 8), m=16, sigma=0.1, seed=2)
    starts: list[torch.Tensor] = []
    minimise = map_module._minimise

    def recording(objective, v0, **kwargs):
        starts.append(v0.detach().clone())
        return minimise(objective, v0, **kwargs)

    monkeypatch.setattr(map_module, "_minimise", recording)

    class Scale(torch.nn.Module):
        def forward(self, z):
            return 2.0 * z

    def rms_gap():
        gap = float((starts[1] - starts[0]).pow(2).mean().sqrt())
        starts.clear()
        return gap

    map_estimate(case.problem, case.y, restarts=2, steps=2, seed=0, progress=False)
    assert rms_gap() < 0.2  # plain latent MAP: z0 = 0, then a small perturbation of it
    map_estimate(case.problem, case.y, gaussianize=Scale(), restarts=2, steps=2, seed=0, progress=False)
    assert rms_gap() > 1.0  # Gaussianized: two independent N(0, I) starts (gap ~ sqrt 2)


def test_gaussianize_hook_is_applied(case):
    class Scale(torch.nn.Module):
        def forward(self, z):
            return 2.0 * z

    plain = map_estimate(case.problem, case.y, progress=False)
    post = map_estimate(case.problem, case.y, gaussianize=Scale(), progress=False)
    assert torch.allclose(post.samples, plain.samples, atol=1e-5)  # same optimum, reparametrised
    assert post.settings["gaussianize"] is True


def test_callback_and_clamp(case):
    seen = []
    post = map_estimate(case.problem, case.y, method="image", steps=5, clamp=(0.0, 1.0),
                        callback=lambda i, loss, x: seen.append((i, loss)), progress=False)
    assert len(seen) == 5 and float(post.samples.min()) >= 0 and float(post.samples.max()) <= 1


def test_non_finite_objective_names_the_step(case):
    with pytest.raises(FloatingPointError, match="step 0.*learning rate"):
        map_estimate(case.problem, case.y, method="image", lr=1e300, steps=3,
                     init=torch.full((1, 4, 4), 1e300, dtype=torch.float64), progress=False)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"method": "sgd"}, ValueError, "method"),
        ({"optimizer": "rmsprop"}, ValueError, "optimizer"),
        ({"steps": 0}, ValueError, "steps"),
        ({"lr": -1.0}, ValueError, "lr"),
        ({"restarts": 1.5}, TypeError, "restarts"),
        ({"init": "random"}, ValueError, "init"),
        ({"init": torch.zeros(3, 3)}, ValueError, "init"),
        ({"clamp": (1.0, 0.0)}, ValueError, "clamp"),
        ({"method": "image", "gaussianize": torch.nn.Identity()}, ValueError, "gaussianize"),
    ],
)
def test_bad_arguments(case, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        map_estimate(case.problem, case.y, progress=False, **kwargs)


def test_bad_measurements(case):
    with pytest.raises(ValueError, match="y"):
        map_estimate(case.problem, torch.zeros(2, 8, dtype=torch.float64), progress=False)
    with pytest.raises(ValueError, match="y"):
        map_estimate(case.problem, torch.full((8,), float("nan")), progress=False)
