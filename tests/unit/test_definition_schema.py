"""POST /workflows validates a definition once, with the engine's parse_definition, and runs
the API's schema only when the engine refuses it or it holds a null (kiln.web.workflows):
sound only if the engine refuses whatever the schema refuses, nulls aside."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from kiln.core.definitions import parse_definition
from kiln.core.errors import KilnError
from kiln.web.schemas import WorkflowDefinitionSchema
from kiln.web.workflows import has_null

SCHEMA = WorkflowDefinitionSchema()
NAMES = ("a", "b", "c")
LONG = 10**12

# Per field, values of every kind the schema or the engine may refuse, and good ones.
TASK_VALUES = {
    "name": st.sampled_from([*NAMES, " a ", "", "x{", "A[0]", 5, None, ["a"]]),
    "handler": st.sampled_from(["h", "pkg.mod:fn", "", " ", 5, True, None]),
    "model_type": st.sampled_from(["m", "", 3, None]),
    "params": st.sampled_from(
        [{}, {"x": 1}, {"x": "{{a.result}}"}, {"i": "{{item}}"}, [], "s", 1, None]
    ),
    "depends_on": st.sampled_from([[], ["a"], ["b"], ["a", "a"], "a", [1], [None], None]),
    "max_attempts": st.sampled_from([1, 3, 100, 0, 101, True, 2.0, "3", None]),
    "timeout_s": st.sampled_from([1, 0.5, 604800, 0, -1, LONG, True, "1", [], None]),
    "priority": st.sampled_from([0, -1000, 1000, 1001, True, 1.5, "1", None]),
    "retry": st.sampled_from(
        [{}, {"jitter": 0.5}, {"jitter": 2}, {"max_attempts": 5}, {"nope": 1}, [], "r", None]
    ),
    "queue": st.sampled_from(["gpu", "gpu-1", "GPU", "gpu\n", "", "q" * 65, 5, None]),
    "workflow": st.sampled_from(["pkg.mod:attr", " pkg.mod:attr ", "bad", 5, None]),
    "map": st.sampled_from(["{{a.result}}", "{{a.result.items}}", "x", 5, [], None]),
    "sleep": st.sampled_from([1, "PT1S", "P1M", -1, True, "x", [], {}, None]),
    "until": st.sampled_from(["2030-01-01T00:00:00Z", "2030-01-01T00:00:00", 5, "x", None]),
    "signal": st.sampled_from(["go", "bad name", "", 5, None]),
    "timeout": st.sampled_from([5, "PT1M", "x", True, [], None]),
    "on_timeout": st.sampled_from(["fail", {"continue": 1}, {"x": 1}, "other", 5, None]),
    "extra": st.sampled_from([1, None]),
}
KINDS = st.sampled_from([{"handler": "h"}, {"model_type": "m"}, {"sleep": 1}, {"signal": "go"}])


@st.composite
def definitions(draw: st.DrawFn) -> dict:
    """A valid definition of one to three tasks (each may depend on the ones before), with
    up to three fields then set to any value of the pools above, good or bad."""
    tasks = []
    for i in range(draw(st.integers(1, 3))):
        earlier = draw(st.lists(st.sampled_from(NAMES[:i]), unique=True)) if i else []
        tasks.append({"name": NAMES[i], **draw(KINDS), "depends_on": earlier})
    definition = {"name": "w", "tasks": tasks}
    top = {
        "name": st.sampled_from(["w", " w ", "", 5, None]),
        "tasks": st.sampled_from([[], "x", None]),
        "on_error": st.sampled_from(["stop", "continue", "x", 1, None]),
        "priority": TASK_VALUES["priority"],
        "extra": st.just(1),
    }
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.integers(0, 4)) == 0:
            field = draw(st.sampled_from(sorted(top)))
            definition[field] = draw(top[field])
        elif isinstance(definition["tasks"], list) and definition["tasks"]:
            task = draw(st.sampled_from(definition["tasks"]))
            field = draw(st.sampled_from(sorted(TASK_VALUES)))
            task[field] = draw(TASK_VALUES[field])
    return definition


@settings(max_examples=1500, deadline=None)
@given(definitions())
def test_a_definition_the_engine_accepts_without_a_null_is_one_the_schema_accepts(definition):
    try:
        parse_definition(definition)
    except KilnError:
        return
    if has_null(definition):
        return
    SCHEMA.load(definition)  # raises ValidationError if the schema would have refused it


@pytest.mark.parametrize("field", ["handler", "params", "retry", "timeout_s", "queue", "map"])
def test_a_null_the_engine_reads_as_not_given_is_one_the_schema_refuses(field):
    definition = {"name": "w", "tasks": [{"name": "a", "model_type": "m", field: None}]}
    parse_definition(definition)
    assert has_null(definition)
    with pytest.raises(ValidationError):
        SCHEMA.load(definition)
