"""`invoke build`: a real npm + Vite build, skipped when nothing changed, safe when it fails."""

import os
import re
import shutil
import subprocess
import sys

import pytest
from invoke import Context, Exit

from tasks import ns

from tasks.build import build_frontend, read_manifest
from tests.support import ROOT


@pytest.fixture()
def frontend(tmp_path):
    d = tmp_path / "frontend"
    top = str(ROOT / "frontend")
    shutil.copytree(ROOT / "frontend", d, symlinks=True,
                    ignore=lambda where, names: [n for n in names if where == top and n in ("dist", ".dist-build", ".dist-old")])
    return d


def task_config():
    """The configuration the tasks run with (the collection's: no stdin for commands)."""
    from invoke import Config

    config = Config()
    config.load_collection(ns.configuration())
    return config


def asset_names(dist):
    html = (dist / "index.html").read_text()
    return re.findall(r'/assets/([\w.-]+\.(?:js|css))', html)


@pytest.mark.integration
def test_build_skips_when_unchanged_and_rebuilds_on_change(frontend, capsys):
    c = Context(config=task_config())
    assert build_frontend(c, frontend) is True
    dist = frontend / "dist"
    names = asset_names(dist)
    assert any(n.endswith(".js") for n in names)
    for name in names:
        assert (dist / "assets" / name).is_file()
    manifest = read_manifest(dist)
    assert set(manifest) >= {"git_commit", "built_at", "source_sha256", "output_sha256", "files"}
    # nginx's Content-Security-Policy allows no inline code (nginx/app-locations.conf): the built
    # page loads its script and stylesheet from files, from this same host, and has none inline.
    html = (dist / "index.html").read_text()
    inline = r"<script(?![^>]*\bsrc=)[^>]*>|<style|\sstyle=|\son[a-z]+=|javascript:"
    assert not re.search(inline, html), html
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", html), html

    capsys.readouterr()
    assert build_frontend(c, frontend) is False
    assert "up to date" in capsys.readouterr().out

    app = frontend / "src" / "App.jsx"
    app.write_text(app.read_text().replace("<h1>Task Tracker</h1>", "<h1>Task Tracker (changed)</h1>"))
    assert build_frontend(c, frontend) is True
    new_js = [n for n in asset_names(dist) if n.endswith(".js")]
    assert new_js != [n for n in names if n.endswith(".js")]
    assert "Task Tracker (changed)" in (dist / "assets" / new_js[0]).read_text()


@pytest.mark.integration
def test_failed_build_keeps_previous_dist(frontend):
    c = Context(config=task_config())
    build_frontend(c, frontend)
    before = (frontend / "dist" / "index.html").read_text()
    (frontend / "src" / "App.jsx").write_text("export default function App( {\n")
    with pytest.raises(Exit) as err:
        build_frontend(c, frontend)
    assert "The Vite build failed" in str(err.value.message)
    assert (frontend / "dist" / "index.html").read_text() == before
    assert not (frontend / ".dist-build").exists()


def test_missing_npm_gives_a_clear_error(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "invoke", "build", "--force"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert "node and npm not found on PATH" in out.stderr
    assert "Install Node.js 20" in out.stderr
