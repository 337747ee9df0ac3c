"""Settings read from the environment: the database URL as libpq takes several hosts."""

import pytest

from app.settings import Settings, SettingsError, multi_host


@pytest.mark.parametrize("given, expected", [
    ("postgresql+psycopg://rpm:pw@db1:5432,db2:5433/rpm?target_session_attrs=read-write",
     "postgresql+psycopg://rpm:pw@/rpm?host=db1:5432&host=db2:5433&target_session_attrs=read-write"),
    ("postgresql+psycopg://db1,db2/rpm", "postgresql+psycopg:///rpm?host=db1&host=db2"),
    ("postgresql+psycopg://rpm@db1:5432/rpm", "postgresql+psycopg://rpm@db1:5432/rpm"),  # one host: as it is
    ("postgresql+psycopg://rpm@/rpm?host=/run/postgresql", "postgresql+psycopg://rpm@/rpm?host=/run/postgresql"),
])
def test_several_hosts_are_given_as_sqlalchemy_takes_them(given, expected):
    assert multi_host(given) == expected


def test_a_plain_postgresql_url_with_several_hosts_is_psycopgs_with_one_host_parameter_each():
    url = Settings(database_url="postgresql://rpm@db1:5432,db2:5432/rpm?target_session_attrs=read-write")
    assert url.resolved_database_url("/nowhere") == (
        "postgresql+psycopg://rpm@/rpm?host=db1:5432&host=db2:5432&target_session_attrs=read-write")


def test_every_wrong_variable_is_named_at_once_and_an_empty_one_is_unset(monkeypatch):
    from app.settings import Settings, SettingsError

    monkeypatch.setenv("RPM_PORT", "abc")
    monkeypatch.setenv("RPM_THREADS", "0")
    monkeypatch.setenv("RPM_WORKERS", "")
    with pytest.raises(SettingsError) as refused:
        Settings.from_env()
    assert "RPM_PORT='abc': Not a valid integer." in str(refused.value)
    assert "RPM_THREADS='0'" in str(refused.value) and "RPM_WORKERS" not in str(refused.value)


@pytest.mark.parametrize(("given", "expected"), [("false", False), ("0", False), ("no", False), ("OFF", False),
                                                 ("true", True), ("1", True), ("", True)])
def test_a_switch_reads_as_a_boolean_not_as_anything_but_zero(monkeypatch, given, expected):
    from app.settings import Settings

    monkeypatch.setenv("RPM_GROUP_COMMIT", given)
    assert Settings.from_env().group_commit is expected


def test_a_log_level_is_one_of_pythons(monkeypatch):
    from app.settings import Settings, SettingsError

    monkeypatch.setenv("RPM_LOG_LEVEL", "debug")
    assert Settings.from_env().log_level == "DEBUG"
    monkeypatch.setenv("RPM_LOG_LEVEL", "loud")
    with pytest.raises(SettingsError, match="RPM_LOG_LEVEL"):
        Settings.from_env()


@pytest.mark.parametrize("given", ["garbage", "host=db port=1 password=s3cret", "postgresql://rpm:s3cret@db:notaport/x",
                                   "mysql://rpm:s3cret@db/rpm"])
def test_a_database_url_that_is_no_postgresql_url_is_named_without_its_value(monkeypatch, given):
    monkeypatch.setenv("DATABASE_URL", given)
    with pytest.raises(SettingsError) as refused:
        Settings.from_env()
    assert "DATABASE_URL: not a PostgreSQL URL" in str(refused.value) and "s3cret" not in str(refused.value)
