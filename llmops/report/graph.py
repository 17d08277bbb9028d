"""Lays out a plan's stages as a graph for the report's SVG: columns by networkx's topological
generations (a stage sits right of every stage it needs), an edge from each need to its stage
unless a path through other stages already joins them (the transitive reduction; the stage table
lists every need)."""

from __future__ import annotations

from typing import Any

NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 150, 46, 46, 14, 8


def layout(stages: list[dict[str, Any]]) -> dict[str, Any]:
    """Returns {width, height, nodes, edges} for the template to draw.

    Args:
        stages: The plan's stages in order, each with `name`, `needs` and whatever the node
            shows (status, cached, duration); a need that is not a stage of the plan is ignored.
    """
    import networkx as nx

    graph = nx.DiGraph()
    names = [s["name"] for s in stages]
    graph.add_nodes_from(names)
    graph.add_edges_from((need, s["name"]) for s in stages for need in s.get("needs") or []
                         if need in graph)
    order = {name: i for i, name in enumerate(names)}
    nodes: dict[str, dict[str, Any]] = {}
    columns = list(nx.topological_generations(graph))
    for col, generation in enumerate(columns):
        for row, name in enumerate(sorted(generation, key=order.__getitem__)):
            nodes[name] = {"x": PAD + col * (NODE_W + GAP_X), "y": PAD + row * (NODE_H + GAP_Y)}
    by_name = {s["name"]: s for s in stages}
    edges = [{"x1": nodes[a]["x"] + NODE_W, "y1": nodes[a]["y"] + NODE_H / 2,
              "x2": nodes[b]["x"], "y2": nodes[b]["y"] + NODE_H / 2}
             for a, b in nx.transitive_reduction(graph).edges]  # base→eval via sft: not drawn
    rows = max((len(g) for g in columns), default=0)
    return {
        "width": PAD * 2 + len(columns) * (NODE_W + GAP_X) - GAP_X,
        "height": PAD * 2 + rows * (NODE_H + GAP_Y) - GAP_Y,
        "node_w": NODE_W, "node_h": NODE_H,
        "nodes": [{**by_name[name], **nodes[name]} for name in names],
        "edges": edges,
    }
