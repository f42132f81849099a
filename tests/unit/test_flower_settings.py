"""DUSTPAN_FLOWER_USER / DUSTPAN_FLOWER_PASSWORD: read from the environment, never echoed back."""

from __future__ import annotations

import pytest

from workers.settings import SettingsError, read_settings


def test_flower_credentials_come_from_the_environment_and_the_password_stays_hidden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DUSTPAN_FLOWER_USER", "operator")
    monkeypatch.setenv("DUSTPAN_FLOWER_PASSWORD", "s3cret-pass")
    settings = read_settings()
    assert settings.flower_user == "operator"
    assert settings.flower_password is not None
    assert settings.flower_password.get_secret_value() == "s3cret-pass"
    assert "s3cret-pass" not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DUSTPAN_FLOWER_PASSWORD", "has,comma"), ("DUSTPAN_FLOWER_USER", "a:b"), ("DUSTPAN_FLOWER_USER", "a,b")],
)
def test_a_credential_flower_would_split_is_refused_naming_the_setting_not_the_value(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as refused:
        read_settings()
    assert str(refused.value).startswith(f"bad setting {variable}:")
    assert value not in str(refused.value)
