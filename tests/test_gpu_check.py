"""bench/gpu_check.sh: skips cleanly without CUDA; its step code runs (on the CPU here, tiny batch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_skips_with_exit_0_without_cuda() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "gpu_check: skipped -- no CUDA device" in r.stdout and "nothing was run" in r.stdout


def test_step_rows_and_table_on_cpu(tmp_path) -> None:
    sys.path.insert(0, str(ROOT))
    from bench.gpu_check import main

    res = tmp_path / "r.jsonl"
    assert main(["steps", "--out", str(res), "--device", "cpu", "--archs", "small", "--batch-scale", "0.0625",
                 "--steps", "1", "--no-compile"]) == 0
    rows = [json.loads(line) for line in res.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["B"] == 2 and rows[0]["ms_per_step"] > 0
    assert main(["table", str(res)]) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_check_passes_on_cuda() -> None:
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 0, r.stdout + r.stderr
