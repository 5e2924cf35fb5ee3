"""One rank of the FSDP2 + ``crossentropy.hf`` tests: ``python _sharded_hf_worker.py RANK WORLD
STORE OUT``.

A tiny Llama under ``fully_shard`` (decoder layers and the root; optionally the LM head as a
unit of its own, whose weight is then a sharded DTensor at the loss), patched and not; and the
``transformers`` Trainer with FSDP2 through accelerate's plugin, patched and not, step by step.
Saves plain results for the parent test. Not a test module itself.
"""

from __future__ import annotations

import datetime
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

VOCAB = 37  # uneven shards on 2 ranks (19, 18)


def llama(dtype: torch.dtype, tied: bool) -> Any:
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).to(dtype).train()


def batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    ids = torch.randint(0, VOCAB, (2, 7 + rank), generator=g)
    labels = ids.clone()
    labels[0, : 2 + 2 * rank] = -100
    return ids, labels


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.full_tensor().detach() for n, p in model.named_parameters()}


def models(mesh: DeviceMesh) -> dict[str, Any]:
    """Patched against unpatched (fp32), and patched against a float64 loss written by hand."""
    from torch.distributed.fsdp import fully_shard

    from crossentropy import hf
    from crossentropy.torch.parallel._dtensor import is_fsdp_module

    ids, labels = batch(mesh.get_local_rank())
    out: dict[str, Any] = {}
    layouts = {
        "untied-root": (False, False),
        "untied-head-unit": (False, True),
        "tied-root": (True, False),
    }
    for name, (tied, head_unit) in layouts.items():
        for dtype, variant in (
            (torch.float32, "hf"),
            (torch.float32, "patched"),
            (torch.float64, "by-hand"),
            (torch.float64, "patched"),
        ):
            model = llama(dtype, tied)
            if variant == "patched":
                hf.patch(model)
            for layer in model.model.layers:
                fully_shard(layer, mesh=mesh)
            if head_unit:
                fully_shard(model.lm_head, mesh=mesh)
            fully_shard(model, mesh=mesh)
            if variant == "by-hand":  # transformers upcasts to fp32; this keeps float64
                logits = model(input_ids=ids).logits
                y = F.pad(labels, (0, 1), value=-100)[:, 1:]
                loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
            else:
                loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            out[f"{name}-{str(dtype)[6:]}-{variant}"] = {
                "loss": loss.detach(),
                "grads": grads(model),
                "head_unit": is_fsdp_module(model.lm_head),
            }
    return out


def trainer(mesh: DeviceMesh) -> dict[str, Any]:
    """The Trainer with accelerate's FSDP2 plugin (fsdp_version 2), patched and not."""
    import transformers
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from crossentropy import hf

    class FSDPOnCPU(transformers.Trainer):
        """accelerate turns FSDP on only on accelerators; on CPU processes (gloo) its state says
        MULTI_CPU and it would wrap the model in DDP. This sets the FSDP state its own plugin
        would have set, so the model goes through accelerate's FSDP2 preparation."""

        def create_accelerator_and_postprocess(self) -> None:
            super().create_accelerator_and_postprocess()
            state = self.accelerator.state
            state.distributed_type = DistributedType.FSDP
            state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
            self.is_fsdp_enabled = True

    g = torch.Generator().manual_seed(1)
    data = []
    for i in range(16):
        ids = torch.randint(0, VOCAB, (5 + i % 4,), generator=g)
        labels = ids.clone()
        labels[: i % 3] = -100
        data.append({"input_ids": ids, "labels": labels})

    def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        n = max(len(r["input_ids"]) for r in rows)
        return {
            k: torch.stack([F.pad(r[k], (0, n - len(r[k])), value=v) for r in rows])
            for k, v in (("input_ids", 0), ("labels", -100))
        }

    out: dict[str, Any] = {}
    for tied in (False, True):
        for patched in (False, True):
            model = llama(torch.float32, tied)
            if patched:
                hf.patch(model)
            args = transformers.TrainingArguments(
                output_dir=os.environ.get("TMPDIR", "/tmp"),
                per_device_train_batch_size=2,
                gradient_accumulation_steps=2,
                max_steps=3,
                learning_rate=1e-2,
                use_cpu=True,
                logging_steps=1,
                report_to=[],
                save_strategy="no",
                disable_tqdm=True,
                seed=0,
                fsdp=True,
                fsdp_config={
                    "fsdp_version": 2,
                    "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
                    "reshard_after_forward": True,
                },
            )
            losses: list[float] = []

            class Record(transformers.TrainerCallback):
                def __init__(self, sink: list[float]) -> None:
                    self.sink = sink

                def on_log(self, *a: Any, logs: dict[str, Any] | None = None, **k: Any) -> None:
                    if logs and "loss" in logs:
                        self.sink.append(float(logs["loss"]))

            run = FSDPOnCPU(
                model=model,
                args=args,
                train_dataset=data,
                data_collator=collate,
                callbacks=[Record(losses)],
            )
            run.train()
            out[f"tied{int(tied)}-patched{int(patched)}"] = {
                "losses": losses,
                "params": {n: p.full_tensor().detach() for n, p in run.model.named_parameters()},
                "fsdp2": type(run.model).__name__.startswith("FSDP"),
                "patched": hf.is_patched(run.model),
            }
    return out


PARTS: dict[str, Callable[[DeviceMesh], dict[str, Any]]] = {"models": models, "trainer": trainer}


def main() -> None:
    rank, world = int(sys.argv[1]), int(sys.argv[2])
    store_path, out_path = sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    os.environ.update(  # what torchrun sets; accelerate reads them
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT="29500",
    )
    timeout = datetime.timedelta(seconds=float(os.environ.get("SHARDED_TIMEOUT", "30")))
    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    mesh = init_device_mesh("cpu", (world,))
    results: dict[str, Any] = {}
    for name, part in PARTS.items():
        try:
            results[name] = part(mesh)
        except Exception as exc:
            text = traceback.format_exc()
            results[name] = {"__error__": text}
            if "imed out" in str(exc):
                break
    torch.save(results, out_path)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
