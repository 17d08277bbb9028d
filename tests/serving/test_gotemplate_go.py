"""Go's own text/template (tools/gotemplate, built with the Go toolchain) renders the Modelfile
templates exactly as llmops's interpreter (llmops/serving/gotemplate.py) does, on Ollama's template
data (collated messages, tool calls, tools as Ollama's api types print them) and function set.

Skips with the reason where `go` is not installed; fails instead under LLMOPS_REQUIRE_GO=1 (CI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from llmops.data.task_api import TOOL_SCHEMAS
from llmops.serving.modelfile import (
    GO_TEMPLATES,
    SAMPLE_CONVERSATIONS,
    SAMPLE_TOOLS,
    TOOL_CONVERSATIONS,
    render_go,
)

SOURCE = Path(__file__).resolve().parents[2] / "tools" / "gotemplate"


@pytest.fixture(scope="module")
def go_render(tmp_path_factory):
    """Returns a function: cases [(template, messages, tools)] -> Go's renders."""
    if shutil.which("go") is None:
        reason = "Go is not installed (apt-get install golang-go): Go's text/template not checked"
        if os.environ.get("LLMOPS_REQUIRE_GO") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("gotemplate")
    # Offline and standard library only: no module download, a private build cache.
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOPROXY": "off", "GOCACHE": str(out / "cache"),
           "GOPATH": str(out / "gopath"), "CGO_ENABLED": "0"}
    r = subprocess.run(["go", "build", "-o", str(out / "gotemplate"), "."], cwd=SOURCE, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr

    def render(cases: list[tuple[str, list[dict], list[dict] | None]]) -> list[str]:
        payload = [{"template": t, "messages": m, "tools": tools or []} for t, m, tools in cases]
        r = subprocess.run([str(out / "gotemplate")], input=json.dumps(payload),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    return render


def _cases() -> list[tuple[str, str, list[dict], list[dict] | None]]:
    cases = []
    for family, template in GO_TEMPLATES.items():
        cases += [(family, template, conv, None) for conv in SAMPLE_CONVERSATIONS]
        cases += [(family, template, conv, SAMPLE_TOOLS) for conv in TOOL_CONVERSATIONS]
        # The data's own tool schemas: keywords Ollama's api types drop (pattern, minimum, ...).
        cases.append((family, template, TOOL_CONVERSATIONS[1], TOOL_SCHEMAS))
        # Two system messages and two user turns in a row: Ollama collates them.
        cases.append((family, template, [
            {"role": "system", "content": "A."}, {"role": "system", "content": "B."},
            {"role": "user", "content": "x <b> & y"}, {"role": "user", "content": "z"}], None))
    return cases


def test_go_text_template_renders_every_family_byte_for_byte_like_the_interpreter(go_render):
    cases = _cases()
    got = go_render([(t, conv, tools) for _, t, conv, tools in cases])
    assert len(got) == len(cases) == len(GO_TEMPLATES) * (len(SAMPLE_CONVERSATIONS)
                                                         + len(TOOL_CONVERSATIONS) + 2)
    for (family, template, conv, tools), go in zip(cases, got, strict=True):
        assert render_go(template, conv, tools=tools) == go, (family, conv, tools)
    # The tool renders print Ollama's api types: calls and schemas as compact JSON.
    assert any('"arguments":{"due":"2025-03-14","title":"buy milk"}' in g for g in got)
    assert any('"task_id":{"type":"integer","description":"The task\'s number."}' in g for g in got)
    assert not any('"pattern"' in g for g in got)


def test_go_reports_what_the_interpreter_refuses_as_an_error(go_render):
    """A template error in Go is a TemplateError in the interpreter (no silent output)."""
    from llmops.serving.gotemplate import TemplateError

    with pytest.raises(AssertionError, match="missing value for command|unexpected EOF"):
        go_render([("{{ if .Messages }}open", [{"role": "user", "content": "x"}], None)])
    with pytest.raises(TemplateError):
        render_go("{{ if .Messages }}open", [{"role": "user", "content": "x"}])
