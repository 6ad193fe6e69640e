"""The learner: DeepSpeed (ZeRO 0-3) around the base model + PEFT LoRA; one rank per Ray actor.

A learner step pulls its share of scored episodes from the Ray queue, drops the stale ones (older than
S versions, counted), computes advantages over every rank's episodes, and takes one optimizer step on
the action tokens. ``publish`` gathers the adapter (ZeRO-3 included) as the next policy version.
"""

from __future__ import annotations

import json
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from conf.schema import LearnerConfig
from core.adapter import AdapterWeights, CheckpointError, Published, SwapCheck, probe_ids
from core.episode import Episode
from core.memory import release_freed_memory
from core.precision import compute_dtype
from learner.losses import LossConfig, imitation_loss, policy_loss, token_logprobs
from learner.samples import (
    Sample,
    collate,
    demonstration_samples,
    pack,
    return_rows,
    samples_for,
    step_advantages_for,
)


def join_process_group(device: torch.device) -> tuple[int, int]:
    """Join the ranks' process group at the store the driver hosts (``learner.ranks.make_learners`` sets
    the variables); DeepSpeed then wraps the group that exists. Returns (rank, world size)."""
    import deepspeed

    missing = [key for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE") if key not in os.environ]
    if missing:
        raise RuntimeError(f"the learner needs {', '.join(missing)} in its environment: start ranks with learner.ranks.make_learners")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False)
    backend = "gloo" if device.type == "cpu" else "nccl"
    torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=world)
    deepspeed.init_distributed(dist_backend=backend)
    return rank, world


def episode_version(episode: Episode) -> int:
    return min((s.policy_version for s in episode.steps), default=0)


class Learner:
    def __init__(self, cfg: LearnerConfig, model_dir: str, temperature: float = 1.0, seed: int = 0, dtype: str = "float32") -> None:
        """``temperature`` is the rollout's sampling temperature: log-probs are computed under it.

        ``dtype`` (``model.dtype``) is the dtype of the frozen base weights: bfloat16 halves their
        memory (a 7B base: 14 GB instead of 28 GB per rank). The LoRA weights, their gradients and the
        AdamW state stay float32 whatever it is (PEFT upcasts the adapter of a half-precision base), as
        mixed-precision LoRA training does; ``learner.bf16_autocast`` runs the matmuls in bfloat16."""
        import deepspeed
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        self.cfg = cfg
        self.temperature = temperature
        self.loss_cfg = LossConfig(clip_eps=cfg.clip_eps, dual_clip=cfg.dual_clip, kl_coef=cfg.kl_coef)
        self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
        if self.device.type == "cpu":
            # The shared-memory all-reduce op is a 25-45 s JIT build; gloo alone is enough here.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        self.rank, self.world_size = join_process_group(self.device)
        if self.device.type == "cpu":
            torch.set_num_threads(cfg.num_threads or os.cpu_count() or 1)
        seed_everything(seed)

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
        self.probe = probe_ids(AutoTokenizer.from_pretrained(model_dir))  # what each swap is checked with
        eos = GenerationConfig.from_model_config(model.config).eos_token_id
        self.pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
        lora = LoraConfig(
            r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules), task_type="CAUSAL_LM",
        )  # fmt: skip
        model = get_peft_model(model, lora, autocast_adapter_dtype=True)
        trainable = [p for p in model.parameters() if p.requires_grad]
        for p in trainable:  # PEFT upcasts bf16/fp16 adapters; make it explicit and hold it for every dtype
            p.data = p.data.float()
        optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        ds_config = {
            # Micro-batches vary in number (token budget); train_step marks the accumulation boundary.
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "train_batch_size": self.world_size,
            "gradient_clipping": cfg.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
        }
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        self.version = 0
        self.step = 0

    # --- one learner step ----------------------------------------------------------------------
    def train_from_queue(self, queue, num_episodes: int) -> dict:
        """Pull this rank's ``num_episodes`` from the queue (blocking) and train one step on them."""
        start = time.perf_counter()
        # Arrival order depends on which actor was faster; the spec order does not (reproducible steps).
        episodes = sorted((queue.get() for _ in range(num_episodes)), key=lambda e: e.spec_uid)
        wait_s = time.perf_counter() - start
        metrics = self.train_step(episodes)
        metrics["queue_wait_s"] = wait_s
        if self.cfg.slow_down_s:  # a deliberately slow learner (soak benchmark)
            time.sleep(self.cfg.slow_down_s)
        return metrics

    def train_step(self, episodes: list[Episode]) -> dict:
        start = time.perf_counter()
        fresh = [e for e in episodes if self.version - episode_version(e) <= self.cfg.staleness]
        stale = len(episodes) - len(fresh)
        samples, advantage_stats = self._samples(fresh)
        totals = self._optimizer_step(samples, objective="policy")
        action_tokens = sum(len(s.old_logprobs) for s in samples)
        skipped = int(totals.pop("skipped_samples"))
        self.step += 1
        if self.cfg.trim_memory:
            release_freed_memory()  # this step's activations: else RSS climbs with every new sequence length
        return {
            "learner_step": self.step,
            "policy_version": self.version,
            "episodes": len(episodes),
            "successes": sum(e.success for e in episodes),
            "trained_episodes": len(fresh),
            "env_steps": sum(len(e.steps) for e in episodes),
            "dropped_stale": stale,
            "episode_staleness_max": max((self.version - episode_version(e) for e in episodes), default=0),  # versions behind the learner
            "samples": len(samples),
            "zero_advantage_skipped": skipped,  # samples of advantage 0 not computed: no gradient (``_computed``)
            "micro_batches": int(totals.pop("micro_batches")),
            "action_tokens": action_tokens,
            "train_tokens": sum(s.num_tokens for s in samples),
            "train_s": time.perf_counter() - start,
            **advantage_stats,
            **totals,
        }

    def imitate(self, demonstrations: list[Episode]) -> dict:
        """One optimizer step of behaviour cloning: the NLL of the demonstrations' action tokens (the
        warm start; ``actors.expert`` builds them through the rollout's prompt path). Every rank calls
        it with its share."""
        start = time.perf_counter()
        samples = demonstration_samples(demonstrations)
        totals = self._optimizer_step(samples, objective="imitation")
        totals.pop("skipped_samples")
        self.step += 1
        return {"learner_step": self.step, "demonstrations": len(demonstrations), "samples": len(samples), "train_s": time.perf_counter() - start, **totals}

    def demonstration_nll(self, demonstrations: list[Episode]) -> float:
        """Mean NLL per action token of the demonstrations under the current weights (no update)."""
        samples = demonstration_samples(demonstrations)
        self.engine.eval()
        total, tokens = 0.0, 0
        autocast = self._autocast()
        for micro in pack(samples, self.cfg.micro_batch_tokens):
            batch = {k: v.to(self.device) for k, v in collate(micro, self.pad_id).items()}
            with torch.no_grad(), autocast:
                logprobs = self._forward_logprobs(batch)
            total -= float((logprobs * batch["loss_mask"]).sum())
            tokens += int(batch["loss_mask"].sum())
        return total / max(tokens, 1)

    def _samples(self, episodes: list[Episode]) -> tuple[list[Sample], dict[str, float]]:
        """Advantages over every rank's episodes (only returns travel), samples for this rank's."""
        everyone: list = [None] * self.world_size
        torch.distributed.all_gather_object(everyone, return_rows(episodes))
        offset = sum(len(rows) for rows in everyone[: self.rank])
        flat = [row for rows in everyone for row in rows]
        advantages, episode_adv = step_advantages_for(flat, self.cfg.omega, self.cfg.gamma)
        samples = samples_for(episodes, advantages[offset : offset + len(episodes)])
        stats = {
            "return_mean": float(np.mean([row[1] for row in flat])) if flat else 0.0,
            "advantage_abs_mean": float(episode_adv.abs().mean()) if flat else 0.0,
            # what the loss sees (episode + omega * step advantage): 0 means this step changes nothing
            "step_advantage_abs_mean": float(torch.cat(advantages).abs().mean()) if flat and sum(map(len, advantages)) else 0.0,
        }
        return samples, stats

    def _computed(self, samples: list[Sample], objective: str) -> list[Sample]:
        """The samples whose forward and backward can change the step. Under the policy loss without a
        KL term, a sample whose advantage is 0 has a loss of exactly 0 at every token, whatever the
        weights: its gradient is 0, so computing it is wasted work (a GRPO group whose episodes all
        scored alike, the common case early in training). It still counts in the loss's normaliser."""
        if objective != "policy" or self.loss_cfg.kl_coef > 0:
            return samples
        return [s for s in samples if s.advantage != 0.0]

    def _optimizer_step(self, samples: list[Sample], objective: str) -> dict[str, float]:
        """One optimizer step over this rank's samples in token-budget micro-batches; returns the loss
        statistics (the loss per action token of all samples; the others over the computed ones),
        ``micro_batches`` and ``skipped_samples`` (not computed: ``_computed``)."""
        computed = self._computed(samples, objective)
        bins = pack(computed, self.cfg.micro_batch_tokens)
        if samples and not bins:
            bins = [[]]  # nothing to compute, yet the optimizer steps as it would have (AdamW's moments move on)
        # Every rank runs the same number of backward passes (gradients are reduced on the last one).
        count = torch.tensor([len(bins)])
        torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
        bins += [[] for _ in range(int(count) - len(bins))]
        action_tokens = sum(len(s.old_logprobs) for s in samples)
        computed_tokens = sum(len(s.old_logprobs) for s in computed)
        self.engine.train()
        totals: dict[str, float] = {"micro_batches": float(len(bins)), "skipped_samples": float(len(samples) - len(computed))}
        for i, micro in enumerate(bins):
            self.engine.set_gradient_accumulation_boundary(i == len(bins) - 1)
            stats = self._micro_step(micro, normaliser=max(action_tokens, 1), objective=objective)
            tokens = sum(len(s.old_logprobs) for s in micro)
            for k, v in stats.items():  # a skipped sample's loss is 0: the loss is averaged over all tokens
                totals[k] = totals.get(k, 0.0) + v * tokens / max(action_tokens if k == "loss" else computed_tokens, 1)
        if bins:  # no rank had a sample: nothing to step
            self.engine.step()
        return totals

    def _autocast(self):
        """bfloat16 matmuls (``learner.bf16_autocast``) where the device runs them natively."""
        if self.cfg.bf16_autocast and compute_dtype("bfloat16", on_gpu=self.device.type == "cuda") == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _forward_logprobs(self, batch: dict[str, torch.Tensor], temperature: float | None = None) -> torch.Tensor:
        """Log-probs of the target tokens; logits only for the last ``keep`` positions (the actions)."""
        keep = int(batch["keep"])
        logits = self.engine(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"], logits_to_keep=keep,
        ).logits  # fmt: skip
        return token_logprobs(logits[:, :-1], batch["targets"], self.temperature if temperature is None else temperature)

    def _micro_step(self, micro: list[Sample], normaliser: float, objective: str = "policy") -> dict[str, float]:
        # An empty micro-batch still runs (with zero loss): every rank must take part in each backward.
        batch = collate(micro or [Sample([self.pad_id, self.pad_id], 1, [0.0], 0.0, 0)], self.pad_id)
        if not micro:
            batch["loss_mask"].zero_()
        batch = {k: v.to(self.device) for k, v in batch.items()}
        autocast = self._autocast()
        ref = None
        if self.loss_cfg.kl_coef > 0 and objective == "policy":
            with torch.no_grad(), autocast, self.engine.module.disable_adapter():
                ref = self._forward_logprobs(batch)
        with autocast:
            logprobs = self._forward_logprobs(batch)
        if objective == "imitation":
            loss, stats = imitation_loss(logprobs, batch["loss_mask"], normaliser)
        else:
            loss, stats = policy_loss(logprobs, batch["old_logprobs"], batch["advantages"], batch["loss_mask"], self.loss_cfg, ref, normaliser)
        self.engine.backward(loss, scale_wrt_gas=False)  # normalised by the step's action tokens already
        stats["loss"] = loss.item() * normaliser / max(float(batch["loss_mask"].sum()), 1.0)
        return stats

    # --- adapters and checkpoints --------------------------------------------------------------
    def _gathered(self):
        """Full LoRA parameters for the duration of the block (a no-op below ZeRO-3)."""
        if self.cfg.zero_stage == 3:
            import deepspeed

            params = [p for p in self.engine.module.parameters() if p.requires_grad]
            return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        return nullcontext()

    def publish(self) -> AdapterWeights:
        """The current adapter as the next policy version (every rank must call it under ZeRO-3)."""
        self.version += 1
        with self._gathered():
            return AdapterWeights.from_peft_model(self.engine.module, self.version)

    def share(self, new_version: bool = True) -> Published | None:
        """The policy version as the message the actors pull: ``publish`` (or, with ``new_version=False``,
        ``current_adapter``), put into the object store once, by rank 0, which returns it; the other
        ranks take part in the gather and return None. None also for version 0 (the base model)."""
        adapter = self.publish() if new_version else self.current_adapter()
        if adapter is None:
            return None
        check = self.swap_check(adapter) if self.cfg.swap_check_tol is not None else None  # every rank: a forward
        if self.rank != 0:
            return None
        import ray

        return Published(adapter.version, [ray.put(adapter)], check)

    def swap_check(self, adapter: AdapterWeights) -> SwapCheck:
        """What an engine that loads ``adapter`` (the current weights) must reproduce: its digest and the
        probe's log-probs at temperature 1 (``actors.engine.verify_swap``)."""
        prompt, continuation = self.probe
        (logprobs,) = self.adapter_logprobs([prompt], [continuation], temperature=1.0)
        return SwapCheck(adapter.digest(), prompt, continuation, logprobs, self.cfg.swap_check_tol)

    def current_adapter(self) -> AdapterWeights | None:
        """The adapter of the current version, unchanged (a resumed run hands it to fresh actors)."""
        if self.version == 0:
            return None
        with self._gathered():
            return AdapterWeights.from_peft_model(self.engine.module, self.version)

    def adapter_logprobs(self, prompts: list[list[int]], continuations: list[list[int]], temperature: float | None = None) -> list[list[float]]:
        """Teacher-forced log-probs of the continuations under the current adapter (checks against
        actors), at the sampling temperature unless ``temperature`` is given."""
        self.engine.eval()
        samples = [Sample(p + c, len(p), [0.0] * len(c), 0.0, self.version) for p, c in zip(prompts, continuations)]
        batch = {k: v.to(self.device) for k, v in collate(samples, self.pad_id).items()}
        with torch.no_grad():
            logprobs = self._forward_logprobs(batch, temperature)
        return [row[len(row) - len(c) :].tolist() for row, c in zip(logprobs, continuations)]

    def save_checkpoint(self, directory: str | Path) -> Path:
        """PEFT adapter (loadable by PeftModel.from_pretrained and vLLM) + DeepSpeed state for resume."""
        directory = Path(directory)
        with self._gathered():
            if self.rank == 0:
                self.engine.module.save_pretrained(directory / "adapter")
        self.engine.save_checkpoint(str(directory / "deepspeed"), tag="state")
        if self.rank == 0:
            state = {"step": self.step, "version": self.version}
            (directory / "learner_state.json").write_text(json.dumps(state))
        torch.save(rng_state(), directory / f"rng_rank{self.rank}.pt")
        return directory

    def save_merged(self, merged_dir: str | Path, adapter_dir: str | Path, base_dir: str, dtype: str) -> Path:
        """Write the adapter (PEFT) and the base with the adapter merged in, as a model directory in
        ``dtype`` with the base's tokenizer and generation config; this learner is done afterwards
        (the merge replaces its LoRA layers). One rank (ZeRO 0-2)."""
        from transformers import AutoTokenizer, GenerationConfig

        if self.cfg.zero_stage == 3 or self.world_size != 1:
            raise RuntimeError("save_merged needs the whole model on one rank: one rank, ZeRO stage 0-2")
        model = self.engine.module
        model.save_pretrained(adapter_dir)
        merged = model.merge_and_unload()
        merged.to(getattr(torch, dtype)).save_pretrained(merged_dir)
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(merged_dir)
        GenerationConfig.from_pretrained(base_dir).save_pretrained(merged_dir)
        return Path(merged_dir)

    def load_checkpoint(self, directory: str | Path) -> dict:
        """Continue from ``save_checkpoint``'s folder: weights, optimizer, step, version, RNG states."""
        directory = Path(directory)
        for needed in (directory / "learner_state.json", directory / "deepspeed" / "state", directory / f"rng_rank{self.rank}.pt"):
            if not needed.exists():
                raise CheckpointError(f"checkpoint {directory} is incomplete: {needed.name} is missing")
        path, _ = self.engine.load_checkpoint(str(directory / "deepspeed"), tag="state")
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load the state in {directory / 'deepspeed'}")
        state = json.loads((directory / "learner_state.json").read_text())
        self.step, self.version = state["step"], state["version"]
        set_rng_state(torch.load(directory / f"rng_rank{self.rank}.pt", weights_only=False))
        return state

    def dtypes(self) -> dict[str, list[str]]:
        """The dtypes the rank holds: frozen base weights, LoRA weights and the optimizer's state."""
        params = list(self.engine.module.parameters())
        state = [t for s in self.engine.optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
        names = lambda tensors: sorted({str(t.dtype).removeprefix("torch.") for t in tensors})  # noqa: E731
        return {"base": names(p for p in params if not p.requires_grad), "lora": names(p for p in params if p.requires_grad), "optimizer_state": names(state)}

    def trainable_parameters(self) -> dict[str, torch.Tensor]:
        with self._gathered():
            return {n: p.detach().cpu().clone() for n, p in self.engine.module.named_parameters() if p.requires_grad}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
