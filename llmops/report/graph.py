"""Lays out a plan's stages as a graph for the report's SVG: columns by topological generation
(the standard library's graphlib; a stage sits right of every stage it needs), an edge from each
need to its stage unless a path through other stages already joins them (the transitive
reduction; the stage table lists every need)."""

from __future__ import annotations

from graphlib import TopologicalSorter
from typing import Any

NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 150, 46, 46, 14, 8


def layout(stages: list[dict[str, Any]]) -> dict[str, Any]:
    """Returns {width, height, nodes, edges} for the template to draw.

    Args:
        stages: The plan's stages in order, each with `name`, `needs` and whatever the node
            shows (status, cached, duration); a need that is not a stage of the plan is ignored.
    """
    names = [s["name"] for s in stages]
    needs = {s["name"]: [n for n in dict.fromkeys(s.get("needs") or []) if n in names]
             for s in stages}
    order = {name: i for i, name in enumerate(names)}
    sorter = TopologicalSorter(needs)
    sorter.prepare()
    columns: list[list[str]] = []
    while sorter.is_active():  # one generation at a time: what is ready once the last is done
        generation = sorted(sorter.get_ready(), key=order.__getitem__)
        columns.append(generation)
        sorter.done(*generation)
    upstream: dict[str, set[str]] = {}  # every stage a stage depends on, directly or not
    for generation in columns:
        for name in generation:
            upstream[name] = set().union(*({n, *upstream[n]} for n in needs[name]))
    nodes: dict[str, dict[str, Any]] = {}
    for col, generation in enumerate(columns):
        for row, name in enumerate(generation):
            nodes[name] = {"x": PAD + col * (NODE_W + GAP_X), "y": PAD + row * (NODE_H + GAP_Y)}
    by_name = {s["name"]: s for s in stages}
    edges = [{"x1": nodes[a]["x"] + NODE_W, "y1": nodes[a]["y"] + NODE_H / 2,
              "x2": nodes[b]["x"], "y2": nodes[b]["y"] + NODE_H / 2}
             for b in names for a in needs[b]
             # base→eval via sft is not drawn: another need of eval already depends on base
             if not any(a in upstream[other] for other in needs[b] if other != a)]
    rows = max((len(g) for g in columns), default=0)
    return {
        "width": PAD * 2 + len(columns) * (NODE_W + GAP_X) - GAP_X,
        "height": PAD * 2 + rows * (NODE_H + GAP_Y) - GAP_Y,
        "node_w": NODE_W, "node_h": NODE_H,
        "nodes": [{**by_name[name], **nodes[name]} for name in names],
        "edges": edges,
    }
