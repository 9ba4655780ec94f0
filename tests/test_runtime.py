"""Runtime settings (`pipeline.runtime`): the CPU tuning a training process asks for."""

from __future__ import annotations

import subprocess
import sys

import torch

from pipeline.runtime import configure_cpu


def test_configure_cpu() -> None:  # moved from tests/test_models.py with configure_cpu itself
    settings = configure_cpu()
    assert isinstance(settings.flush_denormal, bool) and isinstance(settings.malloc_keeps_large_blocks, bool)
    if settings.flush_denormal:
        assert torch.tensor([1e-40]).mul(1.0).item() == 0.0  # denormal flushed


def test_the_stages_that_never_train_do_not_load_torch() -> None:
    """ingest, generate and bin import the runtime module (the Numba threading layer) and the config loader,
    whose dataclasses they take; none of that may pull in torch (configure_cpu imports it when called)."""
    code = ("import sys, pipeline.ingest, pipeline.generate, pipeline.bin; "
            "print(sorted(m for m in ('torch', 'models') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
