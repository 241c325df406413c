"""The iterative attacks share one base: their reprs come from their constructors, a new step rule is
all a new attack needs, and only the transfer attack's class asks for a surrogate."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import Tensor, nn

from udcguard.attacks import ATTACKS, PGD
from udcguard.attacks.base import project_linf
from udcguard.attacks.build import needs_surrogate
from udcguard.attacks.iterative import IterativeAttack, Step

ITERATIVE = ("fgsm", "bim", "pgd_linf", "pgd_l2", "mifgsm")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Tanh()).eval()


@pytest.mark.parametrize("name", ITERATIVE)
def test_repr_lists_every_constructor_argument(name: str) -> None:
    cls = ATTACKS.get(name)
    assert issubclass(cls, IterativeAttack)
    attack = cls(_model())
    args = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "model_fn")]
    text = repr(attack)
    assert text.startswith(f"{cls.__name__}(") and [p.split("=")[0] for p in text[len(cls.__name__) + 1:-1].split(", ")] == args
    assert "objective='mse'" in text and f"eps={attack.eps:.6g}" in text


def test_defaults_per_attack() -> None:
    m = _model()
    assert PGD(m, eps=8 / 256).alpha == 8 / 256
    assert ATTACKS.get("mifgsm")(m, eps=8 / 256, steps=4).alpha == pytest.approx(2 / 256)
    assert ATTACKS.get("pgd_l2")(m, eps=1.0, steps=10).alpha == pytest.approx(0.25)
    bim = ATTACKS.get("bim")(m, eps=8 / 256)
    assert (bim.alpha, bim.steps, bim.restarts) == (1 / 256, 10, 1)
    fgsm = ATTACKS.get("fgsm")(m)
    assert (fgsm.steps, fgsm.restarts) == (1, 1)
    with pytest.raises(ValueError, match="alpha must be in"):
        ATTACKS.get("bim")(m, alpha=2.0)
    with pytest.raises(ValueError, match="restarts=2 needs random_start=True"):
        PGD(m, restarts=2, random_start=False, reference="gt")


class HalfStepPGD(IterativeAttack):
    """A new attack: PGD whose step is alpha / 2 (nothing but a step rule)."""

    def __init__(self, model_fn, *, eps: float = 8 / 256, alpha: float | None = None, steps: int = 3) -> None:
        super().__init__(model_fn, eps=eps, alpha=alpha, steps=steps, random_start=None, keep_best=True)

    def step_rule(self, x: Tensor, mask: Tensor | None) -> Step:
        return lambda x_k, g: project_linf(x_k + self.alpha / 2 * g.sign(), x, self.eps, mask)


def test_a_step_rule_is_a_whole_attack() -> None:
    m, x = _model(), torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    mine = HalfStepPGD(m, alpha=4 / 256)(x, generator=torch.Generator().manual_seed(3))
    ref = PGD(m, alpha=2 / 256, steps=3)(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(mine.x_adv, ref.x_adv) and mine.grads == ref.grads == 3 and mine.queries == ref.queries
    assert repr(HalfStepPGD(m)) == "HalfStepPGD(eps=0.03125, alpha=0.03125, steps=3)"


def test_only_the_transfer_class_needs_a_surrogate() -> None:
    assert {n for n in ATTACKS.names() if needs_surrogate(n)} == {"transfer"}
