"""What crosses vLLM's RPC for weight transfer: plain control data, through vLLM's own serializer.

LLM.collective_rpc with the multiprocess engine core sends (client, call id, method, args) through
MsgpackEncoder (vllm/v1/engine/core_client.py:1001-1014) and the engine core decodes it with a
MsgpackDecoder that has no type (vllm/v1/engine/core.py:1843, 1913): whatever we send must come back
equal as plain data, and be accepted by vLLM's NCCL backend's own info classes."""
import torch

from policy.vllm_engine import weight_transfer_init_info, weight_update_info
from policy.vllm_weight_transfer import bucket_metadata


def round_trip(message):
    from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

    return MsgpackDecoder().decode(MsgpackEncoder().encode(message))


def utility_call(method: str, kwargs: dict):
    return (0, 12345, "collective_rpc", (method, None, (), kwargs))  # core_client.py:1014 and :1091


def test_weight_transfer_messages_survive_vllms_serializer():
    from vllm.distributed.weight_transfer.nccl_common import NCCLWeightTransferInitInfo, worker_init_payload
    from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferUpdateInfo

    init = weight_transfer_init_info("10.1.2.3", 29511, 3, 5)
    decoded = round_trip(utility_call("init_weight_transfer_engine", {"init_info": init}))
    _client, call_id, method, (rpc, _timeout, _args, kwargs) = decoded
    assert (call_id, method, rpc) == (12345, "collective_rpc", "init_weight_transfer_engine")
    assert kwargs["init_info"] == init
    info = NCCLWeightTransferInitInfo(**kwargs["init_info"])  # nccl_common.py:71, what parse_init_info builds
    assert (info.rank_offset, info.world_size, info.packed, info.nccl_unique_id_bytes) == (3, 5, False, None)
    payload = worker_init_payload(info)  # what vLLM's own trainer engine would send: ours plus the buffer defaults
    assert {k: payload[k] for k in init} == init

    bucket = [("model.language_model.layers.0.mlp.up_proj.weight", torch.zeros(6, 4, dtype=torch.bfloat16)),
              ("model.visual.blocks.0.attn.qkv.bias", torch.zeros(12))]
    update = weight_update_info(bucket_metadata(bucket))
    (_, _, _, (_, _, _, kwargs)) = round_trip(utility_call("update_weights", {"update_info": update}))
    typed = NCCLWeightTransferUpdateInfo(**kwargs["update_info"])  # nccl_engine.py:84
    assert typed.names == [n for n, _ in bucket] and typed.shapes == [[6, 4], [12]]
    # The worker rebuilds each receive buffer like this (nccl_engine.py:219-223).
    for dtype_name, shape, (_, tensor) in zip(typed.dtype_names, typed.shapes, bucket):
        buffer = torch.empty(shape, dtype=getattr(torch, dtype_name))
        assert buffer.shape == tensor.shape and buffer.dtype == tensor.dtype


def test_a_tensor_does_not_come_back_as_a_tensor():
    """Why weights never go through collective_rpc: the untyped decoder returns the tensor's encoding."""
    weights = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    (_, _, _, (_, _, _, kwargs)) = round_trip(utility_call("thyme_load_weights", {"named": [("w", weights)]}))
    [[name, value]] = kwargs["named"]
    assert name == "w" and not isinstance(value, torch.Tensor)
