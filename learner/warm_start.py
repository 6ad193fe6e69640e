"""Warm start: behaviour cloning of the env's expert solutions, by the project's own learner.

A model too small to play from its instructions alone (the embedded SmolLM2-135M writes prose, not
commands) first imitates the env's expert: TextWorld's walkthroughs, ScienceWorld's gold action
sequences, the corridor's optimal path, all from the train split. ``actors.expert`` replays each one
through the rollout's prompt path, so the prompts are token for token what the rollout actors will
build; ``Learner.imitate`` trains the LoRA with the NLL of the action tokens (the same DeepSpeed
engine, micro-batching and dtypes as the RL steps). The result is merged into the base weights: an RL
run started from it (``model.warm_start``) has the warm-started policy as its version 0, its KL
reference (adapter disabled) and its rollout and reward engines' base.

The merged model is cached under ``<cache>/warm_start/<hash>/`` by a hash of everything that made it
(base model, env, prompt settings, demonstrations, LoRA and optimiser settings), and built once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from core.paths import default_cache_dir

FORMAT = 2  # bump when the recipe changes in a way the hashed settings do not show (2: the prompt shows the current observation once)


def recipe(cfg, base_dir: str) -> dict:
    """Everything that decides the warm-started weights (the cache key is its hash)."""
    from actors.prompting import PromptSettings

    base = Path(base_dir)
    weights = sorted(base.glob("*.safetensors")) or sorted(base.glob("*.bin"))
    return {
        "format": FORMAT,
        "base": {"dir": str(base.resolve()), "weights": [(w.name, w.stat().st_size, int(w.stat().st_mtime)) for w in weights]},
        "env": {k: v for k, v in dataclasses.asdict(cfg.env).items() if k not in ("split", "reward")},  # the demonstrations do not depend on them
        "prompt": dataclasses.asdict(PromptSettings.from_rollout(cfg.rollout)),
        "learner": {
            k: getattr(cfg.learner, k)
            for k in ("lora_rank", "lora_alpha", "lora_dropout", "target_modules", "micro_batch_tokens", "grad_clip", "bf16_autocast")
        },
        "warm_start": dataclasses.asdict(cfg.warm_start),
        "dtype": cfg.model.dtype,
    }


def warm_start_dir(cfg, base_dir: str) -> Path:
    digest = hashlib.sha256(json.dumps(recipe(cfg, base_dir), sort_keys=True, default=str).encode()).hexdigest()[:12]
    root = Path(cfg.env.cache_dir) if cfg.env.cache_dir else default_cache_dir()
    return root / "warm_start" / f"{cfg.env.name}-{digest}"


def ensure_warm_start(cfg, base_dir: str, quiet: bool = False) -> Path:
    """The merged warm-started model for ``cfg`` (built once, under a lock, then read from the cache).

    It is built in a child process, so that the caller (the training driver) never holds the model,
    its optimizer or a process group."""
    out = warm_start_dir(cfg, base_dir)
    if (out / "merged" / "config.json").exists():
        return out / "merged"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "merged" / "config.json").exists():
            tmp = out.with_name(f".tmp-{os.getpid()}-{out.name}")
            shutil.rmtree(tmp, ignore_errors=True)
            with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
                pool.submit(build_warm_start, cfg, base_dir, tmp, quiet).result()
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
    return out / "merged"


def collect_demonstrations(cfg, base_dir: str, split: str, count: int) -> tuple[list, list[str]]:
    """The expert demonstrations of variations 0..count-1 of each task of ``split`` that win, and a
    note for each one that does not (a walkthrough that fails through our adapter is left out)."""
    from transformers import AutoTokenizer

    from actors.expert import demonstration, end_of_reply_ids
    from actors.prompting import PromptSettings
    from core.episode import EpisodeSpec
    from envs import make_env, variation_counts

    counts = variation_counts(cfg.env, (split,))[split]
    if cfg.env.name == "textworld":
        from envs.textworld_cooking import ensure_games

        root = cfg.env.cache_dir or default_cache_dir()
        ensure_games(root, [(t, split, v) for t in cfg.env.tasks for v in range(min(count, counts[t]))], workers=os.cpu_count() or 1)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    settings, end_ids = PromptSettings.from_rollout(cfg.rollout), end_of_reply_ids(base_dir)
    env = make_env(cfg.env, cfg.rollout)
    kept, skipped = [], []
    try:
        for task in cfg.env.tasks:
            for variation in range(min(count, counts[task])):
                spec = EpisodeSpec(task, variation, split, uid=f"demo-{split}-{task}-{variation}")
                episode = demonstration(env, tokenizer, settings, spec, end_ids)
                if episode.success:
                    kept.append(episode)
                else:
                    skipped.append(f"{task} {split} variation {variation}: the expert's {len(episode.steps)} steps end at score {episode.score:.2f}")
    finally:
        env.close()
    return kept, skipped


@contextlib.contextmanager
def single_rank():
    """A one-rank process group in this process, for a learner used outside a Ray job."""
    import torch
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, None, is_master=True, wait_for_workers=False)
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(store.port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    try:
        yield store
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def build_warm_start(cfg, base_dir: str, out: Path, quiet: bool = False) -> dict:
    """Clone the demonstrations into a LoRA over ``base_dir``; write ``out/adapter`` (PEFT),
    ``out/merged`` (a full model directory the engines load) and ``out/warm_start.json`` (figures)."""
    import torch

    if not torch.cuda.is_available():  # named, DeepSpeed takes the CPU without a WARNING line in the terminal
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from learner.learner import Learner

    log = (lambda _: None) if quiet else (lambda line: print(line, flush=True))
    start = time.perf_counter()
    w = cfg.warm_start
    train, skipped = collect_demonstrations(cfg, base_dir, "train", w.demonstrations)
    if not train:
        raise RuntimeError(f"no expert demonstration of {cfg.env.tasks} wins in the train split: {skipped[:3]}")
    held_out, _ = collect_demonstrations(cfg, base_dir, "valid", w.held_out) if w.held_out else ([], [])
    collect_s = time.perf_counter() - start
    log(f"warm start: {len(train)} train demonstrations ({sum(len(e.steps) for e in train)} steps, {len(skipped)} left out), "
        f"{len(held_out)} held out, collected in {collect_s:.0f} s")  # fmt: skip
    learner_cfg = dataclasses.replace(cfg.learner, lr=w.lr, kl_coef=0.0)
    figures: dict = {"recipe": recipe(cfg, base_dir), "demonstrations": len(train), "held_out": len(held_out), "left_out": skipped, "collect_s": collect_s}
    with single_rank():
        learner = Learner(learner_cfg, base_dir, temperature=1.0, seed=cfg.warm_start.seed, dtype="float32")
        figures["nll_before"] = {"train": learner.demonstration_nll(train), "held_out": learner.demonstration_nll(held_out) if held_out else None}
        rng, steps = random.Random(cfg.warm_start.seed), []
        for epoch in range(w.epochs):
            order = rng.sample(train, len(train))
            for i in range(0, len(order), w.batch_demonstrations):
                metrics = learner.imitate(order[i : i + w.batch_demonstrations])
                steps.append({"epoch": epoch, "nll": metrics["nll"], "train_s": metrics["train_s"]})
                log(f"warm start epoch {epoch + 1}/{w.epochs} step {len(steps)}: nll {metrics['nll']:.3f} ({metrics['train_s']:.0f} s)")
        figures["steps"] = steps
        figures["nll_after"] = {"train": learner.demonstration_nll(train), "held_out": learner.demonstration_nll(held_out) if held_out else None}
        learner.save_merged(out / "merged", out / "adapter", base_dir, cfg.model.dtype)
    figures["wall_s"] = time.perf_counter() - start
    (out / "warm_start.json").write_text(json.dumps(figures, indent=2, default=str))
    log(f"warm start: demonstration NLL per token {figures['nll_before']['train']:.3f} -> {figures['nll_after']['train']:.3f} (train)"
        + (f", {figures['nll_before']['held_out']:.3f} -> {figures['nll_after']['held_out']:.3f} (held out)" if held_out else "")
        + f"; {figures['wall_s']:.0f} s")  # fmt: skip
    return figures
