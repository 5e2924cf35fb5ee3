"""The engine wing of the torch layer: row math, chunk loops, custom ops, dispatch, precision and
reductions. It imports nothing from the public losses or from ``parallel``.

A prepared call (``_run.PreparedCall``, built once by a public function) flows through it so::

    PreparedCall
      -> _dispatch.plan_call  -> Plan: engine (native, plain, chunked, cuda-fast, triton-lowmem,
                                       triton-softmax, vocab-parallel), mode, precision, block
      -> _run.run             -> _checks (class ids), _reduce (row coefficients, fused mode)
                                 -> _ops (custom ops) -> _chunked (the chunk loops) -> _rowmath
                                    (or the Triton kernels, crossentropy.triton)
      -> _run.reduce          -> _reduce (per-row outputs to the loss)

``_gemm`` resolves the GEMMs' dtypes (``Precision``) at the call's entry.
"""
