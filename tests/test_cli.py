"""The ``fastbert`` console script: its help, its usage errors, and what every command refuses up front."""

import argparse
import os
import re
import subprocess
import sys

import pytest
from _cli_run import assert_refused, fastbert

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


HELPS = [["--help"], ["info", "--help"], ["check-kernels", "--help"], ["bench", "--help"], ["finetune", "--help"]]
USAGE_ERRORS = [["no-such-command"], ["check-kernels", "--arch", "1"], ["bench", "--device", "tpu"],
                ["finetune", "--model", "m"], ["finetune", "--model", "m", "--train", "t", "--output", "o",
                                               "--epochs", "0"]]


@pytest.mark.parametrize("argv", HELPS, ids=" ".join)
def test_help_imports_neither_torch_nor_transformers(argv):
    """What keeps every --help instant (well under 2 s): torch loads only where a command runs."""
    done = fastbert(*argv)
    assert done.code == 0 and done.out.startswith("usage: fastbert") and done.imported == [], done


@pytest.mark.parametrize("argv", USAGE_ERRORS, ids=" ".join)
def test_argument_errors_are_one_line_without_torch(argv):
    done = fastbert(*argv)
    assert done.code == 2 and len(done.err.splitlines()) == 1 and "error: " in done.err, done
    assert done.imported == [], done


def _option_help(parser) -> dict:
    """option -> its entry in ``parser``'s help, the lines joined."""
    entries, current = {}, None
    for line in parser.format_help().splitlines():
        start = re.match(r"  (-[^\s,]+)", line)
        if start:
            current = start.group(1)
            entries[current] = line
        elif current and line.startswith("   "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return {option: " ".join(text.split()) for option, text in entries.items()}


def test_every_option_shows_its_default_and_flags_none():
    parsers = cli.parsers()
    assert set(parsers) == {"fastbert", "fastbert info", "fastbert check-kernels", "fastbert bench",
                            "fastbert finetune", "fastbert pretrain", "fastbert embed"}
    for prog, parser in parsers.items():
        entries = _option_help(parser)
        for action in parser._actions:
            if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            entry = entries[action.option_strings[0]]
            if action.nargs == 0 or action.required:  # flags, and options without a default
                assert "default" not in entry, (prog, entry)
            else:
                assert "(default: " in entry, (prog, entry)
        assert "(default: None)" not in parser.format_help() and "(default: False)" not in parser.format_help()


def test_no_rest_markup_in_any_help():
    for prog, parser in cli.parsers().items():
        text = parser.format_help()
        assert not re.search(r"``|:(func|class|mod|meth|attr|data|obj|exc|ref):", text), (prog, text)


def test_info_refuses_an_unknown_backend_in_one_line():
    done = fastbert("info", env={"FASTBERT_BACKEND": "tirton"})
    assert_refused(done, "FASTBERT_BACKEND='tirton'", "auto, triton, torch")


def test_check_kernels_without_triton_says_so_before_any_work(monkeypatch, capsys):
    import fastbert.check_kernels

    monkeypatch.setitem(sys.modules, "triton", None)  # its import now fails
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(fastbert.check_kernels, "check_kernels", lambda *a, **k: pytest.fail("compiled"))
    assert cli.main(["check-kernels", "--arch", "80"]) == 2
    err = capsys.readouterr().err
    assert err == ("fastbert check-kernels: error: triton is not installed (check-kernels compiles the kernels "
                   "with it)\n")


def test_package_names_load_on_first_use():
    import fastbert

    for name in fastbert.__all__:
        assert getattr(fastbert, name) is not None
    assert callable(fastbert.warmup) and callable(fastbert.optimize)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fastbert.nope  # noqa: B018


def test_a_hub_name_in_the_cache_passes_offline(tmp_path):
    """Offline, a Hub name is refused only when the cache lacks it (here a cache made by hand)."""
    snapshot = tmp_path / "models--org--small-bert" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--org--small-bert" / "refs").mkdir()
    (tmp_path / "models--org--small-bert" / "refs" / "main").write_text("abc123")
    probe = ("from fastbert import preflight\n"
             "preflight.model_source('--model', 'org/small-bert')\n"
             "try:\n    preflight.model_source('--model', 'org/other-bert')\n"
             "except preflight.UsageError as err:\n    print(err)\n")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("--model org/other-bert: no such folder, and not in the Hugging Face cache "
                           "(HF_HUB_OFFLINE=1: nothing is downloaded)\n")
