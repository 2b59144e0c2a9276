"""Messages, warnings and errors said the same way by every command and API: found in review round 19 (angle:
messages)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sparsekit.cli import main


@pytest.mark.parametrize(
    "args", [["recipes", "--json=1"], ["recipes", "--json=true"], ["validate", "--json=x", "r.yaml"]]
)
def test_json_given_a_value_still_prints_the_json_error_document(args: list[str]) -> None:
    # `--json=1` is a usage error (the flag takes no value), but the script that wrote it reads stdout as JSON:
    # every other usage error under --json prints {"error", "exit_code"}, this one printed nothing on stdout.
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == 2 and "'--json' does not take a value" in doc["error"]


def test_json_after_double_dash_is_an_argument_not_the_flag() -> None:
    result = CliRunner().invoke(main, ["recipes", "--bogus", "--", "--json"])
    assert result.exit_code == 2 and result.stdout == ""
