"""Loss normalisation for data-parallel training (DDP, FSDP) with uneven padding.

With ``reduction="mean"`` every rank divides by its *own* number of valid tokens, and DDP then
averages the ranks' gradients. When ranks hold different numbers of valid tokens (padding, packing,
variable-length documents) that average of means weights each rank equally instead of each token,
so the gradient differs from the gradient of one big batch. The fix is to sum on each rank and
divide by the token count of the whole step, gathered across ranks:

.. code-block:: python

    n = global_valid_count(target)                    # same value on every rank
    loss = cross_entropy(logits, target, reduction="sum") / n
    (loss * world_size).backward()                    # DDP averages: * world_size undoes it

For gradient accumulation over ``k`` micro-batches, add the counts of all ``k`` micro-batches first
(``n = sum(global_valid_count(t) for t in micro_targets)``) and divide every micro-batch's summed
loss by that ``n``. FSDP and plain ``all_reduce`` of summed gradients need no ``* world_size``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["global_valid_count"]


def global_valid_count(
    target: Tensor,
    ignore_index: int = -100,
    process_group: dist.ProcessGroup | None = None,
    *,
    weight: Tensor | None = None,
) -> Tensor:
    r"""Number of counted (non-ignored) targets summed over all ranks of a process group.

    .. math::

        n = \sum_{\text{ranks}} \sum_i [y_i \neq \text{ignore\_index}]
        \quad\text{or, with class weights,}\quad
        n = \sum_{\text{ranks}} \sum_{i:\, y_i \neq \text{ignore\_index}} w_{y_i}

    which is the denominator of torch's ``reduction="mean"`` for the whole global batch. Dividing
    each rank's ``reduction="sum"`` loss by ``n`` (and multiplying by the world size when DDP
    averages gradients) gives the gradients of one big batch, whatever the padding per rank.

    Every rank of ``process_group`` must call this (it runs one all-reduce). Without an
    initialised ``torch.distributed`` it returns the local count.

    Args:
        target: class ids of any shape, integer dtype (``ignore_index`` marks padding).
        ignore_index: class id that is not counted.
        process_group: the data-parallel group; ``None`` for the default group.
        weight: class weights of shape ``(C,)`` to sum ``weight[target]`` instead of counting, as
            torch's weighted mean does.

    Returns:
        A 0-d tensor on ``target``'s device, the same on every rank: int64 for a count, the dtype
        of ``weight`` for a weight sum.

    Example (no process group: the local count):

    >>> import torch
    >>> int(global_valid_count(torch.tensor([[3, 1, -100], [2, -100, -100]])))
    3
    """
    if not isinstance(target, Tensor):
        raise TypeError(f"global_valid_count: target must be a torch.Tensor; got {type(target)}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"global_valid_count: target must hold integer class ids; got {target.dtype}"
        )
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"global_valid_count: ignore_index must be an int; got {ignore_index!r}")
    valid = target != ignore_index
    problem = ""
    if weight is None:
        count = valid.sum()
    else:
        if not isinstance(weight, Tensor) or weight.dim() != 1 or not weight.is_floating_point():
            raise ValueError(
                "global_valid_count: weight must be a 1-d float tensor of class weights; got "
                f"{getattr(weight, 'shape', type(weight))}"
            )
        counted = target[valid]
        if counted.numel() and (int(counted.min()) < 0 or int(counted.max()) >= weight.shape[0]):
            problem = (
                f"global_valid_count: target holds class ids outside [0, {weight.shape[0]}) "
                f"(min {int(counted.min())}, max {int(counted.max())})"
            )
            count = weight.new_zeros(())
        else:
            count = weight[counted].sum()
    if dist.is_available() and dist.is_initialized():
        # The error flag travels with the count so that a bad target raises on every rank.
        packed = torch.stack([count, count.new_tensor(1 if problem else 0)])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=process_group)
        count = packed[0]
        if int(packed[1]) and not problem:
            problem = "global_valid_count: another rank's target holds class ids outside weight"
    if problem:
        raise ValueError(problem)
    return count
