"""The parallel wing of the torch layer: vocabulary shards, DTensor (FSDP2 / tensor parallel) and
data-parallel counts. It imports the engine, never the public losses (the DTensor entry receives
the public function to call back with plain tensors).

::

    public loss (process_group=g)
      -> _vocab.agree   every rank's prepared call, checked and agreed on (or every rank raises),
                        with its shard's offset, the whole vocabulary, the global mean divisors
      -> _vocab.run     the engine, with the group's all-reduces as the row statistics' merge
    public loss (DTensor arguments)
      -> _dtensor.dtensor_call  placements read, weight gathered (FSDP2) or the public function
                                called back with process_group (vocabulary shards)
    _data.global_valid_count    the token count of a data-parallel step
"""
