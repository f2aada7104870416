"""The training-throughput benchmark runs end to end on CPU and prints every variant and the ratio."""
from uniter_core import bench_train


def test_bench_train_prints_every_variant_and_the_ratio(capsys):
    assert bench_train.main(["--preset", "uniter-mini", "--batch", "2", "--text", "8", "--regions", "6",
                             "--device", "cpu", "--warmup", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for label in ("BertModel (SDPA)", "UNITER padded", "UNITER unpadded", "ratio UNITER (best variant)"):
        assert label in out
    assert "UNITER unpadded compiled" not in out  # only with --compile
