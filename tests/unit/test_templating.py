from __future__ import annotations

import pytest

from kiln.core.templating import ReferenceError_, find_references, resolve

RESULTS = {"Fetch": {"rows": [{"id": 7}, {"id": 8}], "count": 2}, "Name Here": "hello"}


def test_a_string_that_is_exactly_one_reference_keeps_the_results_json_type():
    assert resolve("{{Fetch.result.count}}", RESULTS) == 2
    assert resolve("{{ Fetch.result.rows }}", RESULTS) == [{"id": 7}, {"id": 8}]
    assert resolve("{{Fetch.result}}", RESULTS) == RESULTS["Fetch"]


def test_references_are_resolved_at_any_depth_of_nested_params():
    params = {"a": [{"b": {"c": "{{Fetch.result.rows.1.id}}"}}], "d": ["x", "{{Name Here.result}}"]}
    assert resolve(params, RESULTS) == {"a": [{"b": {"c": 8}}], "d": ["x", "hello"]}


def test_a_reference_inside_a_longer_string_is_replaced_by_its_text():
    assert resolve("n={{Fetch.result.count}} rows={{Fetch.result.rows}}", RESULTS) == (
        'n=2 rows=[{"id": 7}, {"id": 8}]'
    )


def test_find_references_names_every_task_in_nested_params():
    assert find_references(
        {"x": ["{{A.result}}", {"y": "{{B c.result.z}} and {{A.result.q}}"}]}
    ) == {
        "A",
        "B c",
    }


def test_a_missing_field_is_a_clear_error():
    with pytest.raises(ReferenceError_, match="Fetch.result.nope does not exist"):
        resolve("{{Fetch.result.nope}}", RESULTS)
