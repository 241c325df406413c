"""Image metrics (PSNR, SSIM, LPIPS) and per-image records -> summaries (design.md, section 4)."""

from udcguard.metrics.bootstrap import bootstrap_ci
from udcguard.metrics.image import deviation_psnr, psnr, ssim
from udcguard.metrics.lpips import LPIPS, build_lpips, lpips_per_image
from udcguard.metrics.summary import PSNR_CAP_DB, summarize, summarize_ci

__all__ = [
    "LPIPS",
    "PSNR_CAP_DB",
    "bootstrap_ci",
    "build_lpips",
    "deviation_psnr",
    "lpips_per_image",
    "psnr",
    "ssim",
    "summarize",
    "summarize_ci",
]
