"""``fastbert bench`` refuses bad options in one line before it loads a model or measures anything."""

import _cli_run as cli_run
import pytest
import torch

from fastbert import cli


def _refused(tmp_path, *words, argv=(), env=None, unset=()):
    out = tmp_path / "bench-out"
    done = cli_run.fastbert("bench", "--device", "cpu", "--out", out, *argv, env=env, unset=unset)
    cli_run.assert_refused(done, *words)
    assert done.err.startswith("fastbert bench: error: "), done.err
    assert not out.exists()


def test_a_model_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "models" / "minilm"
    _refused(tmp_path, f"--model {missing}: no such folder", argv=["--model", missing])


def test_a_folder_that_is_not_a_saved_model(tmp_path):
    _refused(tmp_path, f"--model {tmp_path}: no config.json", argv=["--model", tmp_path])


def test_a_hub_name_not_in_the_cache_when_offline_by_default(tmp_path):
    """bench runs offline unless HF_HUB_OFFLINE says otherwise."""
    _refused(tmp_path, "--model someone/no-such-bert: no such folder, and not in the Hugging Face cache "
             "(HF_HUB_OFFLINE=1", argv=["--model", "someone/no-such-bert"], env={"HF_HUB_CACHE": str(tmp_path)},
             unset=["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])


def test_an_out_that_is_a_file(tmp_path):
    taken = tmp_path / "results.txt"
    taken.write_text("earlier")
    done = cli_run.fastbert("bench", "--device", "cpu", "--out", taken)
    cli_run.assert_refused(done, f"--out {taken}: is a file, not a folder")
    assert taken.read_text() == "earlier"


def test_an_unknown_backend(tmp_path):
    _refused(tmp_path, "FASTBERT_BACKEND='fast'", env={"FASTBERT_BACKEND": "fast"})


def test_the_triton_backend_on_the_cpu_without_its_interpreter(tmp_path):
    _refused(tmp_path, "FASTBERT_BACKEND=triton on the CPU", "TRITON_INTERPRET=1",
             env={"FASTBERT_BACKEND": "triton"}, unset=["TRITON_INTERPRET"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")
def test_cuda_without_a_gpu(tmp_path, capsys, monkeypatch):
    from fastbert.benchmarks import suite

    monkeypatch.setattr(suite, "run", lambda *a, **k: pytest.fail("measured"))
    assert cli.main(["bench", "--device", "cuda", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == "fastbert bench: error: --device cuda: no CUDA device is available\n"
    assert not (tmp_path / "out").exists()


def test_a_model_type_fastbert_does_not_run(tmp_path):
    folder = tmp_path / "gpt"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    _refused(tmp_path, f"--model {folder}: model_type 'gpt2' is not one fastbert runs (it runs bert, roberta, "
             "xlm-roberta, camembert, electra, distilbert)", argv=["--model", folder])
