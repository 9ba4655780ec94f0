"""`pipeline.guards.exits_on_error`: the one mapping from a refusal to an ``error:`` line and an exit code."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError
from pipeline.errors import Refusal
from pipeline.guards import DiskFullError, NotWritableError, OutputError, exits_on_error
from pipeline.io.errors import RawDataError
from pipeline.storage import StoreError


def _raising(err: BaseException, **mapping):
    def main() -> int:
        raise err

    return exits_on_error(**mapping)(main) if mapping else exits_on_error(main)


@pytest.mark.parametrize("err, code", [
    (ConfigError("bad key"), 2),
    (NotWritableError("read-only"), 2),
    (DiskFullError("full"), 1),
    (StoreError("damaged store"), 1),
    (RawDataError("f.aedat", "bad header", offset=12), 1),
])
def test_every_refusal_is_one_error_line_and_its_exit_code(capsys, err, code):
    assert isinstance(err, (ConfigError, Refusal))
    assert _raising(err)() == code
    assert capsys.readouterr().err == f"error: {err}\n"


def test_the_checkpoint_error_is_a_refusal_too():
    pytest.importorskip("torch")
    from pipeline.runs import CheckpointError

    assert issubclass(CheckpointError, Refusal) and CheckpointError.exit_code == 1
    assert issubclass(OutputError, RuntimeError) and issubclass(StoreError, ValueError)


def test_a_stage_may_map_a_refusal_differently(capsys):
    main = _raising(StoreError("gone"), codes={StoreError: 2}, notes={StoreError: "nothing was written."})
    assert main() == 2
    assert capsys.readouterr().err == "error: gone\nnothing was written.\n"
    other = _raising(DiskFullError("full"), codes={StoreError: 2}, notes={StoreError: "nothing was written."})
    assert other() == 1 and capsys.readouterr().err == "error: full\n"


def test_other_errors_pass_unchanged():
    with pytest.raises(KeyError):
        _raising(KeyError("x"))()
