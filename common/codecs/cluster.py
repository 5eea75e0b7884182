"""``cluster``: per-tensor weight sharing. K centroids (1-D k-means, k-means++ init) plus an index per weight.

Section: u16 K, u8 layout (0: indices packed at ceil(log2 K) bits, 1: one byte
each), K float32 centroids, the indices. Both layouts are offered; the pipeline
keeps whichever ends smaller after its entropy stage (packed wins bare, bytes
usually wins under zstd or ans).

Decoded values are exactly transmitted centroids, and the encoder gives each
weight its nearest centroid, so ``|x - decode(encode(x))| = min_j |x - c_j|``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsqueeze.codecs.base import ArrayStage, DecodeRest, register_stage
from fedsqueeze.codecs.binary import (
    CodecError,
    Reader,
    float32_bytes,
    gather_packed,
    pack_bits,
    packed_size,
    uint_bytes,
)
from fedsqueeze.tensors import TensorSpec

MAX_K = 256
MAX_ITERATIONS = 1000   # Lloyd iterations: more buy nothing on 1-D data and would let a plan cost minutes
BINS = 4096      # the grid both k-means and assignment work on: O(n) per tensor, not O(n*K*iterations)
PACKED, BYTES = 0, 1


class Grid:
    """A uniform grid of BINS cells over a tensor's value range; cell() is monotone in the value.

    In float64: a float32 span can be too small for BINS / span (subnormal ranges) or too large for
    ``values - lo`` (ranges near the float32 limits), and either gave negative cells.
    """

    def __init__(self, values: np.ndarray) -> None:
        self.lo = float(values.min())
        span = float(values.max()) - self.lo
        self.scale = BINS / span if span > 0 else 0.0

    def cells(self, values: np.ndarray) -> np.ndarray:
        return np.minimum(((values.astype(np.float64) - self.lo) * self.scale).astype(np.int32), BINS - 1)


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 25, seed: int = 0,
              grid: Grid | None = None, cells: np.ndarray | None = None) -> np.ndarray:
    """Sorted centroids (at most ``k``) of 1-D k-means with k-means++ initialisation.

    Runs on the tensor's histogram: each occupied grid cell is one point at its
    members' mean, weighted by their count (exact k-means up to the cell width,
    1/4096 of the value range).
    """
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if values.size == 0:
        return np.zeros(0, np.float32)
    grid = grid or Grid(values)
    if grid.scale == 0:
        return np.array([grid.lo], np.float32)
    cells = grid.cells(values) if cells is None else cells
    counts = np.bincount(cells, minlength=BINS).astype(np.float64)
    sums = np.bincount(cells, weights=values, minlength=BINS)
    occupied = counts > 0
    points, weights = sums[occupied] / counts[occupied], counts[occupied]
    if len(points) <= k:
        # Few values: a tensor with at most k distinct values (an already clustered model) is kept exactly.
        means = np.zeros(BINS, np.float32)
        means[occupied] = points
        if np.array_equal(values, means[cells]):
            return np.unique(points.astype(np.float32))
        distinct = np.unique(values)
        return distinct if len(distinct) <= k else np.unique(points.astype(np.float32))
    centroids = _lloyd(points, weights, _kmeans_plus_plus(points, weights, k, seed), iterations)
    return np.unique(centroids.astype(np.float32))


def _kmeans_plus_plus(points: np.ndarray, weights: np.ndarray, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centroids = [points[rng.choice(len(points), p=weights / weights.sum())]]
    nearest = (points - centroids[0]) ** 2
    for _ in range(1, k):
        score = weights * nearest
        if score.sum() <= 0:
            break
        centroids.append(points[rng.choice(len(points), p=score / score.sum())])
        nearest = np.minimum(nearest, (points - centroids[-1]) ** 2)
    return np.sort(np.array(centroids))


def _lloyd(points: np.ndarray, weights: np.ndarray, centroids: np.ndarray, iterations: int) -> np.ndarray:
    for _ in range(iterations):
        index = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, points)
        mass = np.bincount(index, weights=weights, minlength=len(centroids))
        moments = np.bincount(index, weights=weights * points, minlength=len(centroids))
        updated = np.where(mass > 0, moments / np.maximum(mass, 1e-300), centroids)
        if np.array_equal(updated, centroids):
            break
        centroids = np.sort(updated)
    return centroids


def assign(values: np.ndarray, centroids: np.ndarray, grid: Grid | None = None,
           cells: np.ndarray | None = None) -> np.ndarray:
    """Index of the nearest of the sorted ``centroids`` for each value (ties to the lower), as uint8.

    A boundary between two clusters lies in one grid cell; values in cells
    without a boundary take their cell's cluster from a table (the grid is
    monotone, so that is exact), and only values in boundary cells are searched.
    """
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if len(centroids) <= 1 or values.size == 0:
        return np.zeros(values.size, np.uint8)
    grid = grid or Grid(values)
    cells = grid.cells(values) if cells is None else cells
    mids = (centroids[1:].astype(np.float64) + centroids[:-1]) / 2   # exact: no float32 rounding or overflow
    mid_cells = grid.cells(mids)
    cluster_of_cell = np.searchsorted(mid_cells, np.arange(BINS, dtype=np.int32)).astype(np.uint8)
    index = cluster_of_cell[cells]
    boundary = np.zeros(BINS, bool)
    boundary[mid_cells] = True
    hard = np.flatnonzero(boundary[cells])
    index[hard] = np.searchsorted(mids, values[hard])
    return index


def _gather(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.take(table, index.astype(np.intp))   # intp indices: numpy's fast gather path


@register_stage
class Cluster(ArrayStage):
    """Weight sharing: each tensor's values replaced by the nearest of its own K centroids."""

    codec_id = "cluster"
    terminal = True

    def __init__(self, k: int = 16, iterations: int = 25, seed: int = 0) -> None:
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise CodecError(f"cluster: k must be an integer in [1, {MAX_K}], not {k!r}")
        if not isinstance(iterations, int) or not 0 <= iterations <= MAX_ITERATIONS:
            raise CodecError(f"cluster: iterations must be an integer in [0, {MAX_ITERATIONS}], not {iterations!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 1 << 32:
            raise CodecError(f"cluster: seed must be an integer in [0, 2^32), not {seed!r}")
        self.k, self.iterations, self.seed = k, iterations, seed

    @property
    def lossless(self) -> bool:
        return False

    def fit(self, array: np.ndarray) -> np.ndarray:
        """The centroids this stage would use for ``array``."""
        return kmeans_1d(array, self.k, self.iterations, self.seed)

    def encode(self, array: np.ndarray) -> tuple[bytes, None]:
        return self.encode_variants(array)[0], None

    def encode_variants(self, array: np.ndarray) -> list[bytes]:
        values = np.asarray(array, dtype=np.float32).reshape(-1)
        if values.size == 0:
            return self.encode_with(values, np.zeros(0, np.float32))
        grid = Grid(values)
        cells = grid.cells(values)
        centroids = kmeans_1d(values, self.k, self.iterations, self.seed, grid, cells)
        return self.encode_with(values, centroids, grid, cells)

    def encode_with(self, array: np.ndarray, centroids: np.ndarray, grid: Grid | None = None,
                    cells: np.ndarray | None = None) -> list[bytes]:
        """Sections (packed first, then one byte per index if that differs) for given sorted centroids."""
        values = np.asarray(array, dtype=np.float32).reshape(-1)
        index = assign(values, centroids, grid, cells)
        k = len(centroids)
        head = uint_bytes(k, 2)
        bits = max(k - 1, 0).bit_length()
        body = float32_bytes(centroids)
        variants = [head + uint_bytes(PACKED, 1) + body + pack_bits(index, bits)]
        if bits < 8:
            variants.append(head + uint_bytes(BYTES, 1) + body + index.tobytes())
        return variants

    def decode(self, reader: Reader, spec: TensorSpec, decode_rest: DecodeRest) -> np.ndarray:
        k = reader.uint(2, "cluster count")
        if (k == 0) != (spec.numel == 0) or k > self.k:
            raise CodecError(f"cluster count {k} is not in [1, {self.k}] for {spec.numel} values")
        layout = reader.uint(1, "index layout")
        if layout not in (PACKED, BYTES):
            raise CodecError(f"unknown index layout {layout}")
        centroids = reader.array("<f4", k, "centroids")
        if not np.isfinite(centroids).all():
            raise CodecError("non-finite centroid")
        if not k:
            return np.zeros(spec.shape, np.float32)
        bits = max(k - 1, 0).bit_length()
        if layout == PACKED:
            values = gather_packed(reader.take(packed_size(spec.numel, bits), "packed indices"), bits, spec.numel,
                                   centroids)
            if k < 1 << bits and np.isnan(values).any():   # NaN marks an index >= k
                raise CodecError(f"an index is out of range for {k} centroids")
            return values.reshape(spec.shape)
        index = reader.array("u1", spec.numel, "indices")
        if index.size and int(index.max()) >= k:
            raise CodecError(f"index {int(index.max())} out of range for {k} centroids")
        return _gather(centroids, index).reshape(spec.shape)

    def max_section_size(self, spec: TensorSpec) -> int:
        return 3 + 4 * self.k + spec.numel

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "k": self.k, "iterations": self.iterations, "seed": self.seed}
