"""Validation is linear and bounded: a long chain of tasks, deep JSON and huge numbers are
checked (or refused with a 4xx error) without quadratic memory or a RecursionError."""

from __future__ import annotations

import tracemalloc

import pytest

from kiln.core.definitions import parse_definition
from kiln.core.errors import InvalidDefinition, InvalidValue, LimitExceeded
from kiln.core.limits import check_json_text, check_json_value
from kiln.core.pipelines import shard_workflow, shards_from_request


def chain(n: int, *, refs: bool = False) -> dict:
    """``n`` tasks, each depending on the one before; with ``refs``, each also references
    its grandparent (an ancestor that is not a direct dependency)."""
    tasks = []
    for i in range(n):
        task: dict = {"name": f"t{i}", "handler": "h", "depends_on": [f"t{i - 1}"] if i else []}
        if refs and i >= 2:
            task["params"] = {"x": f"{{{{t{i - 2}.result}}}}"}
        tasks.append(task)
    return {"name": "chain", "tasks": tasks}


def peak_bytes(definition: dict, max_tasks: int) -> int:
    tracemalloc.start()
    try:
        parse_definition(definition, max_tasks=max_tasks)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_10000_task_chain_with_references_to_ancestors_is_valid():
    spec = parse_definition(chain(10_000, refs=True))
    assert len(spec.tasks) == 10_000


def test_validating_a_chain_takes_memory_linear_in_its_length():
    # Keeping every task's ancestor set took 216 MB for 3,000 tasks and 2.3 GB for 10,000.
    small = peak_bytes(chain(10_000, refs=True), 10_000)
    large = peak_bytes(chain(20_000, refs=True), 20_000)
    assert large < 64 * 2**20
    assert large < 2.5 * small  # quadratic growth would be 4x


def test_references_are_checked_against_every_ancestor_past_one_reachability_pass():
    # More referenced tasks than one pass tracks (2,048), so several passes run.
    definition = chain(5_000, refs=True)
    parse_definition(definition)
    definition["tasks"].append(
        {"name": "side", "handler": "h", "depends_on": ["t0"], "params": "{{t4000.result}}"}
    )
    with pytest.raises(InvalidDefinition, match="'t4000', which is not upstream of it"):
        parse_definition(definition)


def test_a_reference_reached_through_either_branch_of_a_diamond_is_upstream():
    definition = {
        "name": "diamond",
        "tasks": [
            {"name": "a", "handler": "h"},
            {"name": "b", "handler": "h", "depends_on": ["a"]},
            {"name": "c", "handler": "h", "depends_on": ["a"]},
            {"name": "d", "handler": "h", "depends_on": ["b", "c"], "params": "{{a.result}}"},
            {"name": "e", "handler": "h", "depends_on": ["c"], "params": "{{b.result}}"},
        ],
    }
    with pytest.raises(InvalidDefinition, match="task 'e' references 'b'"):
        parse_definition(definition)
    del definition["tasks"][-1]
    parse_definition(definition)


def test_more_tasks_than_the_limit_are_refused_before_anything_else_is_checked():
    cyclic = {
        "name": "too many",
        "tasks": [{"name": n, "handler": "h", "depends_on": [n]} for n in "abcd"],
    }
    with pytest.raises(LimitExceeded, match="at most 3 tasks"):
        parse_definition(cyclic, max_tasks=3)


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_task_params_nested_985_deep_are_refused_without_a_recursion_error():
    definition = {"name": "deep", "tasks": [{"name": "a", "handler": "h", "params": nested(985)}]}
    with pytest.raises(LimitExceeded, match="nests deeper than 64 levels"):
        parse_definition(definition)
    definition["tasks"][0]["params"] = nested(60)
    parse_definition(definition)


@pytest.mark.parametrize(
    "number",
    [2**63, -(2**63) - 1, 10**5000, float("inf"), float("nan")],
    ids=["2**63", "-2**63-1", "5001 digits", "inf", "nan"],
)
def test_params_with_a_number_no_database_stores_are_refused(number):
    definition = {"name": "n", "tasks": [{"name": "a", "handler": "h", "params": [number]}]}
    with pytest.raises(InvalidValue):
        parse_definition(definition)


def test_json_nested_100000_deep_is_refused_before_parsing():
    with pytest.raises(LimitExceeded):
        check_json_text(b"[" * 100_000 + b"]" * 100_000, max_depth=64)


def test_brackets_and_digits_inside_strings_do_not_count():
    text = b'{"a": "[[[[[[[[[[{{{{{{", "b": "99999999999999999999999", "c\\"[": [1]}'
    check_json_text(text, max_depth=2)
    with pytest.raises(LimitExceeded):
        check_json_text(text, max_depth=1)


@pytest.mark.parametrize(
    "text",
    [
        b'{"n": ' + b"9" * 5000 + b"}",
        b"[9223372036854775808]",
        b"[-9223372036854775809]",
        b"[1e999]",
        b"[-1" + b"0" * 400 + b".5]",
        b"[NaN]",
        b"[-Infinity]",
    ],
)
def test_json_with_an_integer_past_64_bits_or_a_non_finite_number_is_refused(text):
    with pytest.raises(InvalidValue):
        check_json_text(text, max_depth=64)


@pytest.mark.parametrize(
    "text",
    [
        b"[9223372036854775807, -9223372036854775808]",
        b"[1.12345678901234567890123456789, 1e300, 1e-999, 0.5E+10]",
        b'{"name": "NaN Infinity"}',
    ],
)
def test_json_with_every_number_in_range_passes(text):
    check_json_text(text, max_depth=64)


def test_a_value_within_the_limits_passes_the_python_check():
    check_json_value({"a": [1, 2.5, True, None, "x", 2**63 - 1]}, max_depth=3)


def test_the_shard_workflow_is_the_definition_the_validator_accepts():
    spec = shard_workflow(7, "p", 3)
    assert parse_definition(spec.to_dict()) == spec
    assert [t.depends_on for t in spec.tasks] == [(), ("shard-00000",), ("shard-00001",)]


def test_more_shards_than_the_limit_are_refused_before_rows_are_split():
    with pytest.raises(LimitExceeded, match="at most 10 shards"):
        shards_from_request(shards=None, rows=[1], source=None, num_shards=11, max_shards=10)
    with pytest.raises(LimitExceeded):
        shards_from_request(
            shards=[[1]] * 11, rows=None, source=None, num_shards=None, max_shards=10
        )
