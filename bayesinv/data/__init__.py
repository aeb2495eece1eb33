"""Embedded data: scikit-image sample images, procedural phantoms, and shipped flow weights."""

from .images import (
    IMAGE_NAMES,
    NATURAL_TRAIN_NAMES,
    TEXTURE_NAMES,
    ellipse_phantoms,
    image_crops,
    load_image,
)
from .pretrained import available, load_flow_weights, load_prior, training_log
from .velocity import faulted_velocity, from_unit, layered_velocity, to_unit, velocity_models

__all__ = ["IMAGE_NAMES", "NATURAL_TRAIN_NAMES", "TEXTURE_NAMES", "load_image", "ellipse_phantoms", "image_crops",
           "available", "load_flow_weights", "load_prior", "training_log", "velocity_models",
           "layered_velocity", "faulted_velocity", "to_unit", "from_unit"]
