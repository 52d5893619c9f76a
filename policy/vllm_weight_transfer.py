"""New policy weights from learner rank 0 into the vLLM rollout engines, over NCCL (GPU clusters).

The interface agreed with the GRPO trainer (it gathers ZeRO-3 shards on the learners and calls this):

    # learner rank 0 (only it), once:
    sender = WeightSender(master_address, master_port, world_size, device)
    # every engine, once, before the sender is constructed (or concurrently):
    actor.start_weight_receiver.remote(master_address, master_port, rank_offset, world_size)
    # each update: the engines start receiving, the sender sends the same buckets in the same order
    done = [a.receive_weights.remote([bucket_metadata(b) for b in buckets]) for a in actors]
    for bucket in buckets: sender.send(bucket)   # [(HF name, GPU tensor)], e.g. model.language_model...
    ray.get(done)                                # loaded, prefix and encoder caches reset
    sender.close()

Both sides use vLLM 0.32's own weight-transfer code: the sender joins the group as rank 0 with
vLLM's trainer-side helper (vllm/distributed/weight_transfer/nccl_common.py:224, `trainer_init`:
a StatelessProcessGroup TCP rendezvous hosted by rank 0 at master_address:master_port, then a
PyNcclCommunicator), and broadcasts each tensor from rank 0 as vLLM's NCCL trainer engine does
unpacked (vllm/distributed/weight_transfer/nccl_engine.py:385-393); each engine's workers receive
in vLLM's NCCLWeightTransferEngine (nccl_engine.py:218-228: one broadcast per tensor, then the
model's own load_weights, which maps Hugging Face names to vLLM's modules). Only names, shapes
and dtype names cross vLLM's RPC.

Why not vLLM's `NCCLTrainerWeightTransferEngine.send_weights` itself: it drives the engines' RPCs
from the trainer through a client object and iterates a `WeightSource` of the whole model per call
(nccl_engine.py:318). Our engines sit in Ray actors the driver calls, and ZeRO-3 gathers must run
bucket by bucket on every learner rank, so the sender exposes one bucket per call instead; the wire
protocol is the same (unpacked, `packed=False` on both sides, policy/vllm_engine.py).

Ranks: the sender is rank 0; engine i's workers take ranks rank_offset .. rank_offset + tp_i - 1
(vLLM adds each worker's rank, nccl_common.py:195-201); `receiver_ranks` computes them.
"""
from __future__ import annotations

from typing import Sequence

import torch


def dtype_name(dtype: torch.dtype) -> str:
    """The name vLLM's receiver turns back into a dtype with getattr(torch, name) (nccl_engine.py:205, 334)."""
    return str(dtype).split(".")[-1]


def bucket_metadata(bucket: Sequence[tuple[str, torch.Tensor]]) -> list[tuple[str, tuple[int, ...], str]]:
    """What the engines need to receive a bucket: (name, shape, dtype name) per tensor, in send order."""
    return [(name, tuple(int(d) for d in t.shape), dtype_name(t.dtype)) for name, t in bucket]


def plan_buckets(params: Sequence[tuple[str, tuple[int, ...], torch.dtype]], max_bytes: int) -> list[list[str]]:
    """Split (name, shape, dtype) into consecutive buckets of at most max_bytes (a larger tensor is alone)."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1 (got {max_bytes})")
    buckets: list[list[str]] = []
    size = 0
    for name, shape, dtype in params:
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        if not buckets or size + nbytes > max_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(name)
        size += nbytes
    return buckets


def receiver_ranks(tensor_parallel_sizes: Sequence[int]) -> tuple[list[int], int]:
    """(rank_offset of each engine, world_size of the group) with the sender at rank 0."""
    offsets, rank = [], 1
    for tp in tensor_parallel_sizes:
        if tp < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1 (got {tp})")
        offsets.append(rank)
        rank += tp
    return offsets, rank


class WeightSender:
    """Learner rank 0's end of the group. Construction blocks until every engine worker has joined."""

    def __init__(self, master_address: str, master_port: int, world_size: int, device):
        from vllm.distributed.weight_transfer.nccl_common import trainer_init

        if world_size < 2:
            raise ValueError(f"world_size {world_size} leaves no engine to send to (sender + engine workers)")
        self.device = torch.device(device)
        torch.cuda.set_device(self.device)  # trainer_init joins on the current device (nccl_common.py:255)
        self.group = trainer_init({"master_address": master_address, "master_port": int(master_port),
                                   "world_size": int(world_size)}, rank=0)

    def send(self, bucket: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Broadcast one bucket; returns when the tensors may be freed (the engines load them on arrival)."""
        if self.group is None:
            raise RuntimeError("WeightSender.send after close()")
        stream = torch.cuda.current_stream()
        for name, tensor in bucket:
            if tensor.device != self.device:
                raise ValueError(f"{name} is on {tensor.device}, the sender on {self.device}: gather it to the GPU first")
            # NCCL sends numel elements from data_ptr(): a non-contiguous view would send other memory.
            self.group.broadcast(tensor if tensor.is_contiguous() else tensor.contiguous(), src=0, stream=stream)  # pynccl.py:538
        stream.synchronize()

    def close(self) -> None:
        if self.group is not None:
            self.group.destroy()  # vllm/distributed/device_communicators/pynccl.py:250
            self.group = None
