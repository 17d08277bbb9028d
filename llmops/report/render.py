"""Renders a report page: a Jinja2 template with autoescaping, the vendored Chart.js and
report.js inlined, and a Content-Security-Policy that allows those scripts by hash and nothing else.

Everything a page shows that comes from a run (data rows, model answers, tool schemas, names) goes
through the template's autoescaping, or into the page's JSON block through `tojson` (which escapes
`<`, `>`, `&` and `'`); Chart.js draws it on a canvas, never as HTML. The page loads nothing: no
network, no file next to it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import os
import uuid
from importlib.resources import files
from pathlib import Path
from typing import Any

#: The file name of a run's or a sweep's report.
REPORT_FILE = "report.html"
#: The largest report written; the context builders cap rows and text so a report stays under it.
MAX_BYTES = 5 * 1024 * 1024
#: The scripts every page runs, in order (Chart.js 4.5.1 from npm, MIT: assets/chart.js.LICENSE.md).
SCRIPTS = ("chart.umd.min.js", "report.js")
STYLE = "report.css"


class ReportTooLarge(ValueError):
    """A rendered report over MAX_BYTES (nothing is written)."""


@functools.cache
def asset(name: str) -> str:
    """Returns the text of a packaged asset.

    Raises:
        ValueError: The asset could end an inline <script>/<style> early (it never should).
    """
    text = (files("llmops.report") / "assets" / name).read_text("utf-8")
    if "</script" in text.lower() or "</style" in text.lower() or "<!--" in text:
        raise ValueError(f"asset {name} holds </script, </style or <!--: it cannot be inlined")
    return text


def _sha256(text: str) -> str:
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    return f"'sha256-{digest}'"


def content_security_policy() -> str:
    """Returns the page's CSP: only the inlined scripts and style (by hash); no images, fonts,
    connections, frames or forms, no base URL."""
    scripts = " ".join(_sha256(asset(name)) for name in SCRIPTS)
    return (f"default-src 'none'; script-src {scripts}; style-src {_sha256(asset(STYLE))}; "
            "connect-src 'none'; base-uri 'none'; form-action 'none'")


def finite(value: Any) -> Any:
    """Returns value with every non-finite float (NaN, infinities) replaced by None, so the page's
    JSON block parses (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


@functools.cache
def environment() -> Any:
    """Returns the Jinja2 environment of the report templates (autoescaping always on)."""
    import jinja2

    from llmops.compiler.render import fmt_value, gate_state

    class Missing(jinja2.ChainableUndefined):
        """A field a report does not hold: renders empty, iterates as empty, calls as itself (so
        `r.criteria.items()` on a report without criteria shows nothing)."""

        def __call__(self, *args: Any, **kwargs: Any) -> Missing:
            return self

    def num(value: Any, digits: int = 3) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return fmt_value(value, digits, "–")

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("llmops.report", "templates"),
        autoescape=True, undefined=Missing, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["num"] = num
    env.filters["gate_state"] = gate_state
    env.filters["seconds"] = _seconds
    return env


def _seconds(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "–"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def render(template: str, context: dict[str, Any], charts: dict[str, Any], source: Path) -> str:
    """Renders a page: the template with context, the charts' Chart.js configs as its JSON.

    Args:
        template: The template's file name (templates/).
        context: What the template shows.
        charts: Chart.js configs by name; a `<canvas data-chart="NAME">` draws each.
        source: The folder the page describes (named in its footer).
    """
    from markupsafe import Markup

    from llmops import __version__

    return environment().get_template(template).render(
        **context, chart_names=set(charts), version=__version__, source=str(source),
        csp=content_security_policy(),
        style=Markup(asset(STYLE)),
        scripts=[Markup(asset(name)) for name in SCRIPTS],
        page_data={"charts": finite(charts)},
    )


def write(path: Path, html: str) -> Path:
    """Writes a page atomically (a temp file renamed over path).

    Raises:
        ReportTooLarge: The page is over MAX_BYTES.
    """
    data = html.encode("utf-8")
    if len(data) > MAX_BYTES:
        raise ReportTooLarge(f"{path}: the report would be {len(data) / 1e6:.1f} MB, over the "
                             f"{MAX_BYTES / 1e6:.0f} MB a report may take")
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
