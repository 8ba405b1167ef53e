"""Map tasks in definitions (JSON and Python) and the item substitution, without a database."""

from __future__ import annotations

import pytest

import kiln
from kiln.core.builder import Workflow, index
from kiln.core.definitions import parse_definition
from kiln.core.errors import InvalidDefinition
from kiln.core.mapping import (
    MapError,
    check_items,
    is_item_name,
    item_name,
    item_params,
    map_source,
)
from kiln.core.templating import ReferenceError_

SPLIT = {"name": "Split", "handler": "m:split"}
AGG = {"name": "Agg", "handler": "m:agg", "map": "{{Split.result.chunks}}",
       "params": {"chunk": "{{item}}"}}  # fmt: skip


def definition(*tasks):
    return {"name": "wf", "tasks": list(tasks)}


def test_the_python_map_produces_the_json_form():
    wf = Workflow("csv")
    split = wf.add("m:split", name="Split")
    agg = wf.map(
        "m:agg", name="Agg", over=split.result["chunks"], params={"chunk": kiln.item, "i": index}
    )
    wf.add("m:merge", name="Merge", params={"parts": agg.result}, depends_on=[agg])
    as_json = definition(
        SPLIT,
        {**AGG, "params": {"chunk": "{{item}}", "i": "{{index}}"}},
        {"name": "Merge", "handler": "m:merge", "params": {"parts": "{{Agg.result}}"},
         "depends_on": ["Agg"]},
    )  # fmt: skip
    assert wf.to_definition()["tasks"][1]["map"] == "{{Split.result.chunks}}"
    assert wf.spec() == parse_definition({**as_json, "name": "csv"})


def test_the_mapped_lists_task_becomes_a_dependency_and_the_definition_round_trips():
    spec = parse_definition(definition(SPLIT, AGG))
    agg = spec.tasks[1]
    assert agg.map_over == "{{Split.result.chunks}}" and agg.depends_on == ("Split",)
    assert spec.to_dict()["tasks"][1]["map"] == "{{Split.result.chunks}}"
    assert parse_definition(spec.to_dict()) == spec


def test_a_model_type_task_can_be_mapped():
    spec = parse_definition(
        definition(SPLIT, {"name": "Gen", "model_type": "llm", "map": "{{Split.result}}",
                           "params": {"prompt": "say {{item}}"}})
    )  # fmt: skip
    assert spec.tasks[1].model_type == "llm" and spec.tasks[1].map_over == "{{Split.result}}"


@pytest.mark.parametrize(
    ("task", "field", "words"),
    [
        ({**AGG, "map": "Split.result.chunks"}, "tasks[1].map", "exactly one reference"),
        ({**AGG, "map": "{{Split.result}} {{Split.result}}"}, "tasks[1].map", "exactly one"),
        ({**AGG, "map": ["{{Split.result}}"]}, "tasks[1].map", "exactly one reference"),
        ({**AGG, "name": "Agg[0]"}, "tasks[1].name", "may not contain '[' or ']'"),
        ({**AGG, "name": "A]"}, "tasks[1].name", "reserved for mapped items"),
        ({**AGG, "map": None}, "tasks[1].params", "allowed only in the params of a task with"),
    ],
)
def test_a_bad_map_task_is_refused_naming_the_field(task, field, words):
    with pytest.raises(InvalidDefinition) as err:
        parse_definition(definition(SPLIT, task))
    assert err.value.details.get("field") == field
    assert words in err.value.message


def test_item_and_index_are_refused_outside_a_map_task():
    with pytest.raises(InvalidDefinition) as err:
        parse_definition(
            definition(SPLIT, {"name": "X", "handler": "m:x", "params": {"n": "row {{index}}"}})
        )
    assert err.value.details["field"] == "tasks[1].params"


def test_a_map_over_an_unknown_task_is_refused_naming_it():
    with pytest.raises(InvalidDefinition, match="maps over unknown task 'Nope'"):
        parse_definition(definition(SPLIT, {**AGG, "map": "{{Nope.result}}"}))


def test_a_map_cannot_close_a_cycle():
    split = {**SPLIT, "depends_on": ["Agg"]}
    with pytest.raises(InvalidDefinition, match="cycle"):
        parse_definition(definition(split, AGG))


def test_the_item_replaces_a_whole_string_with_its_json_type_and_is_text_inside_one():
    params = {"chunk": "{{item}}", "i": "{{ index }}", "label": "chunk {{index}}: {{item}}",
              "keep": "{{Other.result.x}}", "deep": [{"x": "{{item}}"}], "n": 3}  # fmt: skip
    assert item_params(params, {"rows": [1, 2]}, 4) == {
        "chunk": {"rows": [1, 2]},
        "i": 4,
        "label": 'chunk 4: {"rows": [1, 2]}',
        "keep": "{{Other.result.x}}",  # with no results given, a reference is left as is
        "deep": [{"x": {"rows": [1, 2]}}],
        "n": 3,
    }
    assert item_params("file {{item}}", "a.csv", 0) == "file a.csv"


def test_an_items_params_are_made_final_in_one_pass_so_brought_in_text_is_never_a_template():
    params = {"x": "{{Other.result.x}}", "line": "{{item}} / {{Other.result.name}}"}
    results = {"Other": {"x": [1, 2], "name": "{{item}}"}}
    assert item_params(params, "{{Other.result.x}}", 0, results) == {
        "x": [1, 2],
        "line": "{{Other.result.x}} / {{item}}",
    }


def test_a_reference_an_item_cannot_resolve_raises():
    with pytest.raises(ReferenceError_, match="task 'Gone' has no result"):
        item_params({"x": "{{Gone.result}}"}, 1, 0, {})


def test_mapped_item_names_are_told_apart_by_their_reserved_bracket():
    assert is_item_name(item_name("Agg", 3)) and not is_item_name("Agg")


def test_only_a_list_within_the_bound_can_be_mapped():
    assert check_items([1, 2], source="S.result", max_items=2) == [1, 2]
    with pytest.raises(MapError, match=r"S.result has 3 items; a map runs at most 2"):
        check_items([1, 2, 3], source="S.result", max_items=2)
    for value, kind in (
        ({"a": 1}, "an object"),
        ("abc", "a string"),
        (None, "null"),
        (1, "a number"),
    ):
        with pytest.raises(MapError, match=f"S.result is {kind}, not a list"):
            check_items(value, source="S.result", max_items=2)


def test_item_names_and_map_sources():
    assert item_name("Agg", 3) == "Agg[3]"
    assert map_source(" {{Split.result.chunks}} ") == "Split"
    assert map_source("{{Split.result}} and more") is None
