"""The CLI builds its config models without pydantic's plugins, and leaves them on for the rest.

`python -m llmops` sets pydantic's own switch (PYDANTIC_DISABLE_PLUGINS=__all__) while the
pre-flight builds the config models, and meanwhile stands in for pydantic's plugin loader, whose
import alone reads importlib.metadata. Checked in a fresh interpreter with a real plugin installed
through an entry point, as pydantic finds one.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

PLUGIN = '''\
SEEN = []


class Plugin:
    def new_schema_validator(self, schema, schema_type, schema_type_path, schema_kind, config,
                             plugin_settings):
        SEEN.append(schema_type.__name__)
        return None, None, None


plugin = Plugin()
'''

SCRIPT = '''\
import os, sys
import spy_plugin
from pydantic import BaseModel
from llmops.cli import _PLUGIN_LOADER, _pydantic_plugins_off

with _pydantic_plugins_off():
    stand_in = sys.modules[_PLUGIN_LOADER]
    class Inside(BaseModel):
        x: int = 1
    assert Inside(x=2).x == 2
    assert os.environ["PYDANTIC_DISABLE_PLUGINS"] == "__all__"
    assert "importlib.metadata" not in sys.modules, "the stand-in imported importlib.metadata"
    assert stand_in.get_plugins() == ()
assert _PLUGIN_LOADER not in sys.modules and "PYDANTIC_DISABLE_PLUGINS" not in os.environ

# A name a later pydantic might import from its loader: pydantic's own module answers, and
# takes the stand-in's place.
with _pydantic_plugins_off():
    stand_in = sys.modules[_PLUGIN_LOADER]
    entry_points = stand_in.entry_points
    own = sys.modules[_PLUGIN_LOADER]
    assert own is not stand_in and own.entry_points is entry_points
assert sys.modules[_PLUGIN_LOADER] is own
with _pydantic_plugins_off():
    assert sys.modules[_PLUGIN_LOADER] is own  # loaded: no stand-in replaces it

class Outside(BaseModel):
    x: int = 1
assert spy_plugin.SEEN == ["Outside"], spy_plugin.SEEN  # pydantic's own loader found the plugin
print("ok")
'''


def _run(tmp_path, script: str, env_extra: dict[str, str] | None = None):
    (tmp_path / "spy_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "spy_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: spy-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pydantic]\nspy = spy_plugin:plugin\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)


def test_config_models_build_without_plugins_and_later_models_with_them(tmp_path):
    r = _run(tmp_path, SCRIPT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "ok"


def test_a_switch_the_user_set_is_left_alone(tmp_path):
    script = textwrap.dedent('''\
        import os, sys
        import spy_plugin
        from pydantic import BaseModel
        from llmops.cli import _PLUGIN_LOADER, _pydantic_plugins_off
        with _pydantic_plugins_off():
            assert _PLUGIN_LOADER not in sys.modules  # no stand-in: pydantic's own rules
            class Inside(BaseModel):
                x: int = 1
            assert os.environ["PYDANTIC_DISABLE_PLUGINS"] == "other"
        assert os.environ["PYDANTIC_DISABLE_PLUGINS"] == "other"
        assert spy_plugin.SEEN == ["Inside"], spy_plugin.SEEN  # only "other" is disabled
        print("ok")
        ''')
    r = _run(tmp_path, script, {"PYDANTIC_DISABLE_PLUGINS": "other"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "ok"
