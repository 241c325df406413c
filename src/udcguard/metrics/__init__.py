"""Image metrics (PSNR, SSIM) and per-image records -> summaries (design.md, section 4)."""

from udcguard.metrics.image import deviation_psnr, psnr, ssim
from udcguard.metrics.summary import PSNR_CAP_DB, summarize

__all__ = ["PSNR_CAP_DB", "deviation_psnr", "psnr", "ssim", "summarize"]
