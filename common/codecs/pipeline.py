"""Pipelines of stages, and codec plans that pick a pipeline per tensor.

Spec syntax (documented in docs/concepts/codecs.md):

    PLAN      := RULE ( ";" RULE )*
    RULE      := [ GLOB "=" ] PIPELINE          first rule whose glob matches the tensor name wins;
                                                the rule without a glob is the default (dense if none)
    PIPELINE  := STAGE ( "|" STAGE )*           transform stages, one terminal stage, byte stages
    STAGE     := name [ "(" key=value, ... ")" ]

    cluster(k=16)|zstd                          every tensor clustered to 16 values, then zstd
    cluster(k=16)|ans; *.bias=dense             biases sent as plain float32
    sparse(ratio=0.01)|cluster(k=16)|zstd       prune -> cluster -> entropy-code

A pipeline without a terminal stage ends in ``dense`` (float32). Pipelines and
plans are immutable and cached by spec.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Mapping

import numpy as np

from fedsqueeze.codecs.base import ArrayStage, BytesStage, Stage, stage_from_config
from fedsqueeze.codecs.binary import CodecError, Reader
from fedsqueeze.codecs.dense import Dense
from fedsqueeze.specs import SpecError, parse_spec
from fedsqueeze.tensors import TensorSpec

_GLOB_RE = re.compile(r"^\s*([A-Za-z0-9_.*?\[\]\-]+)\s*=")


def _no_rest(spec: TensorSpec) -> np.ndarray:
    raise AssertionError("a terminal stage has no rest")


class Pipeline:
    """A tensor's codec: transform stages, a terminal stage, byte stages. Encodes float32 arrays to bytes."""

    def __init__(self, stages: list[Stage]) -> None:
        transforms: list[ArrayStage] = []
        terminal: ArrayStage | None = None
        compressors: list[BytesStage] = []
        for stage in stages:
            if isinstance(stage, BytesStage):
                compressors.append(stage)
            elif compressors or terminal is not None:
                raise CodecError(f"stage {stage.spec!r} after the terminal or a byte stage: order is "
                                 "transforms | terminal | byte stages")
            elif isinstance(stage, ArrayStage) and stage.terminal:
                terminal = stage
            else:
                transforms.append(stage)  # type: ignore[arg-type]
        self.transforms = transforms
        self.terminal = terminal or Dense()
        if self.terminal.input_dtype != np.float32 and transforms:
            raise CodecError(f"{self.terminal.spec} takes {self.terminal.input_dtype} arrays: no transform stage "
                             "may come before it")
        self.compressors = compressors
        self.array_stages: list[ArrayStage] = [*transforms, self.terminal]
        self.spec = "|".join(s.spec for s in [*self.array_stages, *compressors])

    @property
    def lossless(self) -> bool:
        return all(s.lossless for s in [*self.array_stages, *self.compressors])

    @property
    def dtype(self) -> np.dtype:
        """What it encodes and decodes: float32 arrays, or int64 ones for a ``fixed64`` pipeline."""
        return self.terminal.input_dtype

    def encode(self, array: np.ndarray) -> bytes:
        array = np.asarray(array, dtype=self.dtype)
        if not np.isfinite(array).all():
            raise ValueError("cannot encode non-finite values")
        sections, inputs = [], []
        for stage in self.transforms:
            inputs.append(array)
            section, array = stage.encode(array)
            sections.append(section)
        variants = self.terminal.encode_variants(array)
        if any(stage.closed_loop for stage in self.transforms):
            self._close_loops(sections, inputs, variants[0], array.shape)
        prefix = b"".join(sections)
        candidates = [self._compress(prefix + v) for v in variants]
        return min(candidates, key=len)

    def _close_loops(self, sections: list[bytes], inputs: list[np.ndarray], terminal_section: bytes,
                     rest_shape: tuple[int, ...]) -> None:
        """Let closed-loop transforms refine their sections against what the receiver will decode."""
        received = self.terminal.decode(Reader(terminal_section), TensorSpec("rest", rest_shape), _no_rest)
        for i in reversed(range(len(self.transforms))):
            stage = self.transforms[i]
            sections[i] = stage.refine(sections[i], inputs[i], received)
            if i:
                received = stage.decode(Reader(sections[i]), TensorSpec("rest", inputs[i].shape),
                                        lambda _, rest=received: rest)

    def _compress(self, data: bytes) -> bytes:
        for stage in self.compressors:
            data = stage.compress(data)
        return data

    def decode(self, payload: bytes | memoryview, spec: TensorSpec) -> np.ndarray:
        """An array of ``spec.shape`` (float32, or int64 for ``fixed64``), or CodecError naming the tensor."""
        try:
            data = payload
            bounds = self._byte_bounds(spec)
            for stage, bound in zip(reversed(self.compressors), reversed(bounds)):
                data = stage.decompress(data, bound)
            reader = Reader(data)

            def decode_from(i: int, part: TensorSpec) -> np.ndarray:
                return self.array_stages[i].decode(reader, part, lambda rest: decode_from(i + 1, rest))

            array = decode_from(0, spec)
            reader.finish()
            return array
        except CodecError as exc:
            raise CodecError(f"{self.spec}: {exc}", spec.name) from None

    def _array_bound(self, spec: TensorSpec) -> int:
        total, part = 0, spec
        for stage in self.transforms:
            total += stage.max_section_size(part)
            part = stage.rest_bound(part)
        return total + self.terminal.max_section_size(part)

    def _byte_bounds(self, spec: TensorSpec) -> list[int]:
        """The largest input each byte stage may decompress to, innermost first."""
        bounds = [self._array_bound(spec)]
        for stage in self.compressors[:-1]:
            bounds.append(stage.max_compressed_size(bounds[-1]))
        return bounds

    def max_payload_size(self, spec: TensorSpec) -> int:
        size = self._array_bound(spec)
        for stage in self.compressors:
            size = stage.max_compressed_size(size)
        return size


class CodecPlan:
    """Rules that pick each tensor's pipeline by name (see the module doc for the syntax)."""

    def __init__(self, rules: list[tuple[str | None, Pipeline]]) -> None:
        defaults = [p for glob, p in rules if glob is None]
        if len(defaults) > 1:
            raise CodecError("a codec plan has at most one rule without a name pattern")
        self.rules = [(glob, p) for glob, p in rules if glob is not None]
        self.default = defaults[0] if defaults else Pipeline([])
        parts = [f"{glob}={p.spec}" for glob, p in self.rules]
        self.spec = "; ".join([self.default.spec, *parts])

    def for_tensor(self, name: str) -> Pipeline:
        return next((p for glob, p in self.rules if fnmatch.fnmatchcase(name, glob)), self.default)

    @property
    def lossless(self) -> bool:
        return self.default.lossless and all(p.lossless for _, p in self.rules)

    def pipelines(self) -> list[Pipeline]:
        return [self.default, *(p for _, p in self.rules)]

    def require_float32(self) -> None:
        """CodecError unless every pipeline takes float32 arrays, as model tensors are (``fixed64`` carries
        edge aggregators' int64 partial sums, never a model)."""
        if any(p.dtype != np.float32 for p in self.pipelines()):
            raise CodecError("fixed64 carries edge aggregators' partial sums, not model tensors")

    def check(self, specs: Mapping[str, TensorSpec], seed: int = 0) -> None:
        """Raise CodecError unless every pipeline this plan picks for ``specs`` encodes and decodes.

        A trial round trip of random values on the smallest tensor each pipeline serves: it catches what
        parsing cannot (a stage that needs more dimensions than the tensor has, a latent decoder nobody
        registered), at the cost of the smallest tensors only.
        """
        smallest: dict[int, TensorSpec] = {}
        for name, spec in specs.items():
            pipeline = self.for_tensor(name)
            known = smallest.get(id(pipeline))
            if known is None or spec.numel < known.numel:
                smallest[id(pipeline)] = spec
        rng = np.random.default_rng(seed)
        for pipeline in self.pipelines():
            spec = smallest.get(id(pipeline))
            if spec is None:
                continue
            try:
                payload = pipeline.encode(rng.standard_normal(spec.shape).astype(np.float32))
            except (ValueError, TypeError, IndexError, KeyError) as exc:
                raise CodecError(f"{pipeline.spec} cannot encode tensor {spec.name!r} of shape "
                                 f"{list(spec.shape)}: {exc}") from None
            pipeline.decode(payload, spec)


@functools.lru_cache(maxsize=512)
def get_pipeline(spec: str) -> Pipeline:
    """The pipeline a spec such as ``cluster(k=16)|zstd`` names."""
    stages = []
    for part in spec.split("|"):
        try:
            name, params = parse_spec(part)
        except SpecError as exc:
            raise CodecError(str(exc)) from None
        stages.append(stage_from_config({"id": name, **params}))
    return Pipeline(stages)


@functools.lru_cache(maxsize=512)
def get_plan(spec: str) -> CodecPlan:
    """The codec plan a spec names: ``PIPELINE`` or ``PIPELINE; GLOB=PIPELINE; ...``."""
    rules: list[tuple[str | None, Pipeline]] = []
    for rule in filter(None, (r.strip() for r in spec.split(";"))):
        match = _GLOB_RE.match(rule)
        if match:
            rules.append((match.group(1), get_pipeline(rule[match.end():].strip())))
        else:
            rules.append((None, get_pipeline(rule)))
    if not rules:
        raise CodecError("empty codec plan")
    return CodecPlan(rules)
