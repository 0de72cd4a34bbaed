"""Configuration: defaults, parsing, and start-up errors that name the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from asrd.config import ConfigError, load_settings
from asrd.docs import env_table


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.host == "*" and settings.port == 8000
    assert settings.batch_size is None and settings.chunk_length_s == 30  # 16 GPU, 6 CPU
    assert settings.device == "auto" and settings.compute_type == "auto"
    assert settings.cpu_threads >= 1
    assert settings.local_file_dirs == []
    assert settings.flash_attention_2 is False


def test_values_are_parsed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("STRIDE_LENGTH_S", "2.5")  # the seed's int() crashed on this
    monkeypatch.setenv("CHUNK_LENGTH_S", "20")
    monkeypatch.setenv("FLASH_ATTENTION_2", "1")
    monkeypatch.setenv("COMPUTE_TYPE", "FLOAT32")
    monkeypatch.setenv("LOCAL_FILE_DIRS", f"{tmp_path}/a, {tmp_path}/b/../b")
    monkeypatch.setenv("log_level", "debug")
    settings = load_settings()
    assert settings.port == 9000 and settings.stride_length_s == 2.5
    assert settings.chunk_length_s == 20 and settings.flash_attention_2 is True
    assert settings.compute_type == "float32" and settings.log_level == "DEBUG"
    assert settings.local_file_dirs == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]


@pytest.mark.parametrize(
    "name,value",
    [
        ("PORT", "http"),
        ("PORT", "70000"),
        ("BATCH_SIZE", "0"),
        ("CHUNK_LENGTH_S", "45"),
        ("STRIDE_LENGTH_S", "-1"),
        ("MAX_NEW_TOKENS", "0"),
        ("DEVICE", "tpu"),
        ("COMPUTE_TYPE", "int3"),
        ("CPU_THREADS", "0"),
        ("FLASH_ATTENTION_2", "maybe"),
        ("MODEL_ID", "/no/such/model/dir"),
        ("MODEL_ID", " "),
        ("LOCAL_FILE_DIRS", "relative/dir"),
        ("LOCAL_FILE_DIRS", "/no/such/dir"),
        ("MAX_UPLOAD_MB", "-5"),
        ("MAX_AUDIO_S", "0"),
        ("URL_READ_TIMEOUT_S", "soon"),
        ("LOG_LEVEL", "chatty"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    assert f"{name}:" in str(excinfo.value)


def test_serve_exits_with_a_clear_message_on_bad_config() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "asrd", "serve"],
        env={"PATH": "/usr/bin:/bin", "BATCH_SIZE": "lots", "PORT": "-1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "BATCH_SIZE" in result.stderr and "'lots'" in result.stderr
    assert "PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_env_table_lists_every_setting() -> None:
    table = env_table()
    names = "HOST PORT MODEL_ID CACHE_DIR BATCH_SIZE CHUNK_LENGTH_S STRIDE_LENGTH_S MAX_NEW_TOKENS"
    names += " FLASH_ATTENTION_2 DEVICE COMPUTE_TYPE CPU_THREADS LOCAL_FILE_DIRS MAX_UPLOAD_MB"
    for name in (names + " MAX_AUDIO_S").split():
        assert f"| `{name}` |" in table


def test_documented_env_table_is_current() -> None:
    page = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    assert env_table() in page, "docs/configuration.md's table is stale: run `asrd env-table`"


def test_the_second_seeds_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """whisper_api's names: LISTEN and LOG_ROTATION win over HOST and LOG_ROTATION_WHEN,
    LOG_AUTHORIZED_MAILS adds to AUTHORIZED_MAILS, MAX_MODEL takes `turbo`."""
    monkeypatch.setenv("HOST", "*")
    monkeypatch.setenv("LISTEN", "127.0.0.1")
    monkeypatch.setenv("LOG_ROTATION_WHEN", "H")
    monkeypatch.setenv("LOG_ROTATION", "d")
    monkeypatch.setenv("AUTHORIZED_MAILS", "a@example.org")
    monkeypatch.setenv("LOG_AUTHORIZED_MAILS", "B@example.org a@example.org")
    monkeypatch.setenv("MAX_MODEL", "turbo")
    settings = load_settings()
    assert settings.host == "127.0.0.1" and settings.log_rotation_when == "D"
    assert settings.authorized_mails == ["a@example.org", "b@example.org"]
    assert settings.max_model == "turbo"
    assert load_settings(host="::1", listen=None).host == "::1"  # `asrd serve --host` wins


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ROLE": "api"}, "ROLE=api needs QUEUE_BACKEND=redis"),
        ({"ROLE": "worker"}, "ROLE=worker needs QUEUE_BACKEND=redis"),
        ({"SYNC_VIA_WORKERS": "1"}, "SYNC_VIA_WORKERS needs QUEUE_BACKEND=redis"),
        ({"QUEUE_BACKEND": "redis"}, "REDIS_URL: needed with QUEUE_BACKEND=redis"),
        (
            {"QUEUE_BACKEND": "redis", "REDIS_URL": "http://:hunter2@h/0"},
            "must start with redis://",
        ),
        ({"REDIS_PREFIX": "a b"}, "REDIS_PREFIX:"),
    ],
)
def test_scale_out_settings_are_checked(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    assert message in str(excinfo.value)
    assert "hunter2" not in str(excinfo.value)  # a password in REDIS_URL is never echoed


def test_worker_and_no_worker_commands_need_redis() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    if "PYTHONPATH" in os.environ:  # a checkout tested without installing it
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    for command in (["worker"], ["serve", "--no-worker"]):
        result = subprocess.run(
            [sys.executable, "-m", "asrd", *command],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "needs QUEUE_BACKEND=redis" in result.stderr and "Traceback" not in result.stderr
