"""The fused Triton IPOT kernel, run on CPU in Triton's interpreter.

Triton only interprets when TRITON_INTERPRET=1 is set before it is first imported, which a pytest
worker cannot promise (another test module may import triton first), so every check runs in a fresh
subprocess with the variable set: `python -m uniter_core.ot.check --solver fused --device cpu`, the
same command a GPU machine runs with `--device cuda`. Seeds are fresh each run and printed on failure.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from uniter_core.ot.check import fresh_seed

pytestmark = pytest.mark.slow  # each test runs Triton's interpreter or compiler (seconds to a minute)

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_python(args, interpret: bool, timeout: float = 300, cache_dir=None):
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"  # two xdist workers share two cores
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    if cache_dir is not None:
        env["TRITON_CACHE_DIR"] = str(cache_dir)
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def run_fused_checks(names: str, seed: int) -> dict:
    process = run_python(["-m", "uniter_core.ot.check", "--solver", "fused", "--device", "cpu", "--json",
                          "--seed", str(seed), "--only", names], interpret=True)
    assert process.stdout.strip(), f"seed {seed}: no output; stderr:\n{process.stderr[-3000:]}"
    return json.loads(process.stdout.strip().splitlines()[-1])["results"]


@pytest.mark.parametrize("names", ["matches_reference", "variants", "degenerate,dtypes", "gradient"])
def test_fused_kernel_in_interpreter(names):
    seed = fresh_seed()
    results = run_fused_checks(names, seed)
    failed = {name: result for name, result in results.items() if not result["ok"]}
    assert not failed, f"seed {seed}: {failed}"


def test_fused_kernel_compiles_for_h100_without_a_gpu(tmp_path):
    """Triton's real compiler (to sm_90 PTX and cubin) sees typing errors the interpreter lets pass."""
    code = ("import torch\nfrom uniter_core.ot.fused_triton import compile_cuda\n"
            "for n_txt, n_img, dtype in [(20, 36, torch.float32), (60, 100, torch.bfloat16),\n"
            "                            (128, 128, torch.float64)]:\n"
            "    assert compile_cuda(n_txt, n_img, dtype).asm['cubin']\n")
    process = run_python(["-c", code], interpret=False, cache_dir=tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]


def test_fused_on_cpu_without_interpreter_says_how_to_enable_it():
    code = ("import torch\nfrom uniter_core.ot import ipot\n"
            "ipot(torch.zeros(1, 2, 3), None, None, solver='fused')\n")
    process = run_python(["-c", code], interpret=False)
    assert process.returncode != 0
    assert "RuntimeError" in process.stderr and "TRITON_INTERPRET=1" in process.stderr
