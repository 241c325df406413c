"""Restorer architectures, one per module, all ``forward(x, cond=None)`` on (B, 3, H, W) in [0, 1].

Importing this package registers every architecture in :data:`RESTORERS`.
"""

from udcguard.models.base import (
    RESTORERS,
    SIZES,
    Restorer,
    UnknownSizeError,
    build_restorer,
    num_parameters,
    pad_to_multiple,
    restorer_spec,
)
from udcguard.models.discnet import DISCNet, dynamic_conv
from udcguard.models.unet import UNet

__all__ = [
    "RESTORERS",
    "SIZES",
    "DISCNet",
    "Restorer",
    "UNet",
    "UnknownSizeError",
    "build_restorer",
    "dynamic_conv",
    "num_parameters",
    "pad_to_multiple",
    "restorer_spec",
]
