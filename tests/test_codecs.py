"""Property tests of every codec stage and of pipelines: each holds the guarantee it states."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedsqueeze.codecs import LATENT_MODELS, CodecError, LatentModel, get_pipeline, get_plan
from fedsqueeze.codecs.binary import gather_packed, pack_bits, packed_size, varint_decode, varint_encode
from fedsqueeze.codecs.cluster import assign, kmeans_1d
from fedsqueeze.tensors import TensorSpec

FAST = settings(max_examples=60, deadline=None)

shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=40)
finite = st.floats(min_value=-1e4, max_value=1e4, width=32, allow_nan=False)
arrays = hnp.arrays(np.float32, shapes, elements=finite)


def round_trip(spec_text: str, array: np.ndarray) -> tuple[np.ndarray, bytes]:
    pipeline = get_pipeline(spec_text)
    payload = pipeline.encode(array)
    spec = TensorSpec("t", array.shape)
    assert len(payload) <= pipeline.max_payload_size(spec), "a real payload exceeds the receiver's bound"
    decoded = pipeline.decode(payload, spec)
    assert decoded.shape == array.shape and decoded.dtype == np.float32
    return decoded, payload


@FAST
@given(array=arrays, spec=st.sampled_from(["dense", "dense|zstd", "dense|ans", "dense|zstd(level=19)|ans",
                                            "dense(shuffle=true)", "dense(shuffle=true)|zstd"]))
def test_lossless_pipelines_are_exact(array: np.ndarray, spec: str) -> None:
    decoded, _ = round_trip(spec, array)
    assert np.array_equal(decoded.view(np.uint32), array.view(np.uint32))
    assert get_pipeline(spec).lossless


@FAST
@given(array=hnp.arrays(np.float32, shapes, elements=st.floats(-6e4, 6e4, width=32)),
       dtype=st.sampled_from(["float16", "bfloat16"]), shuffle=st.booleans())
def test_half_precision_within_its_rounding(array: np.ndarray, dtype: str, shuffle: bool) -> None:
    decoded, payload = round_trip(f"dense(dtype={dtype},shuffle={str(shuffle).lower()})", array)
    assert len(payload) == 2 * array.size
    relative = 2.0**-11 if dtype == "float16" else 2.0**-8
    absolute = 6e-8 if dtype == "float16" else 2.0**-133   # half the smallest subnormal step
    tolerance = relative * np.abs(array) + absolute
    assert (np.abs(decoded - array) <= tolerance).all()


def test_shuffled_planes_compress_weights_better_than_plain_values() -> None:
    """Byte planes group the exponents of weight-like values: zstd gets more out of them, losslessly."""
    weights = (np.random.default_rng(0).standard_normal(50_000) * 0.05).astype(np.float32)
    plain = len(get_pipeline("dense|zstd").encode(weights))
    shuffled = len(get_pipeline("dense(shuffle=true)|zstd").encode(weights))
    print(f"float32 {weights.nbytes:,} B, zstd {plain:,} B, shuffled + zstd {shuffled:,} B")
    assert shuffled < 0.95 * plain < 0.95 * weights.nbytes
    assert get_pipeline("dense(shuffle=true)|zstd").lossless
    assert get_pipeline("dense(dtype=float32,shuffle=false)").spec == "dense(dtype=float32)"


@FAST
@given(array=arrays, k=st.integers(1, 256), entropy=st.sampled_from(["", "|zstd", "|ans"]))
def test_cluster_sends_each_weight_to_its_nearest_of_k_centroids(array: np.ndarray, k: int, entropy: str) -> None:
    decoded, _ = round_trip(f"cluster(k={k}){entropy}", array)
    centroids = np.unique(decoded)
    assert len(centroids) <= k
    distance = np.abs(array.reshape(-1, 1).astype(np.float64) - centroids.astype(np.float64))
    chosen = np.abs(array.astype(np.float64) - decoded.astype(np.float64)).reshape(-1)
    assert (chosen <= distance.min(axis=1) + 1e-12).all()


@pytest.mark.parametrize("values", [[1e-45, 0.0], [0.0, 1e-45, 3e-45], [-3e38, 0.0, 3e38], [-3.4e38, 3.4e38, 1.0]],
                         ids=["subnormal-span", "subnormal-three", "near-float32-limits", "full-range"])
@pytest.mark.parametrize("k", [1, 2, 16])
def test_cluster_handles_extreme_value_ranges(values: list[float], k: int) -> None:
    """Ranges whose width underflows or overflows float32 once gave negative grid cells (found by hypothesis)."""
    array = np.array(values, np.float32)
    decoded, _ = round_trip(f"cluster(k={k})", array)
    centroids = np.unique(decoded)
    distance = np.abs(array.reshape(-1, 1).astype(np.float64) - centroids.astype(np.float64))
    assert len(centroids) <= k and np.isfinite(decoded).all()
    assert (np.abs(array.astype(np.float64) - decoded) <= distance.min(axis=1)).all()


def test_cluster_layout_choice_and_sizes() -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.05, 100_000).astype(np.float32)
    spec = TensorSpec("w", weights.shape)
    bare = get_pipeline("cluster(k=16)").encode(weights)
    assert len(bare) == 2 + 1 + 16 * 4 + 50_000                      # packed at 4 bits
    seven = get_pipeline("cluster(k=7)").encode(weights)
    assert len(seven) == 2 + 1 + 7 * 4 + -(-100_000 * 3 // 8)         # packed at 3 bits
    coded = get_pipeline("cluster(k=16)|ans").encode(weights)
    indices = assign(weights, kmeans_1d(weights, 16))
    p = np.bincount(indices) / len(indices)
    entropy_bytes = -(p[p > 0] * np.log2(p[p > 0])).sum() * len(indices) / 8
    assert len(coded) < 1.02 * entropy_bytes + 2000                   # at the entropy, plus table and centroids
    assert np.array_equal(get_pipeline("cluster(k=16)|ans").decode(coded, spec),
                          get_pipeline("cluster(k=16)").decode(bare, spec))


@FAST
@given(values=hnp.arrays(np.float32, st.integers(0, 3000), elements=finite), k=st.integers(1, 64))
def test_fast_assignment_equals_exhaustive_search(values: np.ndarray, k: int) -> None:
    centroids = kmeans_1d(values, k)
    assert len(centroids) <= k and np.all(np.diff(centroids) > 0)
    exact_mids = (centroids[1:].astype(np.float64) + centroids[:-1]) / 2   # float32 mids can round past a value
    expected = np.searchsorted(exact_mids, values)
    assert np.array_equal(assign(values, centroids), expected)


@FAST
@given(array=arrays, choice=st.sampled_from(["ratio=0.01", "ratio=0.3", "ratio=1.0", "k=5", "threshold=10"]))
def test_sparse_keeps_exactly_the_largest_magnitudes(array: np.ndarray, choice: str) -> None:
    decoded, _ = round_trip(f"sparse({choice})", array)
    kept = decoded != 0
    flat, magnitude = array.reshape(-1), np.abs(array)
    assert np.array_equal(decoded[kept], array[kept])           # kept values exact under dense float32
    if choice.startswith("threshold"):
        assert np.array_equal(kept, magnitude > 10)
    else:
        count = round(0.01 * flat.size) if choice == "ratio=0.01" else None
        limit = {"ratio=0.3": round(0.3 * flat.size), "ratio=1.0": flat.size, "k=5": 5}.get(choice, count)
        assert kept.sum() <= max(1, limit)
        if kept.any() and (~kept).any():
            assert magnitude[~kept].max() <= magnitude[kept].min() or magnitude[kept].min() == 0


@pytest.mark.parametrize("density", [0.001, 0.02, 0.5, 1.0])
def test_sparse_positions_take_the_smaller_coding(density: float) -> None:
    rng = np.random.default_rng(1)
    array = rng.normal(size=20_000).astype(np.float32)
    payload = get_pipeline(f"sparse(ratio={density})").encode(array)
    kept = max(1, round(density * array.size))
    bitmap = 2_500
    assert payload[0] == (0 if density >= 0.5 else 1)             # 0: bitmap, 1: delta gaps
    assert len(payload) - 4 * kept <= bitmap + 9


@FAST
@given(array=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=12),
                        elements=finite), ratio=st.sampled_from([0.25, 0.5, 1.0]))
def test_channels_keep_whole_slices_with_the_largest_norms(array: np.ndarray, ratio: float) -> None:
    decoded, _ = round_trip(f"channels(ratio={ratio})", array)
    rows = array.reshape(array.shape[0], -1).astype(np.float64)
    got = decoded.reshape(array.shape[0], -1)
    kept = np.array([np.array_equal(g, r.astype(np.float32)) and (r != 0).any() or not r.any() for g, r in
                     zip(got, rows)])
    dropped = ~(got != 0).any(axis=1)
    assert (kept | dropped).all()
    norms = np.sqrt((rows**2).sum(axis=1))
    survivors = (got != 0).any(axis=1)
    if survivors.any() and (~survivors).any():
        assert norms[~survivors].max() <= norms[survivors].min() + 1e-6


class Projection(LatentModel):
    """A test latent model: codes are the means of fixed-size chunks; decoding repeats them."""

    chunk = 4

    def encode(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = array.reshape(-1)
        padded = np.zeros(self.code_count(TensorSpec("x", array.shape)) * self.chunk, np.float32)
        padded[:flat.size] = flat
        means = padded.reshape(-1, self.chunk).mean(axis=1)
        scale = max(float(np.abs(means).max()), 1e-30)
        return means / scale, np.array([scale], np.float32)

    def decode(self, codes: np.ndarray, scales: np.ndarray, spec: TensorSpec) -> np.ndarray:
        return (np.repeat(codes, self.chunk)[:spec.numel] * scales[0]).reshape(spec.shape)

    def scale_count(self, spec: TensorSpec) -> int:
        return 1

    def code_count(self, spec: TensorSpec) -> int:
        return -(-spec.numel // self.chunk)


def test_latent_codes_name_their_decoder() -> None:
    LATENT_MODELS.register("proj", 3, Projection())
    try:
        array = np.arange(10, dtype=np.float32).reshape(2, 5)
        decoded, payload = round_trip("latent(decoder=proj,version=3)|dense(dtype=float16)|zstd", array)
        assert np.allclose(decoded, Projection().decode(*Projection().encode(array), TensorSpec("t", (2, 5))),
                           rtol=2**-7)
        with pytest.raises(CodecError, match="no latent decoder 'proj' version 4"):
            get_pipeline("latent(decoder=proj,version=4)").decode(payload, TensorSpec("t", (2, 5)))
        with pytest.raises(CodecError, match="codes and 1 scales; decoder 'proj' v3 reads"):
            get_pipeline("latent(decoder=proj,version=3)|dense(dtype=float16)|zstd").decode(
                payload, TensorSpec("t", (4, 5)))
    finally:
        LATENT_MODELS.unregister("proj", 3)


@FAST
@given(data=st.binary(max_size=5000), stage=st.sampled_from(["zstd", "zstd(level=19)", "ans"]))
def test_byte_stages_round_trip_any_bytes(data: bytes, stage: str) -> None:
    compressor = get_pipeline(f"dense|{stage}").compressors[0]
    packed = compressor.compress(data)
    assert len(packed) <= compressor.max_compressed_size(len(data))
    assert compressor.decompress(packed, len(data)) == data
    if data:
        with pytest.raises(CodecError, match="more than the"):
            compressor.decompress(packed, len(data) - 1)


@FAST
@given(array=arrays, transform=st.sampled_from(["", "sparse(ratio=0.1)|", "channels(ratio=0.5)|"]),
       terminal=st.sampled_from(["dense", "dense(dtype=float16)", "cluster(k=8)", "cluster(k=200)"]),
       entropy=st.sampled_from(["", "|zstd", "|ans", "|zstd|ans"]))
def test_pipelines_round_trip_and_are_idempotent(array: np.ndarray, transform: str, terminal: str,
                                                 entropy: str) -> None:
    assume(not transform.startswith("channels") or array.ndim >= 1)
    spec = transform + terminal + entropy
    once, _ = round_trip(spec, array)
    twice, _ = round_trip(spec, once)
    assert np.isfinite(once).all()
    # what a lossy pipeline keeps, it keeps exactly when applied again
    np.testing.assert_allclose(twice, once, rtol=2**-10, atol=1e-6 * max(1.0, float(np.abs(once).max())))


@FAST
@given(values=hnp.arrays(np.uint32, st.integers(0, 500)))
def test_varints_round_trip(values: np.ndarray) -> None:
    assert np.array_equal(varint_decode(varint_encode(values), len(values)), values)


def test_plans_pick_a_pipeline_per_tensor() -> None:
    plan = get_plan("cluster(k=16)|zstd; *.bias=dense; features.0.*=dense(dtype=float16)")
    assert plan.for_tensor("head.weight").spec == "cluster(iterations=25,k=16,seed=0)|zstd(level=3)"
    assert plan.for_tensor("head.bias").spec == "dense(dtype=float32)"
    assert plan.for_tensor("features.0.weight").spec == "dense(dtype=float16)"
    assert get_plan(plan.spec).spec == plan.spec            # the canonical form parses to itself
    assert not plan.lossless and get_plan("dense|zstd").lossless
    assert get_pipeline("sparse(k=3)").spec == "sparse(k=3)|dense(dtype=float32)"   # dense ends a bare transform


@pytest.mark.parametrize("bad, reason", [
    ("zstd|cluster(k=4)", "after the terminal or a byte stage"),
    ("cluster(k=4)|dense", "after the terminal or a byte stage"),
    ("cluster(k=300)", "k must be an integer in"),
    ("cluster(k=2.5)", "k must be an integer in"),
    ("sparse", "exactly one of ratio, k, threshold"),
    ("sparse(ratio=2)", "ratio must be in"),
    ("zstd(level=40)", "level must be"),
    ("dense(dtype=int8)", "dtype must be one of"),
    ("gzip", "unknown codec 'gzip'"),
    ("cluster(q=1)", "bad parameters for codec 'cluster'"),
    ("dense; cluster(k=2)", "at most one rule without a name pattern"),
    ("latent(decoder=1x)", "decoder id must be"),
    ("", "empty codec plan"),
])
def test_bad_specs_are_refused_with_a_reason(bad: str, reason: str) -> None:
    with pytest.raises(CodecError, match=reason.replace("(", r"\(")):
        get_plan(bad)


@FAST
@given(bits=st.integers(0, 8), data=st.data())
def test_packed_indices_gather_back_to_their_values(bits: int, data: st.DataObject) -> None:
    indices = data.draw(hnp.arrays(np.uint8, st.integers(0, 300), elements=st.integers(0, (1 << bits) - 1)))
    packed = pack_bits(indices, bits)
    assert len(packed) == packed_size(len(indices), bits)
    values = np.arange(1 << bits, dtype=np.float32) * 1.5
    assert np.array_equal(gather_packed(packed, bits, len(indices), values), values[indices])
    fewer = gather_packed(packed, bits, len(indices), values[:1])        # indices past the table read NaN
    assert np.array_equal(np.isnan(fewer), indices >= 1)
