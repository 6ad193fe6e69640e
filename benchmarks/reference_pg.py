"""Benchmark: the pipeline's learning speed against a plain in-process policy-gradient loop.

    python -m benchmarks.reference_pg                       # seeds 0 1 2, both learners
    python -m benchmarks.reference_pg --seeds 0 --only plain

Same task (corridor-1 within 4 steps, the learning test's setting), same model (the tiny corridor
model after its format-only warm start), same LoRA, learning rate, batch (32 episodes in groups of 4)
and number of steps. The pipeline is ``pipeline.trainer.run``: Ray rollout actor serving the policy with
vLLM, reward stage, queue, DeepSpeed learner, adapter publishing. The plain loop is a few dozen lines
of torch + peft in one process: sample the current LoRA policy with HF ``generate`` at temperature 1,
advantage = return - group mean, loss = -(advantage x log-prob) summed over action tokens / their
count, one AdamW step per batch. Both play the same held-out episodes before and after.

It prints training success per step side by side and held-out success before -> after, per seed and
as mean ± sd. If the pipeline learns clearly slower than the plain loop, something between sampling
and the optimizer step (log-prob alignment, loss normalisation, advantage scale, staleness,
clipping) costs it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from actors.prompting import PromptSettings, build_messages, encode_prompt, history_entry, parse_action
from conf.schema import Config, EngineConfig, EnvConfig, LearnerConfig, ModelConfig, RolloutConfig, validate


def learning_config(model_dir: str, seed: int = 0, steps: int = 30) -> Config:
    """The corridor learning setting (tests/test_learning.py runs it through the pipeline)."""
    return validate(
        Config(
            env=EnvConfig(name="corridor", tasks=["corridor-1"], max_steps=4, variations={"train": 1000, "valid": 100}),
            model=ModelConfig(path=model_dir, dtype="float32"),
            engine=EngineConfig(kind="vllm", max_model_len=2048),
            rollout=RolloutConfig(num_actors=1, envs_per_actor=16, max_tokens=8, history_window=0),
            learner=LearnerConfig(steps=steps, episodes_per_step=32, lr=1e-3, bf16_autocast=False),
            group_size=4,
            eval_groups=32,
            seed=seed,
        )
    )


class PlainPolicy:
    """A LoRA policy trained by the textbook policy gradient, sampled by HF ``generate``."""

    def __init__(self, cfg: Config) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        lc = cfg.learner
        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        base = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.float32)
        lora = LoraConfig(r=lc.lora_rank, lora_alpha=lc.lora_alpha, lora_dropout=lc.lora_dropout, target_modules=lc.target_modules, task_type="CAUSAL_LM")
        self.model = get_peft_model(base, lora)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lc.lr, weight_decay=lc.weight_decay)
        self.eos = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.settings = PromptSettings.from_rollout(cfg.rollout)

    @torch.no_grad()
    def sample(self, prompts: list[list[int]]) -> list[tuple[list[int], bool]]:
        """One reply per prompt at temperature 1 over the full vocabulary: (token ids, cut off)."""
        self.model.eval()
        width = max(map(len, prompts))
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, temperature=self.cfg.rollout.temperature, top_k=0, top_p=1.0,
            max_new_tokens=self.cfg.rollout.max_tokens, eos_token_id=self.eos, pad_token_id=pad,
        )  # fmt: skip
        replies = []
        for row in out[:, width:].tolist():
            reply = row[: row.index(self.eos) + 1] if self.eos in row else row
            replies.append((reply, self.eos not in reply))
        return replies

    def play(self, env_cfg, specs) -> list[dict]:
        """All ``specs`` in lockstep: one batched ``generate`` per turn; returns each episode's steps and outcome."""
        from envs import make_env

        envs = [make_env(env_cfg, self.cfg.rollout) for _ in specs]
        games = []
        for env, spec in zip(envs, specs):
            reset = env.reset(spec.task, spec.variation, spec.split)
            games.append(
                {
                    "env": env,
                    "goal": reset.goal,
                    "obs": reset.observation,
                    "adm": reset.info.get("admissible_actions"),
                    "history": [],
                    "steps": [],
                    "won": False,
                }
            )
        while active := [g for g in games if not g["env"].done]:
            prompts = [encode_prompt(self.tokenizer, build_messages(g["goal"], g["history"], g["obs"], g["adm"], self.settings)) for g in active]
            for g, prompt, (reply_ids, cut) in zip(active, prompts, self.sample(prompts)):
                reply = self.tokenizer.decode(reply_ids, skip_special_tokens=True)
                parsed = parse_action(reply, cut, self.settings, g["adm"])
                result = g["env"].step(parsed.action) if parsed.invalid_reason is None else g["env"].step_invalid(parsed.invalid_reason)
                g["steps"].append((prompt, reply_ids))
                g["history"].append(history_entry(parsed.action, reply, result.observation))
                g["obs"], g["adm"] = result.observation, result.info.get("admissible_actions")
                g["won"] = bool(result.info.get("won"))
        for env in envs:
            env.close()
        return games

    def update(self, games: list[dict], group_size: int) -> None:
        """One policy-gradient step: advantage = return - mean of its group, mean over action tokens."""
        self.model.train()
        returns = [float(g["won"]) for g in games]
        rows = []
        for i, g in enumerate(games):
            group = returns[i - i % group_size : i - i % group_size + group_size]
            advantage = returns[i] - sum(group) / len(group)
            rows += [(prompt, reply, advantage) for prompt, reply in g["steps"] if advantage != 0.0]
        tokens = sum(len(r) for _, r, _ in rows)
        self.optimizer.zero_grad()
        for start in range(0, len(rows), 64):
            chunk = rows[start : start + 64]
            width = max(len(p) + len(r) for p, r, _ in chunk)
            ids = torch.full((len(chunk), width), self.tokenizer.pad_token_id)
            for j, (p, r, _) in enumerate(chunk):
                ids[j, : len(p) + len(r)] = torch.tensor(p + r)  # right padding: causal rows need no mask
            hidden = self.model.base_model.model.model(input_ids=ids).last_hidden_state
            row = torch.tensor([j for j, (p, r, _) in enumerate(chunk) for _ in r])
            pos = torch.tensor([len(p) - 1 + k for p, r, _ in chunk for k in range(len(r))])
            target = torch.tensor([t for _, r, _ in chunk for t in r])
            adv = torch.tensor([a for _, r, a in chunk for _ in r])
            logp = torch.log_softmax(self.model.base_model.model.lm_head(hidden[row, pos]).float(), -1).gather(1, target[:, None])[:, 0]
            (-(adv * logp).sum() / max(tokens, 1)).backward()
        if rows:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.learner.grad_clip)
            self.optimizer.step()


def run_plain(cfg: Config) -> dict:
    from envs.specs import held_out_specs, step_specs

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    policy = PlainPolicy(cfg)
    eval_specs = held_out_specs(cfg)

    def held_out() -> float:
        return statistics.fmean(g["won"] for g in policy.play(cfg.env, eval_specs))

    before, curve, start = held_out(), [], time.perf_counter()
    for step in range(cfg.learner.steps):
        games = policy.play(cfg.env, step_specs(cfg, step))
        curve.append(statistics.fmean(g["won"] for g in games))
        policy.update(games, cfg.group_size)
    return {"before": before, "after": held_out(), "by_step": curve, "train_s": time.perf_counter() - start}


def run_pipeline(cfg: Config, run_dir: Path) -> dict:
    from pipeline.trainer import run

    summary = run(cfg, run_dir)
    ev = summary["evaluation"]
    return {
        "before": ev["before"]["success_rate"],
        "after": ev["after"]["success_rate"],
        "by_step": summary["success_rate_by_step"],
        "train_s": summary["wall_s"],
    }


def warm_corridor_model(out: Path) -> str:
    """The learning test's model: a 2-layer random Llama with a format-only warm start on corridor-1."""
    from pipeline.embedded_model import ensure_embedded_model
    from pipeline.tiny_model import build_random_tiny, format_warm_start

    tiny = build_random_tiny(str(ensure_embedded_model()), out / "tiny")
    return format_warm_start(tiny, out / "warm", length=1, settings=PromptSettings(history_window=0))


def mean_sd(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--only", choices=["plain", "pipeline"], default=None)
    parser.add_argument("--out", default=None, help="write the per-seed results here as JSON")
    args = parser.parse_args()
    kinds = [args.only] if args.only else ["plain", "pipeline"]
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = warm_corridor_model(Path(tmp))
        for seed in args.seeds:
            cfg = learning_config(model_dir, seed, args.steps)
            for kind in kinds:
                res = run_plain(cfg) if kind == "plain" else run_pipeline(cfg, Path(tmp) / f"run-{seed}")
                results[kind].append(res)
                print(
                    f"seed {seed} {kind}: held-out {res['before']:.3f} -> {res['after']:.3f}, {res['train_s']:.0f} s, "
                    f"by step {' '.join(f'{s:.2f}' for s in res['by_step'])}",
                    flush=True,
                )
    print(f"\ncorridor-1, {args.steps} steps x 32 episodes, seeds {args.seeds}: training success per step (mean over seeds)")
    print("| episodes | " + " | ".join(kinds) + " |\n|---:|" + "---:|" * len(kinds))
    for step in range(args.steps):
        print(f"| {32 * (step + 1)} | " + " | ".join(f"{statistics.fmean(r['by_step'][step] for r in results[k]):.3f}" for k in kinds) + " |")
    for kind in kinds:
        rs = results[kind]
        last = [statistics.fmean(r["by_step"][-5:]) for r in rs]
        print(
            f"{kind}: held-out before {mean_sd([r['before'] for r in rs])}, after {mean_sd([r['after'] for r in rs])}; "
            f"training success, last 5 steps {mean_sd(last)}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
