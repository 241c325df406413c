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
from udcguard.models.bnudc import BNUDC
from udcguard.models.discnet import DISCNet, dynamic_conv
from udcguard.models.dwformer import DWFormer
from udcguard.models.nafnet import NAFNet
from udcguard.models.restormer import Restormer
from udcguard.models.udcunet import UDCUNet
from udcguard.models.uformer import Uformer
from udcguard.models.unet import UNet

__all__ = [
    "RESTORERS",
    "SIZES",
    "BNUDC",
    "DISCNet",
    "DWFormer",
    "NAFNet",
    "Restormer",
    "Restorer",
    "UDCUNet",
    "UNet",
    "Uformer",
    "UnknownSizeError",
    "build_restorer",
    "dynamic_conv",
    "num_parameters",
    "pad_to_multiple",
    "restorer_spec",
]
