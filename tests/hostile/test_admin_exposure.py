"""The admin listener is never open to the network by accident.

It binds to 127.0.0.1 by default; a non-loopback ``admin.listen`` needs ``admin.token`` (checked
in constant time) unless ``admin.allow_public_without_token`` says otherwise, and both ``check``
and ``serve`` refuse such a config with a ``FILE:LINE`` message.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy.config import AdminConfig, SidecarConfig, load_config

REPO = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, admin: dict[str, object]) -> Path:
    path = tmp_path / "sidecar.yaml"
    config = {"listen": "127.0.0.1:0", "upstream": {"url": "http://127.0.0.1:9"}, "admin": admin}
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def run(command: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", command, "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_admin_listens_on_loopback_by_default() -> None:
    assert AdminConfig().listen == "127.0.0.1:9901"
    assert SidecarConfig.model_validate({"upstream": {"url": "http://a"}}).admin.token == ""


@pytest.mark.parametrize("listen", ["0.0.0.0:9901", "[::]:9901", ":9901", "10.1.2.3:9901",
                                    "admin.example:9901"])  # fmt: skip
def test_check_refuses_a_public_admin_without_a_token_at_its_line(
    tmp_path: Path, listen: str
) -> None:
    config = write_config(tmp_path, {"listen": listen})
    result = run("check", config)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        f"{config}:2: admin.listen: listen {listen!r} is not a loopback"
    )
    assert "admin.token" in result.stderr


def test_serve_refuses_a_public_admin_without_a_token_before_listening(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"listen": "0.0.0.0:9901"})
    result = run("serve", config)
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"{config}:2: admin.listen: listen '0.0.0.0:9901' is not a loopback"
    )
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stdout


@pytest.mark.parametrize(
    "admin",
    [
        {"listen": "0.0.0.0:9901", "token": "s3cret"},
        {"listen": "0.0.0.0:9901", "allow_public_without_token": True},
        {"listen": "127.0.0.1:9901"},
        {"listen": "127.8.9.10:9901"},
        {"listen": "[::1]:9901"},
        {"listen": "localhost:9901"},
    ],
    ids=["token", "explicitly-allowed", "loopback", "loopback-net", "ipv6-loopback", "localhost"],
)
def test_token_opt_out_or_loopback_is_accepted(tmp_path: Path, admin: dict[str, object]) -> None:
    loaded = load_config(write_config(tmp_path, admin))
    assert loaded.config.admin.listen == admin["listen"]
