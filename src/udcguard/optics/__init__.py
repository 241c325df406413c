"""Display layouts -> pupil -> PSF (Fourier optics); measured PSFs, variants, PCA codes.

See udc-physics.md, "Fourier optics of a display in front of a lens".
"""

from udcguard.optics.bank import PSFEntry, build_psf_bank
from udcguard.optics.codes import KernelCodes, kernel_codes, project
from udcguard.optics.layouts import (
    LAYOUTS,
    fill_factor,
    load_cell_png,
    tile_mask,
    unit_cell,
)
from udcguard.optics.measured import (
    AffineParams,
    Variant,
    affine_variant,
    fit_kernel,
    load_psf_npy,
    sample_affine_params,
    sample_variants,
    validate_psf,
)
from udcguard.optics.psf import (
    Optics,
    first_dark_ring_um,
    psf_fine,
    pupil_amplitude,
    simulate_psf,
)

__all__ = [
    "LAYOUTS",
    "AffineParams",
    "KernelCodes",
    "Optics",
    "PSFEntry",
    "Variant",
    "affine_variant",
    "build_psf_bank",
    "fill_factor",
    "first_dark_ring_um",
    "fit_kernel",
    "kernel_codes",
    "load_cell_png",
    "load_psf_npy",
    "project",
    "psf_fine",
    "pupil_amplitude",
    "sample_affine_params",
    "sample_variants",
    "simulate_psf",
    "tile_mask",
    "unit_cell",
    "validate_psf",
]
