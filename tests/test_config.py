"""Configuration precedence: defaults < TOML file < environment < flags; and the CLI's help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from amqpbroker.cli import build_parser
from amqpbroker.config import Config, load_config


def test_defaults_match_rabbitmq() -> None:
    config = load_config(env={})
    assert (config.port, config.heartbeat, config.frame_max, config.channel_max) == (5672, 60, 131072, 2047)
    assert config.host is None  # every interface
    assert config.default_user == "guest" and config.loopback_user_names() == ("guest",)


def test_file_then_environment_then_flags(tmp_path) -> None:
    file = tmp_path / "broker.toml"
    file.write_text('port = 6000\nheartbeat = 30\ndata-dir = "/from/file"\nlog_level = "debug"\n')
    env = {"AMQPBROKER_PORT": "7000", "AMQPBROKER_DATA_DIR": "/from/env"}
    config = load_config(str(file), env=env, data_dir="/from/flag")
    assert config == Config(port=7000, heartbeat=30, data_dir="/from/flag", log_level="debug")


def test_unknown_file_setting_is_an_error(tmp_path) -> None:
    file = tmp_path / "broker.toml"
    file.write_text("prot = 1\n")
    with pytest.raises(ValueError, match="prot"):
        load_config(str(file), env={})


def test_environment_booleans_and_empty_host() -> None:
    config = load_config(env={"AMQPBROKER_LOOPBACK_USERS": "false", "AMQPBROKER_HOST": ""})
    assert config.loopback_user_names() == () and config.host is None


def test_help_explains_each_option() -> None:
    text = build_parser().format_help()
    for option, env in (("--host", "AMQPBROKER_HOST"), ("--port", "AMQPBROKER_PORT"),
                        ("--data-dir", "AMQPBROKER_DATA_DIR")):
        assert option in text and env in text


def test_module_entry_point_prints_help() -> None:
    result = subprocess.run([sys.executable, "-m", "amqpbroker", "--help"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0
    assert "--data-dir" in result.stdout


def test_loopback_users_is_a_list_of_names_as_rabbitmq_s() -> None:
    assert load_config(env={"AMQPBROKER_LOOPBACK_USERS": "guest, ops"}).loopback_user_names() == ("guest", "ops")
    assert load_config(env={"AMQPBROKER_LOOPBACK_USERS": "none"}).loopback_user_names() == ()
    assert load_config(env={"AMQPBROKER_LOOPBACK_USERS": "true", "AMQPBROKER_DEFAULT_USER": "admin"}
                       ).loopback_user_names() == ("admin",)


def test_the_docker_image_s_default_user_variables_are_rabbitmq_s() -> None:
    config = load_config(env={"AMQPBROKER_DEFAULT_USER": "admin", "AMQPBROKER_DEFAULT_PASS": "s3cret",
                              "AMQPBROKER_DEFAULT_VHOST": "prod"})
    assert (config.default_user, config.default_password, config.default_vhost) == ("admin", "s3cret", "prod")


def test_the_http_listeners_take_their_own_host_flags(monkeypatch) -> None:
    from amqpbroker import cli
    from amqpbroker.server import lifecycle
    seen = []
    monkeypatch.setattr(lifecycle, "run", lambda config: seen.append(config) or 0)
    assert cli.main(["--host", "127.0.0.1", "--management-host", "0.0.0.0", "--prometheus-host", "127.0.0.2"]) == 0
    assert (seen[0].host, seen[0].management_host, seen[0].prometheus_host) == ("127.0.0.1", "0.0.0.0", "127.0.0.2")
