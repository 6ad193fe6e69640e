"""Prompt building and the action parser: model output is arbitrary text and must never raise."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.prompting import PromptSettings, build_messages, parse_action

SETTINGS = PromptSettings(history_window=2, max_observation_chars=50, max_action_chars=20)


@pytest.mark.parametrize(
    "reply, action",
    [
        ("go north", "go north"),
        ("  Go North.  ", "go north"),
        ("Action: take treasure", "take treasure"),
        ("> open fridge", "open fridge"),
        ('"examine cookbook"', "examine cookbook"),
        ("`look`\n", "look"),
        ("take\x00 knife", "take knife"),
    ],
)
def test_parse_accepts_one_action(reply, action):
    parsed = parse_action(reply, truncated=False, settings=SETTINGS)
    assert parsed.invalid_reason is None and parsed.action == action


@pytest.mark.parametrize(
    "reply, truncated, reason",
    [
        ("", False, "empty reply"),
        ("   \n\t ", False, "empty reply"),
        ("Action:", False, "empty reply"),
        ("go north\ngo south", False, "several lines"),
        ("go north and then keep walking for a while", False, "longer than 20"),
        ("!!! ??? 123", False, "no words"),
        ("\x01\x02\x1b[31m", False, "empty reply"),
        ("\x1b[31m!!\x1b[0m", False, "no words"),
        ("go nor", True, "cut off at max_tokens"),
    ],
)
def test_parse_rejects_malformed_replies_with_a_reason(reply, truncated, reason):
    parsed = parse_action(reply, truncated=truncated, settings=SETTINGS)
    assert parsed.action == "" and reason in parsed.invalid_reason


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=400), st.booleans())
def test_parse_never_raises_and_returns_one_clean_line(reply, truncated):
    parsed = parse_action(reply, truncated=truncated, settings=SETTINGS)
    assert (parsed.action == "") == (parsed.invalid_reason is not None)
    if parsed.action:
        assert "\n" not in parsed.action and len(parsed.action) <= SETTINGS.max_action_chars
        assert parsed.action == parsed.action.strip() and parsed.action.isprintable()


def test_messages_show_goal_window_observation_and_admissible():
    history = [(f"action {i}", f"observation {i}") for i in range(5)]
    messages = build_messages("find the key", history, "x" * 80, ["go north", "look"], SETTINGS)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert "Goal: find the key" in user
    assert "action 3" in user and "action 4" in user and "action 2" not in user  # window of 2
    assert "x" * 47 + "..." in user and "x" * 48 not in user  # observation clipped to 50 chars
    assert "Admissible actions: go north, look" in user


def test_messages_without_history_or_admissible():
    settings_ = PromptSettings(history_window=0, show_admissible=False)
    user = build_messages("g", [("a", "o")], "obs", ["look"], settings_)[1]["content"]
    assert "Recent history" not in user and "Admissible" not in user


ANY_TEXT = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=2000, max_size=20000),  # very long replies
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"]), max_size=50),  # control and format only
    st.just(""),
)


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT, st.booleans())
def test_any_model_output_is_one_action_or_an_invalid_reply_the_env_counts(reply, truncated):
    from envs.corridor import CorridorEnv

    env = CorridorEnv([2], {"train": 10}, max_steps=3)
    env.reset("corridor-2", 0)
    parsed = parse_action(reply, truncated=truncated, settings=SETTINGS)
    result = env.step(parsed.action) if parsed.invalid_reason is None else env.step_invalid(parsed.invalid_reason)
    if parsed.invalid_reason is not None:
        assert not result.info["recognised"] and "not a valid action" in result.observation
    assert env.num_steps == 1 and result.reward == 0.0


@settings(max_examples=200, deadline=None)
@given(ANY_TEXT, ANY_TEXT, st.lists(st.tuples(ANY_TEXT, ANY_TEXT), max_size=6), st.one_of(st.none(), st.lists(ANY_TEXT, max_size=5)))
def test_prompt_builder_takes_any_text_and_bounds_what_it_shows(goal, observation, history, admissible):
    messages = build_messages(goal, history, observation, admissible, SETTINGS)
    user = messages[1]["content"]
    assert user.startswith("Goal: ") and user.endswith("Your next action:")
    # Observations are clipped (history window 2, 50 chars each): long text cannot blow up the prompt.
    shown = len(user) - len(goal) - sum(len(a) for a, _ in history[-2:]) - sum(len(x) for x in admissible or [])
    assert shown < 400
