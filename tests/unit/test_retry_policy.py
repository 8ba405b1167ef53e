"""A task's retry policy: validation in the definition, backoff bounds, exception matching."""

from __future__ import annotations

import random

import pytest

from kiln.core.builder import Workflow
from kiln.core.definitions import parse_definition
from kiln.core.errors import InvalidDefinition
from kiln.core.failures import MAX_TRACEBACK_CHARS, clip, full_traceback, summary
from kiln.core.retry import backoff_s, retries_on
from tests.retry_handlers import Transient


def definition(retry, **task):
    return {"name": "w", "tasks": [{"name": "a", "handler": "noop", "retry": retry, **task}]}


def test_a_retry_policy_is_stored_on_the_task_and_its_max_attempts_overrides_the_tasks():
    spec = parse_definition(
        definition(
            {"max_attempts": 7, "backoff_s": 2, "max_backoff_s": 60, "jitter": 0.2, "on": ["X"]},
            max_attempts=2,
        )
    )
    task = spec.tasks[0]
    assert task.max_attempts == 7
    assert task.retry == {"backoff_s": 2.0, "max_backoff_s": 60.0, "jitter": 0.2, "on": ["X"]}
    assert parse_definition(spec.to_dict()).tasks[0] == task


def test_a_task_without_a_retry_policy_keeps_its_top_level_max_attempts():
    task = parse_definition(definition(None, max_attempts=4)).tasks[0]
    assert (task.max_attempts, task.retry) == (4, None)
    assert "retry" not in parse_definition(definition(None)).to_dict()["tasks"][0]


@pytest.mark.parametrize(
    ("retry", "field"),
    [
        ("fast", "tasks[0].retry"),
        ({"tries": 3}, "tasks[0].retry.tries"),
        ({"max_attempts": 0}, "tasks[0].retry.max_attempts"),
        ({"max_attempts": 101}, "tasks[0].retry.max_attempts"),
        ({"max_attempts": 2.5}, "tasks[0].retry.max_attempts"),
        ({"backoff_s": -1}, "tasks[0].retry.backoff_s"),
        ({"backoff_s": True}, "tasks[0].retry.backoff_s"),
        ({"backoff_s": 1e12}, "tasks[0].retry.backoff_s"),
        ({"max_backoff_s": float("inf")}, "tasks[0].retry.max_backoff_s"),
        ({"backoff_s": 10, "max_backoff_s": 5}, "tasks[0].retry.max_backoff_s"),
        ({"jitter": 1.5}, "tasks[0].retry.jitter"),
        ({"jitter": "some"}, "tasks[0].retry.jitter"),
        ({"on": "ValueError"}, "tasks[0].retry.on"),
        ({"on": []}, "tasks[0].retry.on"),
        ({"on": ["not a name"]}, "tasks[0].retry.on"),
        ({"on": ["x" * 201]}, "tasks[0].retry.on"),
        ({"on": ["E"] * 51}, "tasks[0].retry.on"),
    ],
)
def test_an_invalid_retry_policy_is_refused_naming_the_field(retry, field):
    with pytest.raises(InvalidDefinition) as caught:
        parse_definition(definition(retry))
    assert caught.value.details["field"] == field


def test_the_python_builder_writes_exception_classes_as_module_and_name():
    wf = Workflow("w")
    wf.add("noop", retry={"on": [Transient, "ValueError"], "backoff_s": 1, "max_attempts": 5})
    task = wf.spec().tasks[0]
    assert task.retry == {"on": ["tests.retry_handlers:Transient", "ValueError"], "backoff_s": 1.0}
    assert task.max_attempts == 5


def test_backoff_stays_within_the_jitter_fraction_of_the_doubling_cap():
    rng = random.Random(7)
    for jitter in (0.0, 0.25, 1.0):
        for attempt in range(1, 12):
            cap = min(10.0, 0.5 * 2 ** (attempt - 1))
            wait = backoff_s(attempt, base_s=0.5, max_s=10.0, jitter=jitter, rng=rng)
            assert cap * (1 - jitter) <= wait <= cap
    assert backoff_s(3, base_s=1.0, max_s=100.0, jitter=0.0) == 4.0
    assert backoff_s(10_000, base_s=1.0, max_s=5.0, jitter=0.0) == 5.0


def test_an_exception_is_retryable_when_its_class_or_a_base_class_is_listed():
    exc = Transient("down")
    assert retries_on(exc, None)
    assert retries_on(exc, ["tests.retry_handlers:Transient"])
    assert retries_on(exc, ["ConnectionError"])
    assert retries_on(exc, ["builtins:OSError"])
    assert not retries_on(exc, ["ValueError", "other.module:Transient"])
    assert not retries_on(ValueError("x"), ["tests.retry_handlers:Transient"])


def test_a_long_traceback_keeps_its_head_and_tail_within_the_bound():
    text = "HEAD" + "x" * (3 * MAX_TRACEBACK_CHARS) + "TAIL"
    clipped = clip(text)
    assert len(clipped) <= MAX_TRACEBACK_CHARS
    assert clipped.startswith("HEAD") and clipped.endswith("TAIL") and "left out" in clipped
    assert clip("short") == "short"


def test_a_failure_is_summarised_in_one_line_and_kept_whole_in_the_traceback():
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise ValueError("outer") from inner
    except ValueError as exc:
        line, whole = summary(exc), full_traceback(exc)
    assert line.startswith("ValueError: outer (at ") and "\n" not in line
    assert whole.startswith("Traceback (most recent call last):")
    assert "KeyError: 'inner'" in whole and whole.endswith("ValueError: outer")
