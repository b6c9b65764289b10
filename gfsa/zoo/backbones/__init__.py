"""The backbone zoo: one file per model family; ``backbone.type`` picks the builder.

A builder ``build(cfg, task) -> nn.Module`` returns a module whose ``forward(**batch_inputs)``
returns what the task's recipe expects (logits for classification). When it wraps a library
model, the wrapped model is ``.net`` and is what :func:`gfsa.patch` receives.
"""

from __future__ import annotations

from torch import nn


def patch_target(model: nn.Module) -> nn.Module:
    return getattr(model, "net", model)
