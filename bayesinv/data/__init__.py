"""Embedded data: scikit-image sample images, procedural phantoms, and shipped flow weights."""

from .images import IMAGE_NAMES, TEXTURE_NAMES, ellipse_phantoms, image_crops, load_image

__all__ = ["IMAGE_NAMES", "TEXTURE_NAMES", "load_image", "ellipse_phantoms", "image_crops"]
