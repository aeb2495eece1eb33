"""Embedded data: every sample image loads offline, at the requested size, in [0, 1]."""

import pytest
import torch

from bayesinv.data import IMAGE_NAMES, ellipse_phantoms, image_crops, load_image


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_every_embedded_image_loads_gray_in_unit_range(name):
    x = load_image(name, size=32)
    assert x.shape == (1, 32, 32)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert float(x.std()) > 0.05  # not a blank image


def test_rectangular_size_crop_and_dtype():
    x = load_image("camera", size=(24, 40), crop=0.5, dtype=torch.float64)
    assert x.shape == (1, 24, 40) and x.dtype == torch.float64
    assert load_image("camera", size=None).shape == (1, 512, 512)


def test_phantoms_are_seeded_in_range_and_inside_the_circle():
    a, b = ellipse_phantoms(3, 48, seed=7), ellipse_phantoms(3, 48, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, ellipse_phantoms(3, 48, seed=8))
    assert a.shape == (3, 1, 48, 48) and float(a.min()) >= 0 and float(a.max()) <= 1
    c = (torch.arange(48) + 0.5) / 48 * 2 - 1
    outside = (c[:, None] ** 2 + c[None, :] ** 2) > 1.0
    assert float(a[..., outside].abs().max()) == 0.0
    assert float(a.mean()) > 0.05


def test_crops_are_seeded_and_from_the_image():
    a = image_crops("brick", 4, 16, seed=1)
    assert a.shape == (4, 1, 16, 16) and torch.equal(a, image_crops("brick", 4, 16, seed=1))


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "lena"}, "name"), ({"name": "camera", "size": 0}, "size"),
    ({"name": "camera", "crop": 1.5}, "crop"), ({"name": "camera", "size": (3, 4, 5)}, "size"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        load_image(**kwargs)


def test_bad_phantom_arguments():
    with pytest.raises(ValueError, match="n_ellipses"):
        ellipse_phantoms(1, 32, n_ellipses=(5, 2))
    with pytest.raises(ValueError, match="n"):
        ellipse_phantoms(0, 32)
