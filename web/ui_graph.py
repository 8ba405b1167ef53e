"""Geometry for the dashboard's two drawings, as plain functions over plain data (no Flask,
no database): the DAG of a run (a layered left-to-right layout, with a map's items drawn as a
fan-out from their map task or folded into one box) and the timeline of its attempts (a Gantt
chart). The templates turn the results into SVG.

Coordinates are SVG user units (pixels at 100 % zoom), origin top-left.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

# DAG geometry.
NODE_W = 168
NODE_H = 38
COL_GAP = 56
ROW_GAP = 14
MARGIN = 12
LABEL_CHARS = 21

# Gantt geometry.
GANTT_LABEL_W = 190
GANTT_ROW_H = 24
GANTT_BAR_H = 14
GANTT_AXIS_H = 22
ORDER_SWEEPS = 4

# A map with more items than this is drawn as one box standing for all of them.
MAP_INLINE_ITEMS = 8
# The state a box for many tasks shows: the first of these any of them is in.
GROUP_PRECEDENCE = (
    "failed",
    "running",
    "retrying",
    "queued",
    "ready",
    "waiting",
    "paused",
    "pending",
    "upstream_failed",
    "cancelled",
    "succeeded",
)


@dataclasses.dataclass(frozen=True)
class Node:
    name: str
    label: str
    layer: int
    x: float
    y: float
    w: float = NODE_W
    h: float = NODE_H

    @property
    def cx(self) -> float:
        return self.x + self.w / 2


@dataclasses.dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: str  # SVG path data: a cubic curve from the source's right to the target's left


@dataclasses.dataclass(frozen=True)
class DagLayout:
    nodes: list[Node]
    edges: list[Edge]
    width: float
    height: float


class CycleError(ValueError):
    """The dependencies form a cycle, so they have no layered drawing."""


def truncate(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def layers(names: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Each node's layer is the length of the longest dependency chain leading to it, so every
    edge points to a later layer. Within a layer, nodes start in ``names`` order and are then
    reordered by the mean position of their neighbours (a few barycentre sweeps), which removes
    most crossings of ordinary workflow DAGs. Dependencies on unknown names are ignored."""
    known = set(names)
    preds = {n: [d for d in deps.get(n, ()) if d in known and d != n] for n in names}
    succs: dict[str, list[str]] = {n: [] for n in names}
    for n in names:
        for d in preds[n]:
            succs[d].append(n)
    remaining = {n: len(preds[n]) for n in names}
    level: dict[str, int] = {}
    frontier = [n for n in names if remaining[n] == 0]
    while frontier:
        nxt = []
        for n in frontier:
            level[n] = max((level[d] + 1 for d in preds[n]), default=0)
            for s in succs[n]:
                remaining[s] -= 1
                if remaining[s] == 0:
                    nxt.append(s)
        frontier = nxt
    if len(level) != len(names):
        stuck = sorted(n for n in names if n not in level)
        raise CycleError(f"dependency cycle among {', '.join(stuck)}")
    result: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for n in names:
        result[level[n]].append(n)
    for sweep in range(ORDER_SWEEPS):
        forward = sweep % 2 == 0
        neighbours = preds if forward else succs
        order = range(1, len(result)) if forward else range(len(result) - 2, -1, -1)
        for i in order:
            position = {n: k for layer in result for k, n in enumerate(layer)}
            result[i] = _by_barycentre(result[i], position, neighbours)
    return result


def _by_barycentre(
    layer: list[str], position: Mapping[str, int], neighbours: Mapping[str, list[str]]
) -> list[str]:
    """``layer`` sorted by the mean position of each node's neighbours; a node without any
    keeps its place, and ties keep their order."""
    current = {n: k for k, n in enumerate(layer)}

    def key(n: str) -> tuple[float, int]:
        around = [position[m] for m in neighbours[n]]
        return (sum(around) / len(around) if around else current[n], current[n])

    return sorted(layer, key=key)


def dag_layout(names: Sequence[str], deps: Mapping[str, Sequence[str]]) -> DagLayout:
    """Boxes for ``names`` in columns by :func:`layers`, each column centred vertically, and one
    curved edge per dependency (from the dependency to the dependent)."""
    columns = layers(names, deps)
    tallest = max((len(c) for c in columns), default=0)
    step = NODE_H + ROW_GAP
    nodes: dict[str, Node] = {}
    for i, column in enumerate(columns):
        top = MARGIN + (tallest - len(column)) * step / 2
        for k, name in enumerate(column):
            nodes[name] = Node(
                name=name,
                label=truncate(name),
                layer=i,
                x=MARGIN + i * (NODE_W + COL_GAP),
                y=top + k * step,
            )
    edges = []
    for name in names:
        for dep in deps.get(name, ()):
            if dep in nodes and dep != name:
                a, b = nodes[dep], nodes[name]
                x1, y1 = a.x + a.w, a.y + a.h / 2
                x2, y2 = b.x, b.y + b.h / 2
                bend = max((x2 - x1) / 2, COL_GAP / 2)
                path = (
                    f"M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1:.1f} "
                    f"{x2 - bend:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
                )
                edges.append(Edge(source=dep, target=name, path=path))
    width = MARGIN * 2 + len(columns) * NODE_W + max(len(columns) - 1, 0) * COL_GAP
    height = MARGIN * 2 + tallest * NODE_H + max(tallest - 1, 0) * ROW_GAP
    return DagLayout(
        nodes=[nodes[n] for n in names], edges=edges, width=max(width, 0), height=height
    )


# --- a map's items ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Drawing:
    """What the graph draws: ``names`` and ``deps`` for :func:`dag_layout`, and ``groups``,
    the boxes that stand for many mapped items (box name -> the items' task names)."""

    names: list[str]
    deps: dict[str, list[str]]
    groups: dict[str, list[str]]


def fold_maps(tasks: Sequence[Mapping[str, Any]], inline: int = MAP_INLINE_ITEMS) -> Drawing:
    """The graph of a run whose map tasks may have items (tasks with ``mapped_from``, the map
    task's id, and ``map_index``). A map's items hang off their map task: up to ``inline`` of
    them as their own boxes, more as one box ``Name[0–N]``; whatever depends on the map task
    is drawn after its items (it starts when they have all finished)."""
    name_of = {t["id"]: t["name"] for t in tasks if "id" in t}
    members: dict[str, list[Mapping[str, Any]]] = {}
    for t in tasks:
        parent = name_of.get(t.get("mapped_from"))
        if parent is not None:
            members.setdefault(parent, []).append(t)
    after: dict[str, list[str]] = {}  # map task -> the boxes its dependents are drawn after
    groups: dict[str, list[str]] = {}
    for parent, items in members.items():
        items.sort(key=lambda m: m.get("map_index") or 0)
        if len(items) > inline:
            box = f"{parent}[0–{len(items) - 1}]"
            groups[box] = [m["name"] for m in items]
            after[parent] = [box]
        else:
            after[parent] = [m["name"] for m in items]
    names: list[str] = []
    deps: dict[str, list[str]] = {}
    for t in tasks:
        name = t["name"]
        if name_of.get(t.get("mapped_from")) is not None:
            continue  # drawn right after its map task
        names.append(name)
        deps[name] = [x for d in t.get("depends_on") or () for x in after.get(d, [d])]
        for drawn in after.get(name, ()):
            names.append(drawn)
            deps[drawn] = [name]
    return Drawing(names=names, deps=deps, groups=groups)


def group_status(statuses: Sequence[str]) -> str:
    """The one state a box for many tasks shows: failures first, then activity, and
    ``succeeded`` only when all of them are."""
    present = set(statuses)
    return next((s for s in GROUP_PRECEDENCE if s in present), "pending")


# --- the timeline -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Span:
    """One attempt: Unix-second ``start``; ``end`` None while it runs; ``kind`` its outcome
    (``running``, ``succeeded``, ``failed``, ``timed_out``, ``lost``, ``stale``)."""

    start: float
    end: float | None
    kind: str
    title: str = ""


@dataclasses.dataclass(frozen=True)
class Bar:
    row: int
    x: float
    y: float
    w: float
    h: float
    kind: str
    title: str
    open: bool  # still running: drawn up to "now"


@dataclasses.dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclasses.dataclass(frozen=True)
class GanttLayout:
    labels: list[tuple[str, float]]  # (row label, baseline y)
    bars: list[Bar]
    ticks: list[Tick]
    width: float
    height: float
    plot_x: float
    span_s: float


def format_duration(seconds: float) -> str:
    """``0.42s``, ``12.3s``, ``4m 05s``, ``2h 03m``: short and unambiguous."""
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m}m {s:02d}s"
    h, m = divmod(int(round(seconds)) // 60, 60)
    return f"{h}h {m:02d}m"


def nice_step(span: float, target_ticks: int = 6) -> float:
    """The 1-2-5 × 10^k step closest above ``span / target_ticks``."""
    raw = max(span, 1e-9) / max(target_ticks, 1)
    exp = math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        step = m * 10**exp
        if step >= raw * (1 - 1e-9):
            return float(step)
    return float(10 ** (exp + 1))


def _tick_label(t: float, step: float) -> str:
    if step >= 60:
        return format_duration(t) if t else "0"
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{t:.{decimals}f}s"


def gantt_layout(
    rows: Sequence[tuple[str, Sequence[Span]]], now: float, width: float = 1180
) -> GanttLayout:
    """One row per ``(label, spans)``, time left to right from the earliest start to the
    latest end (a running span ends at ``now``); rows without spans stay empty so rows line up
    with the task list. Bars are at least 2 units wide so instant attempts stay visible.
    Without any attempt there are no ticks: an axis over no time would be made up."""
    plot_x = GANTT_LABEL_W
    plot_w = max(width - plot_x - MARGIN, 10)
    starts = [s.start for _, spans in rows for s in spans]
    ends = [s.end if s.end is not None else now for _, spans in rows for s in spans]
    t0 = min(starts, default=now)
    span_s = max(max(ends, default=t0) - t0, 1e-3)
    scale = plot_w / span_s
    labels, bars = [], []
    for i, (label, spans) in enumerate(rows):
        top = GANTT_AXIS_H + i * GANTT_ROW_H
        labels.append((truncate(label, 26), top + GANTT_ROW_H / 2))
        for s in spans:
            end = s.end if s.end is not None else now
            x = min(plot_x + (s.start - t0) * scale, plot_x + plot_w - 2)
            w = min(max((max(end, s.start) - s.start) * scale, 2.0), plot_x + plot_w - x)
            bars.append(
                Bar(
                    row=i,
                    x=round(x, 1),
                    y=top + (GANTT_ROW_H - GANTT_BAR_H) / 2,
                    w=round(w, 1),
                    h=GANTT_BAR_H,
                    kind=s.kind,
                    title=s.title,
                    open=s.end is None,
                )
            )
    step = nice_step(span_s)
    ticks = []
    k = 0 if starts else math.inf  # no attempt yet: no time axis to draw
    while k * step <= span_s * (1 + 1e-9):
        ticks.append(Tick(x=round(plot_x + k * step * scale, 1), label=_tick_label(k * step, step)))
        k += 1
    height = GANTT_AXIS_H + len(rows) * GANTT_ROW_H + MARGIN
    return GanttLayout(
        labels=labels,
        bars=bars,
        ticks=ticks,
        width=width,
        height=height,
        plot_x=plot_x,
        span_s=span_s,
    )
