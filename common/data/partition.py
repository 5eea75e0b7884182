"""Seeded partitioning of a labelled dataset across clients: IID, Dirichlet(alpha) label skew (each class
split across clients, or each client drawing its class mix), or a skew where the last clients hold classes
the others rarely see."""

from __future__ import annotations

import numpy as np

from fedsqueeze.specs import parse_spec


def iid(labels: np.ndarray, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Shuffle, then deal out equal shares."""
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, num_partitions)]


def dirichlet(labels: np.ndarray, num_partitions: int, seed: int, alpha: float,
              min_size: int = 10, max_tries: int = 100) -> list[np.ndarray]:
    """Label skew by class: each class is split across clients in Dirichlet(alpha) proportions.

    Smaller alpha, stronger skew; client sizes vary. Resamples until every client holds at least
    ``min_size`` examples (the recipe of Yurochkin et al., 2019, used by FedMA and most FL papers). With
    many clients per example (10,000 clients on 60,000 examples) the minimum is rarely met: use
    :func:`dirichlet_by_client`.
    """
    _check_alpha(alpha)
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
                     f"with alpha={alpha} in {max_tries} tries; use fewer clients, a larger alpha "
                     "or dirichlet(alpha=A,by=client)")


def dirichlet_by_client(labels: np.ndarray, num_partitions: int, seed: int, alpha: float) -> list[np.ndarray]:
    """Label skew by client: each client draws its class mix q ~ Dirichlet(alpha * K * p).

    The population model of Hsu et al. (2019), with p the class prior of the K classes, scaled so that
    ``alpha`` means what it means in :func:`dirichlet`: on balanced classes each class gets concentration
    ``alpha``, which is the law of a client's class mix under the by-class split. Clients get equal
    shares of the examples (as :func:`iid` deals them), filled by sampling classes from q without
    replacement; once a class is used up, the
    client's draw is renormalised over the classes left, so every example is dealt exactly once and the
    last clients' mixes lean towards what remains. Scales to any number of clients of at least one example.
    """
    _check_alpha(alpha)
    if num_partitions > len(labels):
        raise ValueError(f"dirichlet by client: {num_partitions} clients need at least as many examples, "
                         f"not {len(labels)}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    used = np.zeros(len(classes), dtype=np.int64)
    base, extra = divmod(len(labels), num_partitions)
    sizes = [base + (i < extra) for i in range(num_partitions)]
    parts: list[np.ndarray] = []
    for size in sizes:
        mix = rng.dirichlet(alpha * len(classes) * counts / counts.sum())
        take = np.zeros(len(classes), dtype=np.int64)
        while (need := size - take.sum()) > 0:
            left = counts - used - take
            weights = np.where(left > 0, mix, 0.0)
            weights = weights if weights.sum() > 0 else left.astype(float)
            take += np.minimum(rng.multinomial(need, weights / weights.sum()), left)
        parts.append(np.sort(np.concatenate([pool[start:start + n] for pool, start, n in zip(pools, used, take)])))
        used += take
    return parts


def _check_alpha(alpha: float) -> None:
    if not alpha > 0:
        raise ValueError(f"dirichlet alpha must be > 0, not {alpha}")


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
    """Split example indices by a scheme spec: ``iid``, ``dirichlet(alpha=0.5)`` (``by=class``, the default,
    or ``by=client``) or ``skewed(last=3,classes=3,share=0.9)``."""
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, not {num_partitions}")
    name, params = parse_spec(scheme)
    if name == "iid" and not params:
        return iid(labels, num_partitions, seed)
    if np.issubdtype(labels.dtype, np.floating):
        raise ValueError(f"partition {scheme!r} splits by class; regression targets have none: use iid")
    if name == "dirichlet" and set(params) <= {"alpha", "by"} and params.get("by", "class") in ("class", "client"):
        split = dirichlet_by_client if params.get("by") == "client" else dirichlet
        return split(labels, num_partitions, seed, float(params.get("alpha", 0.5)))
    if name == "skewed" and set(params) <= {"last", "classes", "share"}:
        return skewed(labels, num_partitions, seed, int(params.get("last", 3)), int(params.get("classes", 3)),
                      float(params.get("share", 0.9)))
    raise ValueError(f"unknown partition scheme {scheme!r}: use iid, dirichlet(alpha=A[,by=class|client]) "
                     "or skewed(last=N,classes=C,share=S)")
