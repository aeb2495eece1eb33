"""MAP estimation: exact on linear-Gaussian problems, in both latent and image coordinates."""

import pytest
import torch

from bayesinv.infer.map import map_estimate
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
