"""Training losses: pixel losses by name and a VGG-19 perceptual loss from local weights."""

from udcguard.losses.perceptual import VGGPerceptual, build_perceptual
from udcguard.losses.pixel import PIXEL_LOSSES, charbonnier, l1, l2

__all__ = ["PIXEL_LOSSES", "VGGPerceptual", "build_perceptual", "charbonnier", "l1", "l2"]
