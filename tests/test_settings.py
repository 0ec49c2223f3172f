"""The settings registry: docs/settings.md lists exactly the declared variables, one boolean grammar, typed reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine import settings
from engine.bench.machine import ENVIRONMENT, THREAD_AND_DEVICE_VARIABLES
from htkernels.envs import FALSE_WORDS, TRUE_WORDS, Setting, flag, parse_flag

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "settings.md"


def _table_names(section: str) -> list:
    """The variable names in the first column of the table under the `## section` heading of docs/settings.md."""
    text = DOC.read_text()
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"docs/settings.md has no section '## {section}'"
    return re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", match.group(1), re.MULTILINE)


def test_doc_lists_exactly_the_declared_settings():
    documented = _table_names("Runtime settings")
    declared = [setting.name for setting in settings.SETTINGS]
    assert len(documented) == len(set(documented)), f"a setting is listed twice: {documented}"
    assert sorted(documented) == sorted(declared)


def test_doc_lists_exactly_the_build_switches_of_setup_py():
    read_by_setup = set(re.findall(r"""os\.environ\.get\(["'](HTK_[A-Z0-9_]+)["']""", (REPO / "setup.py").read_text()))
    assert read_by_setup, "setup.py reads no HTK_ switch: the pattern of this test is out of date"
    assert sorted(_table_names("Build switches")) == sorted(read_by_setup)


def test_setting_names_are_unique_and_documented_in_code():
    names = [setting.name for setting in settings.SETTINGS]
    assert len(names) == len(set(names))
    assert all(setting.doc.strip() for setting in settings.SETTINGS)


def test_bench_environment_is_the_registry_plus_the_libraries_variables():
    assert set(ENVIRONMENT) == {setting.name for setting in settings.SETTINGS} | set(THREAD_AND_DEVICE_VARIABLES)
    assert len(ENVIRONMENT) == len(set(ENVIRONMENT))


@pytest.mark.parametrize("text", [*TRUE_WORDS, "TRUE", " Yes ", "On"])
def test_flag_grammar_true_words(text):
    assert parse_flag(text) is True


@pytest.mark.parametrize("text", [*FALSE_WORDS, "FALSE", " no ", "Off", "   "])
def test_flag_grammar_false_words(text):
    assert parse_flag(text) is False


@pytest.mark.parametrize("text", ["2", "maybe", "enabled", "-1", "1.0"])
def test_flag_grammar_refuses_other_words(text):
    with pytest.raises(ValueError, match="not a boolean"):
        parse_flag(text, "HTK_EXAMPLE")


def test_setting_get_reads_the_environment_at_each_call(monkeypatch):
    setting = flag("HT_TEST_SETTING_FLAG", True, "a test flag")
    monkeypatch.delenv(setting.name, raising=False)
    assert setting.get() is True and not setting.is_set()
    monkeypatch.setenv(setting.name, "off")
    assert setting.get() is False and setting.is_set()
    monkeypatch.setenv(setting.name, "YES")
    assert setting.get() is True


def test_setting_get_names_the_variable_when_its_value_is_bad(monkeypatch):
    monkeypatch.setenv("HT_ENGINE_COMPILE", "maybe")
    with pytest.raises(ValueError, match=r"HT_ENGINE_COMPILE='maybe'") as raised:
        settings.COMPILE.get()
    assert "true" in str(raised.value) and "off" in str(raised.value)


def test_setting_get_wraps_a_parser_error_with_the_name(monkeypatch):
    setting = Setting("HT_TEST_SETTING_INT", int, 3, "a test integer")
    monkeypatch.setenv(setting.name, "three")
    with pytest.raises(ValueError, match="environment variable HT_TEST_SETTING_INT='three' cannot be read"):
        setting.get()
    monkeypatch.setenv(setting.name, "7")
    assert setting.get() == 7


def test_path_settings_and_cache_root(monkeypatch, tmp_path):
    monkeypatch.delenv("HT_ENGINE_CACHE", raising=False)
    assert settings.CACHE.get() is None
    assert settings.cache_root() == Path.home() / ".cache" / "ht-engine"
    monkeypatch.setenv("HT_ENGINE_CACHE", str(tmp_path))
    assert settings.cache_root() == tmp_path
    monkeypatch.setenv("HT_ENGINE_CACHE", "  ")
    assert settings.CACHE.get() is None, "a blank path means unset, not the current directory"
