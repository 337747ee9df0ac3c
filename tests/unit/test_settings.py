"""Settings read from the environment: the database URL as libpq takes several hosts."""

import pytest

from app.settings import Settings, multi_host


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
