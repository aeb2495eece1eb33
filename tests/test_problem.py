"""InverseProblem: the Pyro model's sites, simulation, potentials and input validation."""

import pyro
import pyro.poutine as poutine
import pytest
import torch

from bayesinv import GaussianNoise, InverseProblem
from bayesinv.infer import gaussian_posterior_mean, gaussian_posterior_moments
from bayesinv.operators.matrix import MatrixOperator, random_gaussian_matrix
from bayesinv.priors import GaussianPrior
from bayesinv.testing import linear_gaussian_problem


@pytest.fixture
def case():
    return linear_gaussian_problem((1, 4, 4), m=8, sigma=0.1, seed=3)


def test_model_trace_has_documented_sites(case):
    trace = poutine.trace(case.problem.model).get_trace(case.y)
    sites = {k: v for k, v in trace.nodes.items() if v["type"] == "sample"}
    assert set(sites) == {"measurements", "z", "x", "y"}
    assert sites["z"]["value"].shape == (1, 1, 4, 4)
    assert sites["x"]["value"].shape == (1, 1, 4, 4)
    assert sites["x"]["infer"].get("_deterministic", False)
    assert sites["y"]["is_observed"]
    assert sites["y"]["fn"].event_shape == (8,)


def test_model_batches_measurements(case):
    y = case.y.expand(3, -1)
    trace = poutine.trace(case.problem.model).get_trace(y)
    assert trace.nodes["z"]["value"].shape == (3, 1, 4, 4)
    assert trace.nodes["y"]["fn"].batch_shape == (3,)


def test_prior_predictive_samples_y(case):
    y = case.problem.model(batch_size=5)
    assert y.shape == (5, 8)


def test_potential_matches_pyro_log_joint_up_to_a_constant(case):
    """potential(z) and Pyro's log joint differ by a z-independent constant."""
    problem, y = case.problem, case.y
    diffs = []
    for seed in range(3):
        z = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        conditioned = poutine.condition(problem.model, data={"z": z})
        log_joint = poutine.trace(conditioned).get_trace(y).log_prob_sum()
        diffs.append(float(log_joint + problem.potential(z, y, space="latent").sum()))
    assert max(diffs) - min(diffs) < 1e-9
    # the latent prior term of the potential is normalised; the likelihood's constant is not
    assert diffs[0] == pytest.approx(problem.noise.log_normalizer(8), abs=1e-9)


def test_image_and_latent_potentials_agree_up_to_log_det(case):
    problem, y = case.problem, case.y
    z = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    x = problem.prior.generate(z)
    u_latent = problem.potential(z, y, space="latent")
    u_image = problem.potential(x, y, space="image")
    # U_image(x) = U_latent(z) + log|det L| + const(d): the same up to a constant
    gap = u_image - u_latent
    assert torch.allclose(gap, gap[0].expand_as(gap), atol=1e-9)


def test_posterior_mean_through_pyro_model_matches_closed_form(case):
    """Optimising the Pyro model's log joint over z gives the closed-form posterior mean."""
    problem, y = case.problem, case.y
    z = torch.zeros(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([z], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        conditioned = poutine.condition(problem.model, data={"z": z})
        loss = -poutine.trace(conditioned).get_trace(y).log_prob_sum()
        loss.backward()
        return loss

    opt.step(closure)
    x_map = problem.prior.generate(z.detach()).reshape(-1)
    assert torch.allclose(x_map, case.mean, atol=1e-6)
    x_cg = gaussian_posterior_mean(problem, y, tol=1e-12).reshape(-1)
    assert torch.allclose(x_cg, case.mean, atol=1e-4)


def test_simulate_is_seeded_and_has_the_right_noise_level():
    d = 64
    op = MatrixOperator(random_gaussian_matrix(400, d, seed=0), (1, 8, 8))
    problem = InverseProblem(op, GaussianPrior(0.5, torch.eye(d), image_shape=(1, 8, 8)), 0.05)
    x = torch.rand(1, 1, 8, 8)
    y1, y2 = problem.simulate(x, seed=7), problem.simulate(x, seed=7)
    assert torch.equal(y1, y2)
    residual = y1 - op(x)
    assert float(residual.std()) == pytest.approx(0.05, rel=0.1)


def test_noise_given_as_float_or_object():
    case = linear_gaussian_problem((1, 2, 2), m=2)
    p = InverseProblem(case.problem.operator, case.problem.prior, GaussianNoise(0.2))
    assert p.noise.sigma == 0.2


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_sigma_is_refused(case, sigma):
    with pytest.raises(ValueError, match="sigma"):
        InverseProblem(case.problem.operator, case.problem.prior, sigma)


def test_mismatched_operator_and_prior_are_refused(case):
    prior = GaussianPrior.stationary((1, 8, 8))
    with pytest.raises(ValueError, match="operator/prior"):
        InverseProblem(case.problem.operator, prior, 0.1)


def test_wrong_types_are_refused(case):
    with pytest.raises(TypeError, match="operator"):
        InverseProblem(lambda x: x, case.problem.prior, 0.1)
    with pytest.raises(TypeError, match="prior"):
        InverseProblem(case.problem.operator, object(), 0.1)
    with pytest.raises(TypeError, match="noise"):
        InverseProblem(case.problem.operator, case.problem.prior, "0.1")


def test_bad_measurements_are_refused(case):
    problem = case.problem
    with pytest.raises(ValueError, match="y"):
        problem.check_measurement(torch.zeros(1, 7))
    bad = case.y.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="y: contains 1 NaN"):
        problem.check_measurement(bad)
    with pytest.raises(TypeError, match="y"):
        problem.check_measurement([1.0] * 8)
    with pytest.raises(ValueError, match="y"):
        pyro.poutine.trace(problem.model).get_trace(torch.zeros(2, 9))


def test_bad_images_are_refused(case):
    with pytest.raises(ValueError, match="x"):
        case.problem.simulate(torch.zeros(1, 1, 5, 4))
    with pytest.raises(ValueError, match="x: contains"):
        case.problem.simulate(torch.full((1, 4, 4), float("inf")))


def test_potential_space_validation(case):
    with pytest.raises(ValueError, match="space"):
        case.problem.potential(torch.zeros(1, 1, 4, 4), case.y, space="pixel")


def test_dense_moments_refuse_large_problems():
    big = linear_gaussian_problem((1, 4, 4), m=4)
    moments = gaussian_posterior_moments(big.problem, big.y)
    assert moments[0].shape == (16,)
