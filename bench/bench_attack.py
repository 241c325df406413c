"""Benchmark: the attack library's overhead, against bare passes and against torchattacks.

Three ratios, each against a reference measured in this run (best of --repeat):

1. PGD-20 on a restorer / 1 forward + 20 bare forward+backward passes of the same
   restorer: the attack's cost beyond the unavoidable gradients (target: under 1.10).
2. udcguard PGD / torchattacks 3.3.0 PGD on the same small classifier, same eps, alpha,
   steps, no random start, last iterate (target: at most 1.0, i.e. at least as fast).
3. SimBA queries per second on the restorer / bare batched forward passes per second
   (SimBA only queries: the ratio is its bookkeeping overhead; 1.0 is ideal).

Usage: python -m bench.bench_attack [--arch discnet] [--size small] [--batch 8] [--px 64] [--device auto]
"""

from __future__ import annotations

import argparse

import torch


from bench._common import best_of
from udcguard.attacks import ATTACKS
from udcguard.models import build_restorer, num_parameters
from udcguard.train.restorer import model_fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="discnet")
    ap.add_argument("--size", default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--px", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--simba-iterations", type=int, default=100)
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    model = build_restorer(args.arch, size=args.size).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(args.batch, 3, args.px, args.px, device=device)
    cond = torch.randn(args.batch, 5, device=device)
    f = model_fn(model, cond, device)

    def bare() -> None:
        ref = f(x).detach()
        for _ in range(args.steps):
            xi = x.clone().requires_grad_(True)
            loss = ((f(xi) - ref) ** 2).mean()
            torch.autograd.grad(loss, xi)

    attack = ATTACKS.get("pgd_linf")(f, eps=8 / 256, steps=args.steps)
    gen = torch.Generator(device="cpu").manual_seed(0)
    t_bare = best_of(bare, args.repeat, device, warmup=True)
    t_pgd = best_of(lambda: attack(x, generator=gen), args.repeat, device, warmup=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; {args.arch}/{args.size} ({num_parameters(model) / 1e6:.2f}M params), "
          f"batch {args.batch} x 3 x {args.px} x {args.px}")
    print(f"bare: 1 forward + {args.steps} forward+backward: {t_bare:.3f} s")
    print(f"PGD-{args.steps} (udcguard, keep-best, random start): {t_pgd:.3f} s")
    print(f"overhead ratio PGD / bare: {t_pgd / t_bare:.3f} (target < 1.10)")
    versus_torchattacks(args, device)
    simba_rate(f, x, args, device)


class SmallClassifier(torch.nn.Module):
    """A CIFAR-sized CNN (3 conv layers + linear): the common ground with torchattacks."""

    def __init__(self) -> None:
        super().__init__()
        c = torch.nn
        self.net = c.Sequential(c.Conv2d(3, 32, 3, padding=1), c.ReLU(), c.MaxPool2d(2),
                                c.Conv2d(32, 64, 3, padding=1), c.ReLU(), c.MaxPool2d(2),
                                c.Conv2d(64, 64, 3, padding=1), c.ReLU(), c.Flatten(), c.Linear(64 * 8 * 8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def versus_torchattacks(args, device: torch.device) -> None:
    try:
        import torchattacks
    except ImportError:
        print("torchattacks not installed: skipping the comparison (pip install -e '.[dev]')")
        return
    torch.manual_seed(0)
    clf = SmallClassifier().to(device).eval()
    x = torch.rand(64, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (64,), device=device)
    eps, alpha = 8 / 256, 2 / 256
    ta = torchattacks.PGD(clf, eps=eps, alpha=alpha, steps=args.steps, random_start=False)
    ours = ATTACKS.get("pgd_linf")(clf, eps=eps, alpha=alpha, steps=args.steps, random_start=False,
                                   keep_best=False, objective="ce", reference="gt")
    t_ta = best_of(lambda: ta(x, labels), args.repeat, device, warmup=True)
    t_ours = best_of(lambda: ours(x, gt=labels), args.repeat, device, warmup=True)
    same = torch.allclose(ta(x, labels), ours(x, gt=labels).x_adv, atol=1e-6)
    print(f"classifier PGD-{args.steps}, batch 64 x 3 x 32 x 32: torchattacks {t_ta:.3f} s, udcguard {t_ours:.3f} s, "
          f"same result: {same}")
    print(f"ratio udcguard / torchattacks: {t_ours / t_ta:.3f} (target <= 1.0)")


def simba_rate(f, x: torch.Tensor, args, device: torch.device) -> None:
    iters = args.simba_iterations
    attack = ATTACKS.get("simba")(f, eps=4 / 256, iterations=iters)
    gen = torch.Generator(device="cpu").manual_seed(0)
    res = None

    def run() -> None:
        nonlocal res
        res = attack(x, generator=gen)

    def bare() -> None:
        with torch.no_grad():
            for _ in range(res.queries):
                f(x)

    t_simba = best_of(run, args.repeat, device, warmup=True)
    t_bare = best_of(bare, args.repeat, device, warmup=True)
    qps, bare_qps = res.queries / t_simba, res.queries / t_bare
    print(f"SimBA {iters} iterations: {res.queries} batched queries in {t_simba:.3f} s = {qps:.1f} queries/s "
          f"({qps * x.shape[0]:.1f} image-queries/s); bare forwards {bare_qps:.1f}/s; "
          f"ratio SimBA / bare rate: {qps / bare_qps:.3f} (1.0 = no overhead)")


if __name__ == "__main__":
    main()
