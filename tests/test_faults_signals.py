"""Fault injection by signals and a full disk: Ctrl-C, SIGTERM and SIGKILL during corpus builds, extraction,
training and checkpoint writes, a closed stdout, a signal inside a finalizer, and a disk that fills up.

Each case checks the contract of README "Errors and recovery": the exit code, a one-line message, no traceback,
nothing half-written, and that a rerun or resume then succeeds. The commands run as subprocesses (real signals).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from factories import CORPUS_ARGS, tiny_overrides
from faults import ROOT, assert_failed_cleanly, leftovers, run, run_and_signal, tree_digest

from uniter_core.train_state import CheckpointManager


# ------------------------------------------------------------------------------------------------ signals
def _corpus_shard_written(out: Path):
    return lambda _process: (out.with_name(out.name + ".partial") / "img_db" / "shard_00000.json").exists()


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.slow
def test_signal_during_the_corpus_build_keeps_a_resumable_partial(tmp_path, sig, code):
    out = tmp_path / "corpus"
    result = run_and_signal("uniter_core.data.build_corpus", "--out", out, *CORPUS_ARGS, "--shard-size", "1",
                            when=_corpus_shard_written(out), sig=sig)
    assert_failed_cleanly(result, code, "corpus.partial", "resume")
    first = out.with_name("corpus.partial") / "img_db" / "shard_00000.features.npy"
    stamp = first.stat().st_mtime_ns
    again = run("uniter_core.data.build_corpus", "--out", out, *CORPUS_ARGS, "--shard-size", "1")
    assert again.code == 0, again.stderr
    assert (out / "img_db" / "shard_00000.features.npy").stat().st_mtime_ns == stamp  # resumed, not redone
    assert not leftovers(tmp_path)


@pytest.mark.slow
def test_sigkill_during_the_corpus_build_then_rerun(tmp_path):
    out = tmp_path / "corpus"
    result = run_and_signal("uniter_core.data.build_corpus", "--out", out, *CORPUS_ARGS, "--shard-size", "1",
                            when=_corpus_shard_written(out), sig=signal.SIGKILL)
    assert result.code == -signal.SIGKILL and not out.exists()
    assert run("uniter_core.data.build_corpus", "--out", out, *CORPUS_ARGS, "--shard-size", "1").code == 0
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
@pytest.mark.slow
def test_signal_during_extraction_then_resume(tmp_path, sig):
    from factories import write_csv
    import skimage.data
    from PIL import Image
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(skimage.data.astronaut()).resize((96, 96)).save(images / name)
    captions = write_csv(tmp_path / "c.csv", [(n, "an astronaut") for n in ("a.png", "b.png", "c.png")])
    out = tmp_path / "corpus"
    argv = ["--images", images, "--captions", captions, "--out", out, "--shard-size", "1"]
    result = run_and_signal("uniter_core.data.extract", *argv, when=_corpus_shard_written(out), sig=sig)
    if sig == signal.SIGKILL:
        assert result.code == -signal.SIGKILL
    else:
        assert_failed_cleanly(result, 130, "corpus.partial")
    again = run("uniter_core.data.extract", *argv)
    assert again.code == 0, again.stderr
    assert not leftovers(tmp_path)


def _train_argv(corpus, out, steps=400, *extra):
    return ["--out", out, "--no-eval", *extra, *tiny_overrides(corpus, steps=steps, save_every=3, keep_last=2)]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_training_saves_the_step_and_says_how_to_resume(tiny_corpus, tmp_path, sig, code):
    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"
    result = run_and_signal("uniter_core.train", *_train_argv(tiny_corpus, out),
                            when=lambda _process: metrics.exists() and metrics.stat().st_size > 0, sig=sig)
    assert_failed_cleanly(result, code, "--resume", str(out))
    stopped = CheckpointManager(out).latest(need_state=True)
    assert stopped is not None and stopped.name in result.stderr.splitlines()[-1]
    again = run("uniter_core.train", *_train_argv(tiny_corpus, out, int(stopped.name[5:]) + 2, "--resume"))
    assert again.code == 0, again.stderr
    steps = [json.loads(l)["step"] for l in metrics.read_text().splitlines() if "loss" in json.loads(l)]
    assert steps == list(range(1, len(steps) + 1))
    assert not leftovers(out)


SLOW_SAVE = """
import os, sys, time
import uniter_core.checkpoint as ck
real = ck.safetensors_bytes
def slow(state, metadata=None):
    import glob
    for d in glob.glob(sys.argv[2] + "/checkpoints/.step_*.partial"):
        open(d + "/started", "w").close()
    time.sleep(float(os.environ.get("SLOW_SAVE_SECONDS", "30")))
    return real(state, metadata=metadata)
ck.safetensors_bytes = slow
from uniter_core import train
sys.exit(train.main(sys.argv[1:]))
"""


def _start_slow_save(tiny_corpus, out, steps, seconds):
    return subprocess.Popen([sys.executable, "-c", SLOW_SAVE, *map(str, _train_argv(tiny_corpus, out, steps, "--resume"))],
                            env={**os.environ, "PYTHONPATH": str(ROOT), "SLOW_SAVE_SECONDS": str(seconds)}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigint_during_a_checkpoint_write_finishes_it_then_stops(tiny_corpus, tmp_path):
    """The signal waits for the write: the checkpoint being written completes, then the run stops (130)."""
    import time
    out = tmp_path / "run"
    proc = _start_slow_save(tiny_corpus, out, 400, 3)
    try:
        deadline = time.monotonic() + 300
        while not any(out.glob("checkpoints/.step_*.partial/started")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    from faults import Result
    assert_failed_cleanly(Result(proc.returncode, "", err), 130, "step_00000003", "--resume")
    assert [p.name for p in CheckpointManager(out).steps()] == ["step_00000003"]
    assert CheckpointManager(out).latest(need_state=True) is not None and not leftovers(out)


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    assert run("uniter_core.train", *_train_argv(tiny_corpus, out, 3)).code == 0  # checkpoint step 3
    before = tree_digest(out / "checkpoints" / "step_00000003")
    started = lambda: any(out.glob("checkpoints/.step_*.partial/started"))  # noqa: E731
    proc = _start_slow_save(tiny_corpus, out, 6, 30)
    try:
        deadline = __import__("time").monotonic() + 300
        while not started():
            assert proc.poll() is None, proc.stderr.read()
            assert __import__("time").monotonic() < deadline
            __import__("time").sleep(0.05)
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert tree_digest(out / "checkpoints" / "step_00000003") == before
    assert CheckpointManager(out).latest(need_state=True).name == "step_00000003"
    again = run("uniter_core.train", *_train_argv(tiny_corpus, out, 6, "--resume"))
    assert again.code == 0, again.stderr
    assert [p.name for p in CheckpointManager(out).steps()] == ["step_00000003", "step_00000006"]
    assert not leftovers(out)


# ------------------------------------------------------------------------------------------------ full disk
@pytest.fixture
def small_disk(tmp_path, request):
    """A small tmpfs (root only; its size in the test's `disk_size` mark); skipped with the reason where it
    cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full disk needs a small tmpfs, which needs root and mount")
    size = request.node.get_closest_marker("disk_size").args[0]
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.disk_size("400k")
@pytest.mark.slow
def test_a_full_disk_during_the_corpus_build(small_disk, tmp_path):
    out = small_disk / "corpus"
    result = run("uniter_core.data.build_corpus", "--out", out, *CORPUS_ARGS, "--shard-size", "1")
    assert_failed_cleanly(result, 1, "No space left", "corpus.partial")
    assert not out.exists() and not [p for p in leftovers(small_disk) if p.endswith(".tmp")]


@pytest.mark.disk_size("5m")
def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_one(tiny_corpus, small_disk, tmp_path):
    """The tiny model's checkpoint is about 3 MiB: the first fits the 5 MiB disk, the second does not."""
    out = small_disk / "run"
    overrides = tiny_overrides(tiny_corpus, steps=6, save_every=2, keep_last=3)
    overrides = [o for o in overrides if not o.startswith("model.overrides")] + [
        "model.overrides={num_hidden_layers: 1, hidden_size: 8, num_attention_heads: 2, intermediate_size: 16}"]
    result = run("uniter_core.train", "--out", out, "--no-eval", *overrides)
    assert_failed_cleanly(result, 1, "No space left", "not written", "intact")
    kept = CheckpointManager(out).steps()
    assert kept and CheckpointManager(out).latest(need_state=True) == kept[-1]
    assert not list((out / "checkpoints").glob(".step_*"))




def test_a_closed_stdout_and_ctrl_c_while_starting(trained_run, tmp_path):
    done = subprocess.run(f"{sys.executable} -m uniter_core.report --run {trained_run} >&-", shell=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert "Traceback" not in done.stderr, done.stderr
    def importing_torch(proc) -> bool:
        """torch's library is mapped: the imports have begun, the heavier ones (transformers, the model) are still
        ahead, so the signal lands while the command starts, not after its first check of the config."""
        try:
            return "libtorch_cpu" in Path(f"/proc/{proc.pid}/maps").read_text()
        except OSError:
            return False

    result = run_and_signal("uniter_core.train", "--out", tmp_path / "run", when=importing_torch, poll=0.01)
    assert_failed_cleanly(result, 130, "interrupted")
    assert not (tmp_path / "run").exists()


def test_a_signal_that_lands_in_a_finalizer_still_interrupts(capsys):
    """A signal handled inside some object's __del__ cannot raise there (Python prints 'Exception ignored' and
    drops it): it is delivered again outside, so the command still stops with 130 and no traceback."""
    import time
    from uniter_core.cli import run_command

    class SignalsWhileCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)

    def command():
        SignalsWhileCollected()  # collected at once: the handler runs inside __del__
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.01)
        return 0

    assert run_command(command) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception ignored" not in err and "interrupted (SIGINT)" in err


def test_an_interrupt_does_not_print_the_finalizers_it_broke(tmp_path):
    """An object the signal caught half-built fails in its __del__ at exit (imageio's image plugins did, during
    the corpus build); the command still says one line and no traceback."""
    script = tmp_path / "half_built.py"
    script.write_text(
        "from uniter_core.cli import exit_with, run_command\n"
        "class HalfBuilt:\n"
        "    def __init__(self):\n"
        "        raise KeyboardInterrupt  # the signal arrives before the attributes are set\n"
        "    def __del__(self):\n"
        "        self.missing\n"
        "def work():\n"
        "    HalfBuilt()\n"
        "exit_with(run_command(work))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("interrupted")
