"""Chart.js configurations (plain JSON: no functions) for the report pages."""

from __future__ import annotations

from typing import Any

_BASE_OPTIONS: dict[str, Any] = {
    "animation": False, "responsive": True, "maintainAspectRatio": False,
    "plugins": {"legend": {"position": "bottom", "labels": {"boxWidth": 12}}},
}


def _options(x_title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    scales = {"x": {"title": {"display": True, "text": x_title}},
              "y": {"title": {"display": True, "text": y_title}}}
    for axis, settings in extra.pop("scales", {}).items():
        scales[axis].update(settings)
    return {**_BASE_OPTIONS, "scales": scales, **extra}


def bars(labels: list[str], series: dict[str, list[Any]], x_title: str, y_title: str,
         stacked: bool = False) -> dict[str, Any]:
    """A bar chart: one dataset per series, one bar group per label."""
    scales = {"x": {"stacked": stacked}, "y": {"stacked": stacked}} if stacked else {}
    return {"type": "bar",
            "data": {"labels": labels,
                     "datasets": [{"label": name, "data": values}
                                  for name, values in series.items()]},
            "options": _options(x_title, y_title, scales=scales)}


def lines(series: dict[str, list[tuple[float, float]]], x_title: str, y_title: str,
          log_x: bool = False, points: bool = False) -> dict[str, Any]:
    """A line chart of (x, y) points on a linear (or logarithmic) x axis, one line per series."""
    return {"type": "line",
            "data": {"datasets": [{"label": name, "data": [{"x": x, "y": y} for x, y in pts],
                                   "pointRadius": 3 if points else 0, "borderWidth": 1.5}
                                  for name, pts in series.items()]},
            "options": _options(x_title, y_title, scales={
                "x": {"type": "logarithmic" if log_x else "linear"}})}


def categories(labels: list[str], series: dict[str, list[float | None]], x_title: str,
               y_title: str) -> dict[str, Any]:
    """A line chart over named x values (a swept option such as lora=r8,r16), points marked."""
    return {"type": "line",
            "data": {"labels": labels,
                     "datasets": [{"label": name, "data": values, "pointRadius": 4,
                                   "spanGaps": True} for name, values in series.items()]},
            "options": _options(x_title, y_title)}
