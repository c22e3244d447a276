"""The whole-model benchmark runs end to end and records its figures (tiny settings; no timing asserted)."""

import json

from benchmarks import bench_modeling


def test_bench_modeling_smoke(tmp_path, minilm_path, capsys):
    assert bench_modeling.main(["--batch", "2", "--max-len", "16", "--repeats", "1", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "bench_modeling.json").read_text())
    assert set(record["results"]) == {"variable", "full"}
    for result in record["results"].values():
        assert result["speedup"] > 0 and result["real_tokens"] <= result["padded_tokens"]
    assert "speed-up" in capsys.readouterr().out
