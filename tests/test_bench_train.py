"""The training-throughput benchmark runs end to end on CPU and prints every variant and the ratio."""
import pytest

from uniter_core import bench_train
from uniter_core.model import UniterSelfAttention

pytestmark = pytest.mark.slow  # each test times a training benchmark (seconds to a minute)


def test_bench_train_prints_every_variant_and_the_ratio(capsys):
    assert bench_train.main(["--preset", "uniter-mini", "--batch", "2", "--text", "8", "--regions", "6",
                             "--device", "cpu", "--warmup", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for label in ("BertModel (SDPA)", "UNITER padded", "UNITER unpadded", "UNITER varlen",
                  "ratio UNITER (best variant)"):
        assert label in out
    assert "compiled" not in out and "profile" not in out  # only with --compile / --profile


def test_bench_train_profile_names_each_variant_and_its_operators(capsys):
    assert bench_train.main(["--preset", "uniter-mini", "--batch", "2", "--text", "8", "--regions", "6",
                             "--device", "cpu", "--warmup", "0", "--repeats", "1", "--profile", "--check"]) == 0
    out = capsys.readouterr().out
    for label in ("BertModel (SDPA)", "UNITER padded", "UNITER unpadded", "UNITER varlen"):
        assert f"--- profile: {label} (3 steps) ---" in out
    assert "aten::addmm" in out or "aten::mm" in out  # the linear layers show up among the costly operators
    assert out.count("(ok, tolerance 1e-04)") == 2  # --check: unpadded and varlen states equal the padded ones


def test_a_failing_variant_is_reported_and_the_others_still_measured(capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this shape\nsecond line")

    monkeypatch.setattr(UniterSelfAttention, "_varlen_attention", broken)
    assert bench_train.main(["--preset", "uniter-mini", "--batch", "2", "--text", "8", "--regions", "6",
                             "--device", "cpu", "--warmup", "0", "--repeats", "1", "--check"]) == 1
    out = capsys.readouterr().out
    assert "check: FAILED (RuntimeError: no kernel for this shape)" in out
    assert "UNITER varlen                FAILED (RuntimeError: no kernel for this shape)" in out
    for label in ("BertModel (SDPA)", "UNITER padded", "UNITER unpadded", "ratio UNITER (best variant)"):
        assert label in out
