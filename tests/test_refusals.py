"""What the pipeline refuses: each test is one attack and the refusal it gets (issue 10's list, growing).

Every refusal names the file and the row/offset or the key at fault, and happens before any product is written.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import ConfigError, TrainConfig, load_params, load_section
from pipeline.datasets import get_spec
from pipeline.datasets.base import read_listing
from pipeline.datasets.dvs_gesture import read_label_csv
from pipeline.io.errors import RawDataError

from tests.conftest import make_gesture_tree


# ------------------------------------------------------------------------------------------- trials lists
def test_a_recording_listed_twice_is_refused(tmp_path):
    tree = make_gesture_tree(tmp_path / "raw", n_events=500)
    listing = tree.root / "trials_to_train.txt"
    listing.write_text(listing.read_text() + "user01_fluorescent_led.aedat\r\n")
    with pytest.raises(RawDataError, match=r"listed twice \(rows 1 and 3\)") as info:
        get_spec("dvs_gesture").recordings(tree.root)
    assert info.value.path == str(listing) and info.value.row == 3


def test_a_recording_in_train_and_test_is_refused(tmp_path):
    tree = make_gesture_tree(tmp_path / "raw", n_events=500)
    test_list = tree.root / "trials_to_test.txt"
    test_list.write_text(test_list.read_text() + "user02_fluorescent_led.aedat\r\n")
    with pytest.raises(RawDataError, match="also listed in .*trials_to_train.txt \\(row 2\\)") as info:
        get_spec("dvs_gesture").recordings(tree.root)
    assert info.value.path == str(test_list) and info.value.row == 2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a.aedat", "b.aedat", "c.aedat", "", "  ", "\ufeffd.aedat"]), max_size=8),
       st.sampled_from(["\n", "\r\n"]))
def test_trials_list_parser_fuzzed(tmp_path_factory, lines, eol):
    """Any list parses to unique names in file order, or is refused naming the second row of a duplicate."""
    path = tmp_path_factory.mktemp("trials") / "trials_to_train.txt"
    path.write_bytes(eol.join(lines).encode("utf-8"))
    names = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    if len(set(names)) < len(names):
        with pytest.raises(RawDataError, match="listed twice"):
            read_listing(path)
    else:
        assert [n for _, n in read_listing(path)] == names


# ------------------------------------------------------------------------------------------- label csv
def test_label_csv_with_a_utf8_bom_is_read(tmp_path):
    """Excel writes a BOM before 'class': accepted, the rows are the same."""
    path = tmp_path / "u_labels.csv"
    path.write_bytes(b"\xef\xbb\xbfclass,startTime_usec,endTime_usec\r\n3,10,20\r\n")
    (w,) = read_label_csv(path, 11)
    assert (w.label, w.start_us, w.end_us, w.row) == (2, 10, 20, 2)


@pytest.mark.parametrize("row, match", [
    ("3,10,99999999999999999999", "does not fit in int64"),
    ("3,-1,20", "start -1 is negative"),
    ("3,20,10", "end 10 is before start 20"),
    ("12,10,20", "unknown class 12"),
    ("3,10", "expected three integers"),
    ("3,1e3,20", "expected three integers"),
])
def test_label_csv_bad_rows_name_the_row(tmp_path, row, match):
    path = tmp_path / "u_labels.csv"
    path.write_text(f"class,startTime_usec,endTime_usec\n1,0,5\n{row}\n")
    with pytest.raises(RawDataError, match=match) as info:
        read_label_csv(path, 11)
    assert info.value.row == 3 and str(path) in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 15), st.integers(-10, 1 << 64), st.integers(-10, 1 << 64)), max_size=6),
       st.booleans())
def test_label_csv_parser_fuzzed(tmp_path_factory, rows, bom):
    """Any integer rows: parsed exactly when valid, otherwise a RawDataError naming the first bad row."""
    path = tmp_path_factory.mktemp("csv") / "u_labels.csv"
    text = "class,startTime_usec,endTime_usec\n" + "".join(f"{c},{s},{e}\n" for c, s, e in rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    bad = [i for i, (c, s, e) in enumerate(rows) if not (1 <= c <= 11 and 0 <= s <= e < 1 << 63)]
    if bad:
        with pytest.raises(RawDataError) as info:
            read_label_csv(path, 11)
        assert info.value.row == bad[0] + 2
    else:
        assert [(w.label + 1, w.start_us, w.end_us) for w in read_label_csv(path, 11)] == rows


# ------------------------------------------------------------------------------------------- config
def test_a_missing_params_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="nonexist.yaml: params file not found"):
        load_params(tmp_path / "nonexist.yaml")
    with pytest.raises(ConfigError, match="params file not found"):
        load_section("train", TrainConfig, tmp_path / "nonexist.yaml")


@pytest.mark.parametrize("T_s, T_t", [(4, 4), (8, 4), (4, 2)])
def test_a_teacher_no_longer_than_the_student_is_refused(T_s, T_t):
    with pytest.raises(ConfigError, match=f"train.T_t = {T_t} must exceed train.T_s = {T_s}"):
        TrainConfig(T_s=T_s, T_t=T_t)
    assert TrainConfig(T_s=T_s, T_t=None).teacher_T == 2 * T_s


def test_repository_params_file_exists_and_loads():
    assert load_params(Path(__file__).resolve().parents[1] / "params.yaml")["datasets"]


# ------------------------------------------------------------------------------------------- evaluate
def test_evaluate_refuses_a_store_re_ingested_since_training(tmp_path, capsys):
    """Same store path, other raw files: scoring the run on them would report a number for the wrong test set."""
    import pipeline.evaluate as evaluate_mod
    import pipeline.train as train_mod
    from pipeline.config import IngestConfig
    from pipeline.ingest import ingest

    from tests.conftest import make_learnable_tree
    from tests.test_train import FAST

    store = tmp_path / "ev.zarr"
    ingest(get_spec("dvs_gesture"), make_learnable_tree(tmp_path / "raw_a", seed=0), store, IngestConfig(),
           progress=False)
    run = tmp_path / "run"
    assert train_mod.main(["dvs_gesture", "--store", str(store), "--out", str(run), "--epochs", "1",
                           "--set", f"paths.frames_root={tmp_path / 'frames'}", *FAST]) == 0
    ingest(get_spec("dvs_gesture"), make_learnable_tree(tmp_path / "raw_b", seed=1), store, IngestConfig(),
           progress=False)
    assert evaluate_mod.main([str(run), "--T", "2"]) == 1
    assert "is not the one this run was trained on" in capsys.readouterr().err
    assert not (run / "eval.json").exists()


# ------------------------------------------------------------------------------------------- stage CLIs
@pytest.mark.parametrize("stage", ["ingest", "bin", "train"])
@pytest.mark.parametrize("params_text, extra, match", [
    (None, [], "params file not found"),
    ("train: {lr: [0.1\n", [], "not valid YAML"),
    ("", ["--set", "train.lr=[0.1"], "the value is not valid YAML"),
    ("", ["--set", "trian.lr=0.1"], "unknown section 'trian'"),
])
def test_stage_cli_config_errors_are_one_line(tmp_path, capsys, stage, params_text, extra, match):
    """A bad params file or --set is an 'error:' line and exit code 2, never a traceback, and nothing is written."""
    import importlib

    params = tmp_path / "nonexist.yaml"
    if params_text is not None:
        params.write_text(params_text)
    main = importlib.import_module(f"pipeline.{stage}").main
    assert main(["dvs_gesture", "--params", str(params), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == (["nonexist.yaml"] if params_text is not None else [])


@pytest.fixture(scope="module")
def learnable_store(tmp_path_factory) -> Path:
    from pipeline.config import IngestConfig
    from pipeline.ingest import ingest

    from tests.conftest import make_learnable_tree

    tmp = tmp_path_factory.mktemp("refuse_train")
    out = tmp / "ev.zarr"
    ingest(get_spec("dvs_gesture"), make_learnable_tree(tmp / "raw"), out, IngestConfig(), progress=False)
    return out


@pytest.mark.parametrize("override, match", [
    ("train.lr=-0.1", "train.lr = -0.1 must be >= 0"),
    ("train.tau_kd=0", "train.tau_kd = 0.0 must be > 0"),
    ("train.augment.max_shift_px=-1", "max_shift_px (-1)"),
    ("train.device=gpu", "choose auto, cpu, cuda or cuda:N"),
    ("train.arch=resnet", "unknown architecture 'resnet'"),
    ("train.weak_stages=[nope]", "weak_stages ('nope',) must be distinct names"),
    ("train.neuron={tau: 2}", "train (arch / weak_stages / neuron"),
] + ([] if __import__("torch").cuda.is_available() else [("train.device=cuda", "no CUDA device is available")]))
def test_training_config_is_refused_before_any_cache_is_built(learnable_store, tmp_path, capsys, override, match):
    import pipeline.train as train_mod

    from tests.test_train import FAST

    frames = tmp_path / "frames"
    rc = train_mod.main(["dvs_gesture", "--store", str(learnable_store), "--out", str(tmp_path / "run"),
                         "--set", f"paths.frames_root={frames}", *FAST, "--set", override])
    assert rc == 2
    assert match in capsys.readouterr().err
    assert not frames.exists() and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------- checkpoints
def _train_one_epoch(store: Path, run: Path, frames: Path, *extra: str) -> int:
    import pipeline.train as train_mod

    from tests.test_train import FAST

    return train_mod.main(["dvs_gesture", "--store", str(store), "--out", str(run), "--epochs", "1",
                           "--set", f"paths.frames_root={frames}", *FAST, *extra])


def test_a_truncated_checkpoint_is_named_not_a_traceback(learnable_store, tmp_path, capsys):
    import pipeline.evaluate as evaluate_mod

    run = tmp_path / "run"
    assert _train_one_epoch(learnable_store, run, tmp_path / "frames") == 0
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    capsys.readouterr()
    assert evaluate_mod.main([str(run), "--T", "2"]) == 2
    err = capsys.readouterr().err
    assert f"{ckpt}: cannot read the checkpoint, it is truncated or corrupt" in err and "Traceback" not in err
    assert _train_one_epoch(learnable_store, run, tmp_path / "frames", "--resume") == 1
    assert "truncated or corrupt" in capsys.readouterr().err
    assert evaluate_mod.main([str(tmp_path / "nothing"), "--T", "2"]) == 2
    assert "not found; train first" in capsys.readouterr().err


def test_a_full_disk_while_saving_a_checkpoint_leaves_no_temporary(learnable_store, tmp_path, monkeypatch, capsys):
    import errno

    import torch

    def full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    run = tmp_path / "run"
    assert _train_one_epoch(learnable_store, run, tmp_path / "frames") == 1
    err = capsys.readouterr().err
    assert f"{run / 'checkpoint.pt'}: no space left on device while writing the checkpoint: it needs about" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not list(run.glob("checkpoint.pt*"))


@pytest.mark.parametrize("stage, args, match", [
    ("bin", ["dvs_gesture", "--T", "0"], "bin.T = [0]: every frame count must be >= 1"),
    ("bin", ["dvs_gesture", "--out-size", "0", "0"], "bin.out_size = [0, 0]"),
    ("ingest", ["dvs_gesture", "--set", "ingest.shard_events=0"], "ingest.shard_events must be a positive multiple"),
    ("ingest", ["nosuchset"], "unknown dataset 'nosuchset'; choose one of"),
    ("train", ["nosuchset"], "unknown dataset 'nosuchset'; choose one of"),
])
def test_bad_command_line_values_are_one_line(tmp_path, capsys, stage, args, match):
    import importlib

    main = importlib.import_module(f"pipeline.{stage}").main
    assert main([*args, "--set", f"paths.events_root={tmp_path}", "--set", f"paths.raw_root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_an_unparsable_random_split_seed_is_refused(tmp_path, capsys):
    from pipeline.ingest import main

    from tests.conftest import make_cifar_tree

    make_cifar_tree(tmp_path / "raw" / "cifar10_dvs", per_class=2)
    assert main(["cifar10_dvs", "--split", "random:abc", "--out", str(tmp_path / "c.zarr"),
                 "--set", f"paths.raw_root={tmp_path / 'raw'}"]) == 2
    assert "needs an integer seed, got 'random:abc'" in capsys.readouterr().err
    assert not (tmp_path / "c.zarr").exists()


@pytest.mark.parametrize("text", ["{not json", '{"config": {}}', '{"config": {"sensor": "big"}}', '[]',
                                  '{"config": {"sensor": 0}}'])
def test_a_malformed_digits_dvs_record_is_named(tmp_path, capsys, text):
    from pipeline.ingest import main

    raw = tmp_path / "raw" / "digits_dvs"
    raw.mkdir(parents=True)
    (raw / "digits_dvs.json").write_text(text)
    assert main(["digits_dvs", "--out", str(tmp_path / "d.zarr"), "--set", f"paths.raw_root={tmp_path / 'raw'}"]) == 1
    err = capsys.readouterr().err
    assert f"{raw / 'digits_dvs.json'}" in err and "config.sensor" in err and "Traceback" not in err
    assert not (tmp_path / "d.zarr").exists()


def test_training_on_an_empty_split_is_refused(tmp_path, capsys):
    import numpy as np

    from pipeline.config import IngestConfig
    from pipeline.datasets.base import Window
    from pipeline.datasets.dvs_gesture import write_recording, write_trials
    from pipeline.ingest import ingest

    root = tmp_path / "raw"
    t = np.arange(0, 100_000, 100)
    ones = np.ones_like(t)
    write_recording(root, "user01_lab", ones, ones, t, ones, [])  # a label csv with no rows: no samples
    write_recording(root, "user02_lab", ones, ones, t, ones, [Window(0, 0, 50_000), Window(1, 50_000, 100_000)])
    write_trials(root, ["user01_lab"], ["user02_lab"])
    store = tmp_path / "ev.zarr"
    ingest(get_spec("dvs_gesture"), root, store, IngestConfig(), progress=False)
    assert _train_one_epoch(store, tmp_path / "run", tmp_path / "frames") == 1
    assert "the train split has no samples" in capsys.readouterr().err
    assert not (tmp_path / "frames").exists()
