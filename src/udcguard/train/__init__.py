"""Training: a generic resumable loop and paired-batch augmentation."""

from udcguard.train.augment import sample_batch
from udcguard.train.loop import fit

__all__ = ["fit", "sample_batch"]
