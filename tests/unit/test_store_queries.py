"""PostgreSQL's named queries (``kiln/store/queries.sql``) spell states only as the enums in
``kiln.core.states`` name them, and wake controllers on the channel they listen on."""

from __future__ import annotations

import re

from kiln.core.states import TaskStatus, WorkflowStatus
from kiln.store.db import READY_CHANNEL
from kiln.store.postgres import QUERIES

# Quoted literals that are not states: event entities, the finish query's row kinds, NOTIFY's
# channel and payload.
NOT_STATES = {"task", "workflow", "done", "readied", READY_CHANNEL, ""}
# set_config('synchronous_commit', 'off', ...) in claim; pg_get_serial_sequence('workflows',
# 'id') in insert_runs
NOT_STATES |= {"synchronous_commit", "off", "workflows", "id"}
WORKFLOW_ALIASES = {"w", "workflows"}
LITERALS = r"'\w*'(?:\s*,\s*'\w*')*"
# ``x.status = 'a'``, ``x.status <> 'a'``, ``x.status IN ('a', 'b')``
QUALIFIED = re.compile(rf"\b(\w+)\.status\s*(?:=|<>|IN\s*\()\s*({LITERALS})")
# ``UPDATE table AS x SET status = 'a'``
SET_STATUS = re.compile(rf"UPDATE (\w+)[^;]*?SET status = ({LITERALS})", re.DOTALL)


def _literals(text: str) -> set[str]:
    return set(re.findall(r"'(\w*)'", text))


def test_the_named_queries_are_loaded():
    assert {"mark_queued", "queue_is_idle", "insert_run", "claim", "finish"} <= set(QUERIES)
    # the shared idle predicate is spelled once and included
    assert "{queue_is_idle}" not in QUERIES["insert_run"]
    assert QUERIES["queue_is_idle"] in QUERIES["insert_run"]


def test_every_quoted_state_in_the_queries_is_a_member_of_its_enum():
    states = {s.value for s in TaskStatus} | {s.value for s in WorkflowStatus}
    checked = 0
    for name, sql in QUERIES.items():
        unknown = _literals(sql) - NOT_STATES - states
        assert not unknown, f"{name}: {unknown} are no states"
        for alias, values in QUALIFIED.findall(sql):
            enum = WorkflowStatus if alias in WORKFLOW_ALIASES else TaskStatus
            for value in _literals(values):
                assert value in {s.value for s in enum}, f"{name}: {alias}.status {value!r}"
                checked += 1
        for table, values in SET_STATUS.findall(sql):
            enum = WorkflowStatus if table == "workflows" else TaskStatus
            for value in _literals(values):
                assert value in {s.value for s in enum}, f"{name}: {table} {value!r}"
                checked += 1
    assert checked > 20  # the patterns still find the queries' status comparisons


def test_the_queries_notify_the_channel_controllers_listen_on_and_only_from_the_wake():
    assert QUERIES["wake"] == f"NOTIFY {READY_CHANNEL}"
    notifying = [n for n, sql in QUERIES.items() if "NOTIFY " in sql or "pg_notify" in sql]
    assert notifying == ["wake"]  # the others say whether to wake (kiln.store.postgres)
