"""One pass per call: a public function's prepared call, planned, run and reduced.

::

    prepare(group) -> PreparedCall          the public function's checks, once
      [vocab parallel: parallel.agree]      every rank's checks agree, or every rank raises
    engine.plan_call -> Plan                 which engine, precision and block
    engine.run (or parallel.run) -> Result  per-row outputs, or a fused scalar loss
    engine.reduce -> the caller's value
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crossentropy.torch.engine import _run as R
from crossentropy.torch.engine._dispatch import plan_call
from crossentropy.torch.parallel import _vocab as VP

__all__ = ["execute"]


def execute(fn: str, prepare: Callable[[Any], R.PreparedCall], process_group: Any) -> Any:
    """Run the call ``prepare(group)`` checks and builds: on this process, or vocab parallel over
    ``process_group`` (``fn`` names the function in the agreement's messages)."""
    if process_group is None:
        call = prepare(None)
        return R.reduce(call, R.run(call, plan_call(call)))
    call = VP.agree(fn, process_group, prepare)
    return R.reduce(call, VP.run(call, plan_call(call)))
