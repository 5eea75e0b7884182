"""Representation quality: the effective rank of a model's penultimate-layer embeddings.

FedCompress reads it as a sign of whether the model still has room to learn:
the effective rank (Roy & Vetterli, 2007) is exp of the entropy of the
normalised singular values of the L2-normalised embeddings: 1 when every
embedding points the same way, d when they spread evenly over d dimensions.
"""

from __future__ import annotations

import torch
from torch import nn

from fedsqueeze.data.datasets import Dataset


def effective_rank(embeddings: torch.Tensor) -> float:
    rows = nn.functional.normalize(embeddings.double(), dim=1)
    singular = torch.linalg.svdvals(rows)
    p = singular / singular.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def embedding_module(model: nn.Module, name: str = "") -> tuple[nn.Module, bool]:
    """The module whose output (``False``) or input (``True``) is ``model``'s penultimate embedding.

    Looked for in this order: ``name`` (a module path such as ``"layer3"`` or ``"features"``, from the
    method's ``embedding`` parameter); the module the model's ``embedding_module`` attribute names (a
    model declares its embedding this way); else the input of the model's last ``nn.Linear`` (the head of
    most classifiers). ValueError saying so when none of these exists.
    """
    modules = dict(model.named_modules())
    declared = name or getattr(model, "embedding_module", "")
    if declared:
        if not isinstance(declared, str) or declared not in modules:
            raise ValueError(f"the model has no module {declared!r} to read the embedding from; its top-level "
                             f"modules are {', '.join(n for n in modules if n and '.' not in n) or 'none'}")
        return modules[declared], False
    linears = [m for m in modules.values() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear head whose input is its embedding: name the embedding's "
                         "module with the method's embedding= parameter or the model's `embedding_module` attribute")
    return linears[-1], True


@torch.inference_mode()
def embeddings_of(model: nn.Module, data: Dataset, name: str = "", batch_size: int = 1000) -> torch.Tensor:
    """Penultimate-layer embeddings of every example (``embedding_module`` says where they are read), flattened
    to one row per example."""
    module, take_input = embedding_module(model, name)
    captured: list[torch.Tensor] = []
    hook = module.register_forward_hook(
        lambda _m, inputs, output: captured.append((inputs[0] if take_input else output).flatten(1)))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(data), batch_size):
            model(data.x[i:i + batch_size])
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured)
