"""Attacks on image-to-image restorers (design.md, section 3): one attack per file.

Importing this package registers every attack in :data:`ATTACKS`.
"""

from udcguard.attacks.base import ATTACKS, Attack, AttackArgumentError, AttackResult
from udcguard.attacks.objectives import OBJECTIVES, objective
from udcguard.attacks.pgd import PGD

__all__ = [
    "ATTACKS",
    "OBJECTIVES",
    "PGD",
    "Attack",
    "AttackArgumentError",
    "AttackResult",
    "objective",
]
