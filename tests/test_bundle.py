"""The bundle as a whole: metadata validates offline, the command line lists its commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_metadata_verifies_offline(tmp_path):
    """`monai.bundle verify_metadata` with the shipped schema: no download is attempted."""
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata",
         "--meta_file", str(REPO / "configs" / "metadata.json"),
         "--filepath", str(REPO / "configs" / "schema" / "meta_schema.json")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "metadata is verified with no error" in result.stdout + result.stderr


def test_metadata_fails_when_invalid(tmp_path):
    """The check can fail: a metadata file missing a required key is rejected."""
    meta = json.loads((REPO / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(bad),
         "--filepath", str(REPO / "configs" / "schema" / "meta_schema.json")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode != 0
    assert "network_data_format" in result.stdout + result.stderr


def test_metadata_versions_are_consistent():
    meta = json.loads((REPO / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    from bundle import __version__

    assert meta["version"] == __version__


def test_package_and_deploy_app_report_the_bundle_version():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    import yaml

    from bundle import __version__

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    app = yaml.safe_load((REPO / "deploy" / "app.yaml").read_text())
    assert pyproject["project"]["version"] == __version__, "pyproject.toml's version differs from bundle.__version__"
    assert str(app["application"]["version"]) == __version__, "deploy/app.yaml's version differs from bundle.__version__"


@pytest.mark.parametrize("command", [[str(Path(sys.executable).parent / "ctv2v")], [sys.executable, "-m", "bundle"]])
def test_help_lists_subcommands(command):
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for sub in ("info", "demo-data", "simulate", "datalist"):
        assert sub in result.stdout
