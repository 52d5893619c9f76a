"""New weights from the learners to every rollout engine after a training step (driver side).

Two ways, one interface (`push(version, wait) -> seconds`, `wait()`). With wait=False the engines
load when they are free (each engine runs its calls in order, so a rollout already queued finishes
with the old weights and the next one uses the new): that is how overlap keeps generating.
- ObjectStoreWeightSync (HF engines, CPU or GPU): learner rank 0 gathers the full state dict (a
  collective under ZeRO-3), puts it in Ray's object store once and returns the reference; every
  engine loads it from there, so the weights never pass through the driver.
- NcclWeightSync (vLLM engines on GPUs): learner rank 0 and every engine worker form one NCCL
  group (policy/vllm_weight_transfer.py: vLLM 0.32's weight-transfer engine); the learners gather
  ZeRO-3 shards bucket by bucket (GRPOLearner.gathered_buckets) and rank 0 broadcasts each bucket
  while the engines receive it; only names, shapes and dtypes cross Ray. NOT RUN IN THIS PROJECT:
  it needs CUDA GPUs and vLLM; the bucket gathering it relies on is tested on CPU.
Each engine records the version it holds; rollouts carry it, so the trainer can refuse stale ones.
"""
from __future__ import annotations

import time

import ray
from ray.exceptions import ActorUnavailableError, RayActorError


ACTOR_LOST = (RayActorError, ActorUnavailableError)


def wait_until_alive(actor, timeout_s: float = 600) -> None:
    """Block until a restarting actor answers again (it is loading its model)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(actor.stats.remote(), timeout=60)
            return
        except ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


class _Sync:
    def __init__(self):
        self._inflight: list = []  # (engine, ref) of loads not yet known to be done

    def wait(self) -> None:
        """Block until every engine holds the last weights pushed (one that restarted gets them again)."""
        inflight, self._inflight = self._inflight, []
        for engine, ref in inflight:
            try:
                ray.get(ref)
            except ACTOR_LOST:
                self.reload(engine)

    def _finish(self, inflight: list, wait: bool, started: float) -> float:
        self._inflight = inflight
        if wait:
            self.wait()
        return time.perf_counter() - started


class ObjectStoreWeightSync(_Sync):
    def __init__(self, learners, engines: list):
        super().__init__()
        self.learners, self.engines = learners, engines
        self._latest = None  # (ref, version) of the last weights pushed

    def _publish(self, version: int):
        (ref,) = self.learners.call_all("publish_weights")[0]
        self._latest = (ref, version)
        return ref

    def push(self, version: int, wait: bool = True) -> float:
        self.wait()  # the previous weights are loaded (and their object-store copy can go)
        started = time.perf_counter()
        ref = self._publish(version)
        # A top-level ObjectRef argument is resolved by Ray before the call: each engine gets the tensors.
        return self._finish([(e, e.load_weights.remote(ref, version)) for e in self.engines], wait, started)

    def reload(self, engine, version: int | None = None) -> None:
        """A restarted engine holds the stage's first weights: once it is up, give it the latest ones
        (or the learners' current weights as `version` when nothing was pushed yet)."""
        wait_until_alive(engine)
        ref, latest = self._latest or (self._publish(version or 0), version or 0)
        ray.get(engine.load_weights.remote(ref, latest))


class NcclWeightSync(_Sync):
    def __init__(self, learners, engines: list, gpus_per_engine: int, bucket_mb: int):
        super().__init__()
        self.learners, self.engines = learners, engines
        self.plan = learners.call_all("weight_bucket_plan", bucket_mb << 20)[0]
        address, port = ray.get(learners.actors[0].node_address.remote())
        world_size = 1 + len(engines) * gpus_per_engine  # rank 0: the learner; then every engine worker
        # Engines start listening first (non-blocking); the sender's join completes the rendezvous.
        ray.get([engine.start_weight_receiver.remote(address, port, 1 + i * gpus_per_engine, world_size)
                 for i, engine in enumerate(engines)])
        ray.get(learners.actors[0].start_weight_sender.remote(address, port, world_size))

    def push(self, version: int, wait: bool = True) -> float:
        self.wait()
        started = time.perf_counter()
        receiving = [(e, e.receive_weights.remote(self.plan, version)) for e in self.engines]
        sending = [(None, ref) for ref in self.learners.call_all_async("send_weights", self.plan)]
        return self._finish(sending + receiving, wait, started)

    def reload(self, engine, version: int | None = None) -> None:
        raise RuntimeError("a vLLM rollout engine restarted: its NCCL weight-transfer group cannot be rejoined "
                           "mid-run; restart the job (it resumes from the last checkpoint)")


def make_weight_sync(engine_kind: str, learners, engines: list, gpus_per_engine: int, bucket_mb: int):
    if engine_kind == "vllm":
        return NcclWeightSync(learners, engines, gpus_per_engine, bucket_mb)
    return ObjectStoreWeightSync(learners, engines)
