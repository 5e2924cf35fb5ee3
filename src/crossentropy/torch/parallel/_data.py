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
loss by that ``n``. DDP and FSDP (1 and 2) both average gradients over the data-parallel ranks, so
both need the ``* world_size``; only a hand-written ``all_reduce`` that sums gradients does not.

Sequence (context) parallelism is the same sum with the sequence group: each rank holds a slice of
the tokens, and after shifting the labels on the whole sequence (before slicing; a slice's last
position needs the next slice's first label),

.. code-block:: python

    loss = linear_cross_entropy(h, W, y, reduction="sum") / global_valid_count(y, process_group=sp)

gives losses that add up to the mean of the whole sequence and gradients that add up to its
gradients (the hidden states' gradients are exactly the whole sequence's, slice by slice); multiply
by the group size where DDP or FSDP average the replicated weights' gradients over that group.
"""

from __future__ import annotations

import numbers

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
    averages gradients) gives the gradients of one big batch, whatever the padding per rank; with
    the sequence-parallel group, the gradients of the whole sequence (see the module docstring).

    Every rank of ``process_group`` must call this (it runs one all-reduce). Without an
    initialised ``torch.distributed`` it returns the local count.

    Args:
        target: class ids of any shape, integer dtype (``ignore_index`` marks padding).
        ignore_index: class id that is not counted.
        process_group: the data-parallel (or sequence-parallel) group; ``None`` for the default
            group.
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
    kind: type[Exception] = ValueError
    problem = ""
    try:
        count: Tensor | None = _local_count(target, ignore_index, weight)
    except (TypeError, ValueError) as exc:
        count, problem, kind = None, str(exc), type(exc)
    if dist.is_available() and dist.is_initialized():
        # One all-reduce on every rank, whatever went wrong locally: each rank's error code
        # travels with the count, so bad input raises on every rank instead of leaving the others
        # waiting. float64 holds every count below 2**53 exactly, and any weight sum.
        rank = dist.get_rank(process_group)
        world = dist.get_world_size(process_group)
        device = _collective_device(target, str(dist.get_backend(process_group)))
        packed = torch.zeros(1 + world, dtype=torch.float64, device=device)
        packed[0] = float(count) if count is not None else 0.0
        packed[1 + rank] = (2.0 if kind is TypeError else 1.0) if problem else 0.0
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=process_group)
        codes = packed[1:].tolist()
        bad = [r for r, c in enumerate(codes) if c > 0]
        if bad and not problem:
            kind = TypeError if 2.0 in codes else ValueError
            problem = f"global_valid_count: rank(s) {bad} were given invalid input"
        if count is not None:
            count = packed[0].to(device=count.device, dtype=count.dtype)
    if problem or count is None:
        raise kind(problem)
    return count


def _collective_device(target: object, backend: str) -> torch.device:
    """Where the count's all-reduce runs: the target's device when the backend takes it, else a
    device it does take (NCCL only reduces CUDA tensors, even when the target is bad input)."""
    backend = backend.lower()
    cpu_ok = "gloo" in backend or "mpi" in backend or "nccl" not in backend
    if isinstance(target, Tensor) and (target.device.type != "cpu" or cpu_ok):
        return target.device
    if not cpu_ok and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _local_count(target: object, ignore_index: object, weight: object) -> Tensor:
    if not isinstance(target, Tensor):
        raise TypeError(f"global_valid_count: target must be a torch.Tensor; got {type(target)}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"global_valid_count: target must hold integer class ids; got {target.dtype}"
        )
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"global_valid_count: ignore_index must be an int; got {ignore_index!r}")
    valid = target != int(ignore_index)
    if weight is None:
        return valid.sum()
    if not isinstance(weight, Tensor) or weight.dim() != 1 or not weight.is_floating_point():
        raise ValueError(
            "global_valid_count: weight must be a 1-d float tensor of class weights; got "
            f"{getattr(weight, 'shape', type(weight))}"
        )
    counted = target[valid]
    if counted.numel() and (int(counted.min()) < 0 or int(counted.max()) >= weight.shape[0]):
        raise ValueError(
            f"global_valid_count: target holds class ids outside [0, {weight.shape[0]}) "
            f"(min {int(counted.min())}, max {int(counted.max())})"
        )
    return weight[counted].sum()
