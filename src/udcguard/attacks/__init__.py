"""Attacks on image-to-image restorers (design.md, section 3): one attack per file.

Importing this package registers every attack in :data:`ATTACKS`:

- "fgsm" :class:`FGSM`, "bim" :class:`BIM`, "mifgsm" :class:`MIFGSM`, "pgd_linf"
  :class:`PGD` (L-inf budgets);
- "pgd_l2" :class:`PGDL2` (L2 budget);
- "cw_l2" :class:`CarliniWagnerL2` (unbounded, minimises the L2 norm);
- "simba" :class:`SimBA` (black-box, queries only; pixel or DCT basis);
- "transfer" :class:`Transfer` (crafted on a surrogate restorer, scored on the target).

Objectives: :func:`make_objective` ("mse", "l1", "ssim", "lpips" with local weights,
"lpips_rand"); region masks in :mod:`udcguard.attacks.regions`; params units -> an attack
in :func:`udcguard.attacks.build.build_attack`.
"""

from udcguard.attacks.base import ATTACKS, Attack, AttackArgumentError, AttackResult
from udcguard.attacks.bim import BIM
from udcguard.attacks.cw import CarliniWagnerL2
from udcguard.attacks.fgsm import FGSM
from udcguard.attacks.mifgsm import MIFGSM
from udcguard.attacks.objectives import OBJECTIVES, make_objective, objective
from udcguard.attacks.pgd import PGD
from udcguard.attacks.pgd_l2 import PGDL2
from udcguard.attacks.simba import SimBA
from udcguard.attacks.transfer import Transfer

__all__ = [
    "ATTACKS",
    "BIM",
    "CarliniWagnerL2",
    "FGSM",
    "MIFGSM",
    "OBJECTIVES",
    "PGD",
    "PGDL2",
    "SimBA",
    "Transfer",
    "Attack",
    "AttackArgumentError",
    "AttackResult",
    "make_objective",
    "objective",
]
