"""Prompt building and the action parser: model output is arbitrary text and must never raise."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.prompting import PromptSettings, build_messages, match_admissible, parse_action
from core.episode import Episode, Step, outcome_figures, reply_figures

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
        ("```\nopen fridge\n```", "open fridge"),
        ("<action>take knife</action> because it is sharp", "take knife"),
        ('> "Action: `look`".', "look"),
        ("1. go east", "go east"),
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
        ("```\n```", False, "empty reply"),
        ("go north and then keep walking for a while", False, "longer than 20"),
        ("!!! ??? 123", False, "no words"),
        ("\x01\x02\x1b[31m", False, "empty reply"),
        ("\x1b[31m!!\x1b[0m", False, "no words"),
        ("go nor", True, "cut off at max_tokens"),
        ("!!!\ngo north and keep walking", True, "no words"),  # the cut line is never a candidate
    ],
)
def test_parse_rejects_malformed_replies_with_a_reason(reply, truncated, reason):
    parsed = parse_action(reply, truncated=truncated, settings=SETTINGS)
    assert parsed.action == "" and reason in parsed.invalid_reason


@pytest.mark.parametrize(
    "reply, truncated, action, line",
    [
        ("go north\ngo south", False, "go north", 0),
        ("Sure thing\n\nopen fridge", False, "sure thing", 0),  # exact: the first line that parses, whatever it says
        ("Sure! Here is my next move:\nopen fridge", False, "open fridge", 1),  # the first is too long
        ("!!!\n> open fridge\nIt should hold food", False, "open fridge", 1),
        ("take apple\nBecause I am hungr", True, "take apple", 0),  # complete first line of a cut-off reply
    ],
)
def test_a_reply_of_several_lines_gives_its_first_line_that_parses(reply, truncated, action, line):
    parsed = parse_action(reply, truncated=truncated, settings=SETTINGS)
    assert (parsed.action, parsed.line, parsed.invalid_reason, parsed.matched) == (action, line, None, False)


MATCHING = PromptSettings(max_action_chars=40, action_match="admissible")
KITCHEN = ["open fridge", "take red apple from counter", "take green apple from counter", "go east", "examine cookbook"]


@pytest.mark.parametrize(
    "reply, action, command, line",
    [
        ("open fridge", "open fridge", "open fridge", 0),  # already admissible: not counted as matched
        ("Open the fridge.", "open fridge", "open the fridge", 0),  # articles and case do not count
        ("take the red apple", "take red apple from counter", "take the red apple", 0),
        ("I think I should go east now", "go east", "i think i should go east now", 0),
        ("take an apple\nthe red one: take red apple", "take red apple from counter", "the red one: take red apple", 1),  # the first line ties
    ],
)
def test_admissible_matching_maps_a_reply_to_the_command_it_most_resembles(reply, action, command, line):
    parsed = parse_action(reply, truncated=False, settings=MATCHING, admissible=KITCHEN)
    assert (parsed.action, parsed.invalid_reason, parsed.command, parsed.line) == (action, None, command, line)
    assert parsed.matched == (action != command)


@pytest.mark.parametrize(
    "reply, reason",
    [
        ("take the apple", "resembles 2 admissible actions equally"),  # a tie is no match
        ("", "empty reply"),
        ("xyzzy plugh", "no admissible action resembles the reply"),  # garbage
        ("!!! ???", "no words"),
    ],
)
def test_admissible_matching_rejects_ties_empty_and_garbage_replies(reply, reason):
    parsed = parse_action(reply, truncated=False, settings=MATCHING, admissible=KITCHEN)
    assert parsed.action == "" and not parsed.matched and reason in parsed.invalid_reason


def test_admissible_matching_without_a_list_is_exact():
    parsed = parse_action("open the fridge", truncated=False, settings=MATCHING, admissible=None)
    assert (parsed.action, parsed.matched) == ("open the fridge", False)
    assert match_admissible("open the fridge", []) == (None, "no admissible action resembles the reply")


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


def test_the_current_observation_is_shown_once():
    """The newest history entry's observation is the current observation (rollout, expert and benchmarks
    all build the history so): it used to be printed in the history and again as the current one."""
    history = [("take key", "You take the key."), ("open door", "The door opens onto a long hall.")]
    user = build_messages("leave", history, "The door opens onto a long hall.", None, SETTINGS)[1]["content"]
    assert user.count("The door opens onto a long hall.") == 1
    assert "> take key\nYou take the key.\n> open door\n\nCurrent observation:\nThe door opens" in user


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


def test_a_jumping_history_window_shows_a_prefix_that_holds_for_jump_turns():
    """history_window=2, history_jump=4: the history starts at turn 0 until the window needs more, then
    at turn 4, 8...; it shows 2 to 5 turns, and each start holds for 4 turns."""
    history = [(f"go {i}", f"room {i}") for i in range(12)]
    jumping = PromptSettings(history_window=2, history_jump=4)
    starts = [int(jumping.shown(history[:n])[0][0].split()[1]) if jumping.shown(history[:n]) else None for n in range(12)]
    assert starts == [None, 0, 0, 0, 0, 0, 4, 4, 4, 4, 8, 8]
    assert all(2 <= len(jumping.shown(history[:n])) <= 5 for n in range(2, 12))
    sliding = PromptSettings(history_window=2)  # history_jump=1: the last 2 turns, every turn
    assert [len(sliding.shown(history[:n])) for n in range(4)] == [0, 1, 2, 2] and sliding.shown(history)[0][0] == "go 10"
    # While the start holds, a prompt's history is the previous prompt's history plus one turn.
    earlier, later = (build_messages("g", history[:n], "now", None, jumping)[1]["content"] for n in (6, 7))
    assert later.startswith(earlier.split("\n\nCurrent observation")[0])


def test_an_evaluation_counts_invalid_replies_by_kind_of_reason_and_the_commands_the_env_did_not_understand():
    settings = PromptSettings(history_window=2, max_observation_chars=50, max_action_chars=20, action_match="admissible")
    admissible = ["open door to hallway", "close door to hallway", "go to hallway", "look around"]
    replies = ["door to hallway", "hallway door", "", "Which action is this? I think we should go", "look around", "dance"]
    steps = []
    for reply in replies:
        parsed = parse_action(reply, truncated=False, settings=settings, admissible=admissible)
        steps.append(Step([1], [2], [-0.1], reply, parsed.action, parsed.invalid_reason, "", 0.0, 0, recognised=reply != "look around"))
    episode = Episode("e", "scienceworld", "find-plant", 0, "valid", "goal", "obs", steps=steps, status="finished")

    figures = outcome_figures([episode])

    assert figures["invalid_by_reason"] == {
        "reply resembles N admissible actions equally": 2,  # 3 tied, then 2 tied: one kind
        "empty reply": 1,
        "action longer than N characters": 1,
        "no admissible action resembles the reply": 1,
    }
    assert figures["invalid_rate"] == 5 / 6 and figures["unrecognised_rate"] == 1 / 6
    line = reply_figures(figures)
    assert "invalid 83.3% (reply resembles N admissible actions equally 2, empty reply 1," in line
