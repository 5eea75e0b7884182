"""Codecs: how a tensor becomes a wire payload. Importing this package registers every stage.

Use ``get_plan(spec)`` for a model's tensors (rules per tensor name) and
``get_pipeline(spec)`` for one tensor; see ``fedsqueeze.codecs.pipeline`` for the syntax.
"""

from fedsqueeze.codecs import cluster, dense, entropy, latent, sparse  # noqa: F401  (register the stages)
from fedsqueeze.codecs.base import ArrayStage, BytesStage, DecodeRest, Stage, register_stage, registered_stages
from fedsqueeze.codecs.binary import CodecError, Reader
from fedsqueeze.codecs.latent import LATENT_MODELS, LatentModel
from fedsqueeze.codecs.pipeline import CodecPlan, Pipeline, get_pipeline, get_plan

__all__ = ["ArrayStage", "BytesStage", "CodecError", "CodecPlan", "DecodeRest", "LATENT_MODELS", "LatentModel",
           "Pipeline", "Reader", "Stage", "get_pipeline", "get_plan", "register_stage", "registered_stages"]
