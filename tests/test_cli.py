"""The ``fastbert`` console script."""

import pytest

from fastbert import cli


def test_info_reports_versions_and_backend(capsys, monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "torch")
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("fastbert", "torch", "transformers", "FASTBERT_BACKEND=torch -> torch"):
        assert word in out


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        cli.main(["no-such-command"])
