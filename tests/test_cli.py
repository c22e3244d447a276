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


def test_version(capsys):
    from fastbert import __version__

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"fastbert {__version__}"


def test_help_and_usage_errors_import_neither_torch_nor_transformers():
    """What keeps ``fastbert --help`` instant: the package loads its names on first use."""
    import subprocess
    import sys

    probe = ("import sys\nfrom fastbert import cli\n"
             "for argv in (['--help'], ['no-such-command']):\n"
             "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'triton') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
    assert "``" not in done.stdout  # no reST markup in the help


def test_package_names_load_on_first_use():
    import fastbert

    for name in fastbert.__all__:
        assert getattr(fastbert, name) is not None
    assert callable(fastbert.warmup) and callable(fastbert.optimize)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fastbert.nope  # noqa: B018
