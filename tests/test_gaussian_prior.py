"""GaussianPrior as an affine flow: densities, sampling, precision, validation."""

import pytest
import torch
from torch.distributions import MultivariateNormal

from bayesinv.priors import GaussianPrior


def _random_spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


@pytest.fixture(params=["dense", "stationary"])
def prior(request):
    if request.param == "dense":
        return GaussianPrior(torch.rand(1, 3, 4, dtype=torch.float64), _random_spd(12, 0))
    return GaussianPrior.stationary((2, 4, 5), std=0.3, length_scale=1.2).to(torch.float64)


def test_log_prob_matches_multivariate_normal(prior):
    cov = prior.dense_covariance()
    ref = MultivariateNormal(prior.mean.reshape(-1), covariance_matrix=cov)
    x = prior.sample(5, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(prior.log_prob(x), ref.log_prob(x.flatten(1)), atol=1e-9)


def test_generate_encode_roundtrip_and_log_det(prior):
    z = torch.randn(3, *prior.latent_shape, dtype=torch.float64)
    x = prior.generate(z)
    z_back, log_det = prior.encode(x)
    assert torch.allclose(z_back, z, atol=1e-10)
    jac = torch.autograd.functional.jacobian(lambda v: prior.generate(v.reshape(prior.latent_shape)).reshape(-1),
                                             z[0].reshape(-1))
    assert torch.allclose(-torch.linalg.slogdet(jac)[1], log_det[0], atol=1e-9)


def test_precision_inverts_covariance(prior):
    v = torch.randn(2, *prior.image_shape, dtype=torch.float64)
    assert torch.allclose(prior.precision_matvec(prior.covariance_matvec(v)), v, atol=1e-8)


def test_sample_covariance_matches(prior):
    x = prior.sample(20000, generator=torch.Generator().manual_seed(2)).flatten(1)
    emp = torch.cov(x.T)
    cov = prior.dense_covariance()
    assert float((emp - cov).abs().max()) < 0.05 * float(cov.diagonal().max())


def test_stationary_covariance_is_the_periodic_kernel():
    # on a 16x16 torus the wrapped kernel is positive definite to ~1e-7, so the spectrum floor
    # does not act and the covariance is the kernel itself
    prior = GaussianPrior.stationary((1, 16, 16), std=0.5, length_scale=1.5, nugget=1e-8).to(torch.float64)
    cov = prior.dense_covariance().reshape(16, 16, 16, 16)
    # covariance between pixel (0,0) and (0,2): std^2 exp(-4/(2 l^2)) (torus distance 2)
    assert float(cov[0, 0, 0, 2]) == pytest.approx(0.25 * torch.exp(torch.tensor(-4 / 4.5)).item(), rel=1e-5)
    assert float(cov[0, 0, 0, 15]) == pytest.approx(0.25 * torch.exp(torch.tensor(-1 / 4.5)).item(), rel=1e-5)


def test_scale_tril_parametrisation():
    cov = _random_spd(6, 3)
    a = GaussianPrior(torch.zeros(1, 2, 3, dtype=torch.float64), cov)
    b = GaussianPrior(torch.zeros(1, 2, 3, dtype=torch.float64), scale_tril=torch.linalg.cholesky(cov))
    x = torch.randn(4, 1, 2, 3, dtype=torch.float64)
    assert torch.allclose(a.log_prob(x), b.log_prob(x))


def test_scalar_mean_needs_image_shape():
    with pytest.raises(ValueError, match="image_shape"):
        GaussianPrior(0.5, torch.eye(4))
    p = GaussianPrior(0.5, torch.eye(4), image_shape=(2, 2))
    assert p.image_shape == (1, 2, 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"covariance": torch.ones(4, 4)}, "positive definite"),
        ({"covariance": torch.eye(5)}, "covariance"),
        ({"covariance": torch.triu(torch.ones(4, 4))}, "symmetric"),
        ({"covariance": torch.full((4, 4), float("nan"))}, "covariance"),
        ({"scale_tril": -torch.eye(4)}, "scale_tril"),
        ({}, "exactly one"),
        ({"covariance": torch.eye(4), "scale_tril": torch.eye(4)}, "exactly one"),
    ],
)
def test_bad_parameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianPrior(torch.zeros(1, 2, 2), **kwargs)


def test_bad_stationary_parameters_are_refused():
    with pytest.raises(ValueError, match="std"):
        GaussianPrior.stationary((1, 4, 4), std=-1)
    with pytest.raises(ValueError, match="length_scale"):
        GaussianPrior.stationary((1, 4, 4), length_scale=0)
    with pytest.raises(ValueError, match="image_shape"):
        GaussianPrior.stationary((4,))
    with pytest.raises(TypeError, match="mean"):
        GaussianPrior([0.0, 1.0], torch.eye(2))


def test_describe_is_json_serialisable():
    import json

    json.dumps(GaussianPrior.stationary((1, 4, 4)).describe())
