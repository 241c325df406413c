"""Subsets stratified across scene groups (design.md section 4: never the first N ids).

Pure: group labels and a seed in, indices out. The order visits groups round-robin, so
every prefix is spread across groups as evenly as possible, and a subset of n items is the
first n of that order: subsets of one seed are nested and cover min(n, #groups) groups.

Ranks come from SHA-256 keys of the seed and the group (no global random state): the
group order depends only on the seed and the group names, so adding a group moves no
other group's place, and which groups a prefix covers does not depend on the order in
which the items are listed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _key(seed: int, *parts: object) -> str:
    return hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).hexdigest()


def stratified_order(groups: Sequence[str], seed: int) -> list[int]:
    """A permutation of ``range(len(groups))`` that visits the groups round-robin.

    Groups are ranked by ``sha256(f"{seed}:{group}")``; within a group, its k-th listed
    item by ``sha256(f"{seed}:{group}:{k}")``. Round r takes the r-th ranked item of every
    group that still has one, in group rank order.

    Args:
        groups: the scene group of each item (e.g. ``TensorPairs.groups``).
        seed: the subset's own seed.

    Returns:
        Item indices; in every prefix, the counts of two groups differ by at most one
        unless the smaller group is exhausted.
    """
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    ranked = sorted(members, key=lambda g: (_key(seed, g), g))
    queues = [
        [i for _, i in sorted((_key(seed, g, k), i) for k, i in enumerate(members[g]))]
        for g in ranked
    ]
    order: list[int] = []
    for r in range(max((len(q) for q in queues), default=0)):
        order += [q[r] for q in queues if r < len(q)]
    return order


def stratified_subset(groups: Sequence[str], n: int | None, seed: int) -> list[int]:
    """The first ``min(n, len(groups))`` indices of :func:`stratified_order`, ascending.

    Args:
        groups: the scene group of each item.
        n: subset size; None keeps every item.
        seed: the subset's own seed.

    Returns:
        Sorted item indices covering ``min(n, number of groups)`` distinct groups.

    Raises:
        ValueError: ``n`` is negative.
    """
    if n is not None and n < 0:
        raise ValueError(f"subset size must be >= 0 or None, got {n}")
    order = stratified_order(groups, seed)
    return sorted(order if n is None else order[:n])
