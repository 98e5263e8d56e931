"""The sweep's Tune run adds none of Tune's automatic result loggers (their files are unread; the TensorBoard one
imports tensorboardX), and leaves the environment as it found it."""

from __future__ import annotations

import os

import pytest
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
from ray.tune.utils.callback import _create_default_callbacks

from harness.run.sweep import _without_tune_loggers

KEY = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
LOGGERS = (CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback)


def _loggers() -> list:
    return [c for c in _create_default_callbacks([], metric=None) if isinstance(c, LOGGERS)]


def test_tune_adds_no_result_loggers_inside_and_its_defaults_after(monkeypatch):
    monkeypatch.delenv(KEY, raising=False)
    with _without_tune_loggers():
        assert _loggers() == []
    assert KEY not in os.environ
    assert {type(c) for c in _loggers()} >= {CSVLoggerCallback, JsonLoggerCallback}  # Tune's defaults are back


@pytest.mark.parametrize("value", ["0", "1"])
def test_an_explicit_setting_is_kept(monkeypatch, value):
    monkeypatch.setenv(KEY, value)
    with _without_tune_loggers():
        assert os.environ[KEY] == value and bool(_loggers()) == (value == "0")
    assert os.environ[KEY] == value
