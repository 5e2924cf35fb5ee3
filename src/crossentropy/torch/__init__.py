"""PyTorch layer: torch-exact cross-entropy, fused linear cross-entropy, losses as nn.Modules.

Import this package only when torch is installed (``pip install 'crossentropy[torch]'``).

Three wings, imports running one way (public -> parallel -> engine). One pass per call::

    linear_cross_entropy(input, linear_weight, target, ...)        _functional (public)
      -> _dtensor.dtensor_call when an argument is a DTensor       parallel
      -> _pass.execute:
           prepare: the checks, once, into one PreparedCall         _functional, _validation
           [process_group: parallel._vocab.agree]                  parallel
           engine._dispatch.plan_call -> Plan                      engine
           engine._run.run (or parallel._vocab.run) -> Result      engine
           engine._run.reduce -> the loss                          engine

``cross_entropy``, ``linear_logprobs`` and ``linear_distillation_loss`` take the same pass.
"""

import torch.distributed as _dist

if _dist.is_available():
    # torch.distributed.nn.functional binds ``group=group.WORLD`` as a default argument when it is
    # imported. torch imports it lazily, through torch._dynamo, on the first call of any custom
    # operator (every engine here is one), which in a distributed program comes after
    # init_process_group: the defaults then hold the default process group for good, it outlives
    # destroy_process_group, and gloo's worker threads are torn down during interpreter
    # finalisation: "terminate called without an active exception", exit -6 (the torchrun
    # example, about 1 run in 5 under load). Imported here, before the group exists, the defaults
    # hold None. (2.8 ms, 8 small modules.)
    import torch.distributed.nn.functional  # noqa: F401

from crossentropy.torch._contrastive import ContrastiveLoss, contrastive_loss
from crossentropy.torch._distill import linear_distillation_loss
from crossentropy.torch._extras import bce_with_logits as binary_cross_entropy_with_logits
from crossentropy.torch._extras import focal_loss
from crossentropy.torch._functional import cross_entropy, linear_cross_entropy
from crossentropy.torch._logprobs import linear_logprobs
from crossentropy.torch._modules import (
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    FocalLoss,
    LinearCrossEntropyLoss,
)
from crossentropy.torch.engine._dispatch import explain
from crossentropy.torch.engine._reduce import CrossEntropyAux, LogProbs
from crossentropy.torch.parallel._data import global_valid_count

__all__ = [
    "BCEWithLogitsLoss",
    "ContrastiveLoss",
    "CrossEntropyAux",
    "CrossEntropyLoss",
    "FocalLoss",
    "LinearCrossEntropyLoss",
    "LogProbs",
    "binary_cross_entropy_with_logits",
    "contrastive_loss",
    "cross_entropy",
    "explain",
    "focal_loss",
    "global_valid_count",
    "linear_cross_entropy",
    "linear_distillation_loss",
    "linear_logprobs",
]
