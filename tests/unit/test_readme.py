"""The README's configuration tables name every environment variable RPM reads and every risk parameter."""

import dataclasses
import re
from pathlib import Path

from app.risk.config import RPMConfig

ROOT = Path(__file__).resolve().parents[2]
# switches that exist for the tests alone (they disable a lock to show the test can fail): not for users
TEST_ONLY = re.compile(r"RPM_TEST_UNSAFE_")
# names that look like variables and are not a user's: a Flask config key; what `rpm serve` hands its own workers
INTERNAL = {"RPM_SETTINGS", "RPM_EMBEDDED_DATA", "RPM_CREATED_PROMETHEUS_DIR", "RPM_BANNER"}


def configuration_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]


def read_variables() -> set[str]:
    found = set()
    for source in (ROOT / "app").rglob("*.py"):
        found |= set(re.findall(r"""["'](RPM_[A-Z0-9_]+|DATABASE_(?:[A-Z]+_)?URL|PROMETHEUS_MULTIPROC_DIR)["']""",
                                source.read_text()))
    return {name for name in found if not TEST_ONLY.match(name)} - INTERNAL


def test_every_environment_variable_rpm_reads_is_in_the_readme():
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", configuration_section()))
    variables = read_variables()
    assert {"DATABASE_URL", "RPM_PORT", "RPM_LOG_LEVEL", "RPM_AUTH_CACHE_SECONDS"} <= variables
    assert variables - documented == set()


def test_every_risk_parameter_is_in_the_readme():
    documented = set(re.findall(r"`([a-z_]+)`", configuration_section()))
    parameters = {f.name for f in dataclasses.fields(RPMConfig)}
    assert "max_intents_per_second" in parameters
    assert parameters - documented == set()
