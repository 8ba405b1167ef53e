from __future__ import annotations

import pytest

from kiln.core.builder import Workflow
from kiln.core.definitions import parse_definition
from kiln.core.errors import InvalidDefinition


def definition(*tasks, **extra):
    return {"name": "wf", "tasks": list(tasks), **extra}


def test_the_python_builder_produces_the_same_definition_as_json():
    wf = Workflow("etl", on_error="continue")
    a = wf.add("echo", name="Fetch", params={"url": "u"}, max_attempts=5, timeout_s=2)
    wf.add("echo", name="Count", params={"rows": a.result["rows"]}, depends_on=[a], priority=3)
    as_json = {
        "name": "etl",
        "on_error": "continue",
        "tasks": [
            {
                "name": "Fetch",
                "handler": "echo",
                "params": {"url": "u"},
                "max_attempts": 5,
                "timeout_s": 2,
            },
            {
                "name": "Count",
                "handler": "echo",
                "params": {"rows": "{{Fetch.result.rows}}"},
                "depends_on": ["Fetch"],
                "priority": 3,
            },
        ],
    }
    assert wf.spec() == parse_definition(as_json)


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([{"name": "A", "handler": "h"}, {"name": "A", "handler": "h"}], "duplicate task name 'A'"),
        ([{"name": "A", "handler": "h", "depends_on": ["Z"]}], "depends on unknown task 'Z'"),
        (
            [
                {"name": "A", "handler": "h", "depends_on": ["B"]},
                {"name": "B", "handler": "h", "depends_on": ["A"]},
            ],
            "cycle",
        ),
        ([{"name": "A", "handler": "h", "params": {"x": "{{Q.result}}"}}], "unknown task 'Q'"),
        (
            [
                {"name": "A", "handler": "h"},
                {"name": "B", "handler": "h", "params": {"x": ["{{A.result}}"]}},
            ],
            "not upstream",
        ),
        ([{"name": "A"}], "exactly one of 'handler', 'model_type' or 'workflow'"),
        ([{"name": "A", "handler": "h", "max_attempts": 0}], "max_attempts"),
        ([{"name": "A", "handler": "h", "timeout_s": -1}], "timeout_s"),
        ([{"name": "A", "handler": "h", "colour": "red"}], "unknown field 'colour'"),
    ],
)
def test_invalid_definitions_are_rejected_with_a_clear_message(tasks, message):
    with pytest.raises(InvalidDefinition, match=message):
        parse_definition(definition(*tasks))


def test_a_reference_to_a_transitive_ancestor_is_allowed():
    spec = parse_definition(
        definition(
            {"name": "A", "handler": "h"},
            {"name": "B", "handler": "h", "depends_on": ["A"]},
            {
                "name": "C",
                "handler": "h",
                "depends_on": ["B"],
                "params": {"deep": {"x": "{{A.result.v}}"}},
            },
        )
    )
    assert [t.name for t in spec.tasks] == ["A", "B", "C"]


def test_the_workflow_itself_must_have_a_name_and_tasks():
    with pytest.raises(InvalidDefinition, match="'name' is required"):
        parse_definition({"tasks": [{"name": "A", "handler": "h"}]})
    with pytest.raises(InvalidDefinition, match="non-empty list"):
        parse_definition({"name": "x", "tasks": []})
    with pytest.raises(InvalidDefinition, match="on_error"):
        parse_definition(definition({"name": "A", "handler": "h"}, on_error="ignore"))
