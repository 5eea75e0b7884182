"""Seeded partitioning of a labelled dataset across clients: IID, Dirichlet(alpha) label skew, or a skew
where the last clients hold classes the others rarely see."""

from __future__ import annotations

import numpy as np

from fedsqueeze.specs import parse_spec


def iid(labels: np.ndarray, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Shuffle, then deal out equal shares."""
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, num_partitions)]


def dirichlet(labels: np.ndarray, num_partitions: int, seed: int, alpha: float,
              min_size: int = 10, max_tries: int = 100) -> list[np.ndarray]:
    """Label skew: each class is split across clients in Dirichlet(alpha) proportions.

    Smaller alpha, stronger skew. Resamples until every client holds at least
    ``min_size`` examples (the usual recipe of Hsu et al., 2019).
    """
    if alpha <= 0:
        raise ValueError(f"dirichlet alpha must be > 0, not {alpha}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_partitions)]
        for c in classes:
            members = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for part, piece in zip(parts, np.split(members, cuts)):
                part.extend(piece.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"could not give each of {num_partitions} clients >= {min_size} examples "
                     f"with alpha={alpha} in {max_tries} tries; use fewer clients or a larger alpha")


def skewed(labels: np.ndarray, num_partitions: int, seed: int, last: int, classes: int,
           share: float) -> list[np.ndarray]:
    """The last ``last`` clients hold ``share`` of every example of the last ``classes`` classes.

    The rest of those classes and all other classes are dealt out IID to the
    first clients. Models a fleet where weak devices (started last) see data
    the strong ones rarely do.
    """
    if not 0 < last < num_partitions:
        raise ValueError(f"skewed: last must be in [1, {num_partitions - 1}], not {last}")
    all_classes = np.unique(labels)
    if not 0 < classes < len(all_classes):
        raise ValueError(f"skewed: classes must be in [1, {len(all_classes) - 1}], not {classes}")
    if not 0 <= share <= 1:
        raise ValueError(f"skewed: share must be in [0, 1], not {share}")
    rng = np.random.default_rng(seed)
    rare = np.isin(labels, all_classes[-classes:])
    rare_members = rng.permutation(np.flatnonzero(rare))
    to_last = round(share * len(rare_members))
    common = rng.permutation(np.concatenate([np.flatnonzero(~rare), rare_members[to_last:]]))
    parts = np.array_split(common, num_partitions - last) + np.array_split(rare_members[:to_last], last)
    return [np.sort(part) for part in parts]


def partition(labels: np.ndarray, scheme: str, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Split example indices by a scheme spec: ``iid`` or ``dirichlet(alpha=0.5)``."""
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, not {num_partitions}")
    name, params = parse_spec(scheme)
    if name == "iid" and not params:
        return iid(labels, num_partitions, seed)
    if np.issubdtype(labels.dtype, np.floating):
        raise ValueError(f"partition {scheme!r} splits by class; regression targets have none: use iid")
    if name == "dirichlet" and set(params) <= {"alpha"}:
        return dirichlet(labels, num_partitions, seed, float(params.get("alpha", 0.5)))
    if name == "skewed" and set(params) <= {"last", "classes", "share"}:
        return skewed(labels, num_partitions, seed, int(params.get("last", 3)), int(params.get("classes", 3)),
                      float(params.get("share", 0.9)))
    raise ValueError(f"unknown partition scheme {scheme!r}: use iid, dirichlet(alpha=A) "
                     "or skewed(last=N,classes=C,share=S)")
