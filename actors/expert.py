"""Expert demonstrations as episodes: an env's own solution, played through the rollout's prompt path.

Each demonstration is an ``Episode`` whose steps hold exactly the prompt ids a rollout actor would have
built in that state (same chat template, history window, admissible list) and, as ``action_ids``, the
expert's command followed by the end-of-reply token. The learner's imitation objective trains on those
tokens (``Learner.imitate``): the warm start of a model too small to play from its instructions alone.
"""

from __future__ import annotations

import uuid

from actors.prompting import PromptSettings, build_messages, encode_prompt, history_entry
from core.episode import Episode, EpisodeSpec, Step
from envs.base import TextEnv

EXPERT_VERSION = -1  # the policy_version of a demonstration's steps: no adapter of the run made them


def end_of_reply_ids(model_dir: str) -> list[int]:
    """The token the engines stop at (the model's first end-of-sequence id), which ends every reply."""
    from transformers import GenerationConfig

    eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    return [eos[0] if isinstance(eos, list) else eos]


def replay(env: TextEnv, tokenizer, settings: PromptSettings, spec: EpisodeSpec, commands: list[str], end_ids: list[int]) -> Episode:
    """Play ``commands`` from the reset of ``spec`` and record each turn as a rollout actor would."""
    reset = env.reset(spec.task, spec.variation, spec.split)
    episode = Episode(
        episode_id=f"expert-{uuid.uuid4().hex[:12]}", env=env.name, task=spec.task, variation=spec.variation,
        split=spec.split, goal=reset.goal, first_observation=reset.observation, spec_uid=spec.uid,
    )  # fmt: skip
    history: list[tuple[str, str]] = []
    observation, admissible = reset.observation, reset.info.get("admissible_actions")
    for command in commands:
        if env.done:
            break
        prompt_ids = encode_prompt(tokenizer, build_messages(reset.goal, history, observation, admissible, settings))
        action_ids = tokenizer.encode(command, add_special_tokens=False) + end_ids
        result = env.step(command)
        episode.steps.append(
            Step(
                prompt_ids=prompt_ids, action_ids=action_ids, action_logprobs=[0.0] * len(action_ids),
                reply_text=command, action=command, invalid_reason=None, observation=result.observation,
                env_reward=result.reward, policy_version=EXPERT_VERSION,
                recognised=bool(result.info.get("recognised", True)), command=command,
            )
        )  # fmt: skip
        history.append(history_entry(command, command, result.observation))
        observation, admissible = result.observation, result.info.get("admissible_actions")
        episode.score, episode.success = float(result.info["score"]), bool(result.info["won"])
    episode.status = "finished"
    return episode


def demonstration(env: TextEnv, tokenizer, settings: PromptSettings, spec: EpisodeSpec, end_ids: list[int]) -> Episode:
    """The env's expert solution of ``spec`` as an episode (check ``success``: a few walkthroughs fail)."""
    return replay(env, tokenizer, settings, spec, env.expert_actions(spec.task, spec.variation, spec.split), end_ids)
