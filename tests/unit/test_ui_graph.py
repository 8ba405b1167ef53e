"""The dashboard's drawings as geometry: DAG layers, a map's items, and the attempt
timeline."""

from __future__ import annotations

import itertools

import pytest

from kiln.web.ui_graph import (
    GANTT_LABEL_W,
    CycleError,
    Span,
    dag_layout,
    fold_maps,
    format_duration,
    gantt_layout,
    group_status,
    layers,
    nice_step,
)

DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


def _crossings(columns: list[list[str]], deps: dict[str, list[str]]) -> int:
    pos = {n: (i, k) for i, col in enumerate(columns) for k, n in enumerate(col)}
    edges = [(pos[d], pos[n]) for n, ds in deps.items() for d in ds if pos[n][0] == pos[d][0] + 1]
    return sum(
        1
        for (s1, t1), (s2, t2) in itertools.combinations(edges, 2)
        if s1[0] == s2[0] and (s1[1] - s2[1]) * (t1[1] - t2[1]) < 0
    )


def test_every_dependency_points_to_a_later_layer_and_layers_are_longest_paths():
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": ["a", "c"], "e": []}
    columns = layers(list(deps), deps)
    assert columns == [["a", "e"], ["b"], ["c"], ["d"]]
    index = {n: i for i, col in enumerate(columns) for n in col}
    assert all(index[d] < index[n] for n, ds in deps.items() for d in ds)


def test_a_diamond_is_three_columns_and_every_task_appears_once():
    columns = layers(list(DIAMOND), DIAMOND)
    assert columns == [["a"], ["b", "c"], ["d"]]


def test_ordering_within_layers_removes_avoidable_crossings():
    # Two independent chains given interleaved: x1 -> x2, y1 -> y2, listed so that a naive
    # ordering crosses them.
    deps = {"x1": [], "y1": [], "y2": ["y1"], "x2": ["x1"]}
    columns = layers(list(deps), deps)
    assert _crossings(columns, deps) == 0
    assert columns == [["x1", "y1"], ["x2", "y2"]]


def test_a_cycle_is_refused_with_the_tasks_named():
    with pytest.raises(CycleError, match="a, b"):
        layers(["a", "b", "c"], {"a": ["b"], "b": ["a"], "c": []})


def test_unknown_and_self_dependencies_are_ignored():
    assert layers(["a", "b"], {"b": ["a", "ghost", "b"]}) == [["a"], ["b"]]


def test_boxes_never_overlap_and_edges_run_from_the_dependency_to_the_dependent():
    deps = {f"t{i}": ([f"t{i - 1}"] if i % 3 else []) for i in range(12)}
    deps["join"] = [f"t{i}" for i in range(12)]
    layout = dag_layout(list(deps), deps)
    boxes = {n.name: n for n in layout.nodes}
    assert len(boxes) == 13
    for a, b in itertools.combinations(layout.nodes, 2):
        apart_x = a.x + a.w <= b.x or b.x + b.w <= a.x
        apart_y = a.y + a.h <= b.y or b.y + b.h <= a.y
        assert apart_x or apart_y, (a, b)
    for n in layout.nodes:
        assert 0 <= n.x and n.x + n.w <= layout.width
        assert 0 <= n.y and n.y + n.h <= layout.height
    assert len(layout.edges) == sum(len(d) for d in deps.values())
    for e in layout.edges:
        start, end = e.path[1:].split(" C")[0], e.path.rsplit(" ", 1)[1]
        src, dst = boxes[e.source], boxes[e.target]
        assert [float(v) for v in start.split(",")] == pytest.approx(
            [src.x + src.w, src.y + src.h / 2]
        )
        assert [float(v) for v in end.split(",")] == pytest.approx([dst.x, dst.y + dst.h / 2])


def test_long_names_are_shortened_for_the_box_but_kept_whole_as_the_name():
    name = "a-very-long-task-name-that-does-not-fit"
    node = dag_layout([name], {}).nodes[0]
    assert node.name == name
    assert len(node.label) <= 21 and node.label.endswith("…")


def test_an_empty_run_has_an_empty_drawing():
    layout = dag_layout([], {})
    assert (layout.nodes, layout.edges) == ([], [])


def test_the_timeline_places_attempts_in_time_order_on_their_task_rows():
    rows = [
        ("fetch", [Span(100.0, 101.0, "failed"), Span(101.5, 103.0, "succeeded")]),
        ("load", [Span(103.0, None, "running")]),
        ("later", []),
    ]
    g = gantt_layout(rows, now=110.0, width=1000)
    assert [label for label, _ in g.labels] == ["fetch", "load", "later"]
    assert g.span_s == pytest.approx(10.0)
    first, second, running = g.bars
    assert (first.row, second.row, running.row) == (0, 0, 1)
    assert first.x == pytest.approx(GANTT_LABEL_W)
    assert first.x + first.w <= second.x
    assert running.open and running.kind == "running"
    # The running attempt reaches "now": the right edge of the plot.
    assert running.x + running.w == pytest.approx(g.width - 12, abs=0.2)
    assert second.y < running.y
    for b in g.bars:
        assert GANTT_LABEL_W <= b.x and b.x + b.w <= g.width


def test_a_timeline_without_attempts_has_no_made_up_axis():
    g = gantt_layout([("a", []), ("b", [])], now=1_700_000_000.0)
    assert (g.bars, g.ticks) == ([], [])
    assert [label for label, _ in g.labels] == ["a", "b"]


def _mapped_run(items: int) -> list[dict]:
    """split -> Agg (a map task, id 2) -> merge, plus Agg's items as the store writes them:
    later ids, ``mapped_from`` the map task, ``map_index`` their place."""
    tasks = [
        {"id": 1, "name": "split", "depends_on": []},
        {"id": 2, "name": "Agg", "depends_on": ["split"]},
        {"id": 3, "name": "merge", "depends_on": ["Agg"]},
    ]
    # Written out of order on purpose: the drawing follows map_index.
    for i in reversed(range(items)):
        tasks.append(
            {"id": 10 + i, "name": f"Agg[{i}]", "depends_on": ["split"], "mapped_from": 2,
             "map_index": i}
        )  # fmt: skip
    return tasks


def test_a_few_map_items_fan_out_from_their_map_task_and_into_what_follows_it():
    drawing = fold_maps(_mapped_run(3))
    items = ["Agg[0]", "Agg[1]", "Agg[2]"]
    assert drawing.groups == {}
    assert [n for n in drawing.names if n.startswith("Agg[")] == items
    assert all(drawing.deps[i] == ["Agg"] for i in items)
    assert drawing.deps["merge"] == items
    columns = layers(drawing.names, drawing.deps)
    assert columns == [["split"], ["Agg"], items, ["merge"]]


def test_many_map_items_fold_into_one_box_so_200_stay_readable():
    drawing = fold_maps(_mapped_run(200))
    box = "Agg[0–199]"
    assert drawing.names == ["split", "Agg", box, "merge"]
    assert drawing.groups == {box: [f"Agg[{i}]" for i in range(200)]}
    assert drawing.deps[box] == ["Agg"] and drawing.deps["merge"] == [box]
    assert len(dag_layout(drawing.names, drawing.deps).nodes) == 4


def test_a_run_without_maps_is_drawn_as_submitted():
    tasks = [{"id": i, "name": n, "depends_on": DIAMOND[n]} for i, n in enumerate(DIAMOND)]
    drawing = fold_maps(tasks)
    assert (drawing.names, drawing.deps, drawing.groups) == (list(DIAMOND), DIAMOND, {})


@pytest.mark.parametrize(
    ("statuses", "shown"),
    [
        (["succeeded"] * 5, "succeeded"),
        (["succeeded", "running", "queued"], "running"),
        (["succeeded", "failed", "running"], "failed"),
        (["pending", "ready"], "ready"),
        (["succeeded", "cancelled"], "cancelled"),
    ],
)
def test_a_box_for_many_items_shows_failures_first_then_activity(statuses, shown):
    assert group_status(statuses) == shown


def test_an_instant_attempt_stays_visible():
    g = gantt_layout([("a", [Span(5.0, 5.0, "succeeded"), Span(5.0, 65.0, "succeeded")])], 65.0)
    assert min(b.w for b in g.bars) >= 2


def test_ticks_are_round_numbers_covering_the_span():
    g = gantt_layout([("a", [Span(0.0, 7.3, "succeeded")])], now=7.3, width=800)
    assert [t.label for t in g.ticks] == ["0s", "2s", "4s", "6s"]
    assert g.ticks[0].x == GANTT_LABEL_W
    assert all(a.x < b.x for a, b in itertools.pairwise(g.ticks))


@pytest.mark.parametrize(
    ("span", "step"), [(7.3, 2.0), (0.05, 0.01), (100, 20), (3600, 1000), (1, 0.2)]
)
def test_nice_steps_are_one_two_or_five_times_a_power_of_ten(span, step):
    assert nice_step(span) == pytest.approx(step)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4213, "0.42s"), (12.34, "12.3s"), (245, "4m 05s"), (7380, "2h 03m"), (-1, "0.00s")],
)
def test_durations_read_naturally(seconds, text):
    assert format_duration(seconds) == text
