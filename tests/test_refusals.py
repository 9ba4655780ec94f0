"""What the pipeline refuses: each test is one attack and the refusal it gets (issue 10's list, growing).

Every refusal names the file and the row/offset or the key at fault, and happens before any product is written.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
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


# ------------------------------------------------------------------------------------------- damaged products
# A deleted or truncated chunk/shard file reads back through zarr as the fill value (zeros); every Zarr product
# lists the files it was written with (attrs["files"], {path: bytes}) and opening checks them.
SMALL_SHARDS = dict(chunk_events=256, shard_events=1024)  # several shard files per column


def _small_store(tmp_path: Path, fmt: str = "zarr", seed: int = 0, name: str = "ev") -> Path:
    from pipeline.config import IngestConfig
    from pipeline.ingest import ingest

    out = tmp_path / f"{name}.{'zarr' if fmt == 'zarr' else 'h5'}"
    tree = make_gesture_tree(tmp_path / f"raw-{name}-{seed}", seed=seed, n_events=3000)
    # no validation split: the damage below targets given shard files of a 22-sample train split
    ingest(get_spec("dvs_gesture"), tree.root, out, IngestConfig(format=fmt, val={"dvs_gesture": 0}, **SMALL_SHARDS),
           progress=False)
    return out


@pytest.fixture(scope="module")
def intact_store(tmp_path_factory) -> Path:
    return _small_store(tmp_path_factory.mktemp("intact"))


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    return dst


@pytest.mark.parametrize("damage, match", [
    (lambda s: (s / "train/t/c/1").unlink(), "train/t/c/1 is missing"),
    (lambda s: (s / "train/x/c/2").write_bytes((s / "train/x/c/2").read_bytes()[:-7]),
     r"train/x/c/2 has 1261 bytes, 1268 when written"),
    (lambda s: (s / "test/recording/c").mkdir() or (s / "test/recording/c/0").write_bytes(b"\0" * 8),
     "test/recording/c/0 was not written with it"),
])
def test_a_damaged_event_store_is_refused_and_no_cache_is_built_from_it(intact_store, tmp_path, damage, match):
    """The attack: delete/truncate a shard (zarr reads zeros there) or add one; exit 0 and zeros was the result."""
    import zarr

    from pipeline.frames import Binning, ensure_frame_cache
    from pipeline.store import StoreError, open_event_store

    store = _copy(intact_store, tmp_path / "ev.zarr")
    damage(store)
    if "missing" in match:  # what plain zarr does with the hole: the fill value, silently
        assert not zarr.open_group(store, mode="r")["train/t"][1024:2048].any()
    with pytest.raises(StoreError, match=match):
        open_event_store(store)
    with pytest.raises(StoreError, match=match):
        ensure_frame_cache(store, "train", Binning(T=2), tmp_path / "frames", progress=False)
    assert not (tmp_path / "frames").exists()


def test_a_chunk_of_zeros_is_legitimately_absent(intact_store):
    """Zarr and ShardWriter write no chunk/shard that is all fill value: its absence is what was written."""
    from pipeline.store import open_event_store

    store = open_event_store(intact_store)
    assert not (intact_store / "test/recording/c/0").exists() and "test/recording/c/0" not in store.files
    assert not store["test"].recording.any() and len(store["test"]) == 11


def test_a_shard_deleted_after_open_is_refused_by_the_reader(intact_store, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.store import StoreError, open_event_store

    store = _copy(intact_store, tmp_path / "ev.zarr")
    split = open_event_store(store)["train"]
    readers = split.column_readers()
    (store / "train/p/c/3").unlink()
    with ThreadPoolExecutor(1) as pool, pytest.raises(StoreError, match=r"train/p/c/3 is missing \(the store lists"):
        readers["p"].start(0, int(split.offsets[-1]), pool).result()


@pytest.mark.parametrize("victim, match", [("frames/c/1/0/0/0/0", "is missing"), ("label/c/0", "is missing"),
                                            ("frames/zarr.json", "frames/zarr.json is missing")])
def test_a_damaged_frame_cache_is_refused(intact_store, tmp_path, monkeypatch, victim, match):
    import pipeline.frames as frames_mod
    from pipeline.frames import Binning, ensure_frame_cache, open_frame_cache
    from pipeline.store import StoreError

    monkeypatch.setattr(frames_mod, "SHARD_SAMPLES", 8)  # several shards for 22 samples
    cache = ensure_frame_cache(intact_store, "train", Binning(T=2, out_size=(16, 16)), tmp_path, progress=False)
    assert (cache.path / "frames/c/2/0/0/0/0").exists()
    (cache.path / victim).unlink()
    with pytest.raises(StoreError, match=match):
        open_frame_cache(cache.path)
    with pytest.raises(StoreError, match=match):  # and the train/bin stages do not take it as built
        ensure_frame_cache(intact_store, "train", Binning(T=2, out_size=(16, 16)), tmp_path, progress=False)


def test_a_product_without_its_inventory_is_refused(intact_store, tmp_path):
    """Without the inventory a missing chunk could not be detected: such a store (or one of format version 1,
    written before inventories existed) is refused, not opened with a warning."""
    import zarr

    from pipeline.store import StoreError, open_event_store

    store = _copy(intact_store, tmp_path / "ev.zarr")
    g = zarr.open_group(store, mode="r+")
    del g.attrs["files"]
    with pytest.raises(StoreError, match="has no file inventory"):
        open_event_store(store)
    g.attrs["format_version"] = 1
    with pytest.raises(StoreError, match="format version 1, this code reads version 2"):
        open_event_store(store)


@pytest.mark.parametrize("cut", [1, 1000])
@pytest.mark.parametrize("product", ["store", "cache"])
def test_a_truncated_hdf5_product_is_refused_by_hdf5_itself(intact_store, tmp_path, product, cut):
    """HDF5 records the file's end-of-file address in its superblock and refuses a shorter file at open; a
    deleted dataset chunk cannot happen without rewriting the file. No inventory is needed for HDF5."""
    from pipeline.frames import Binning, ensure_frame_cache, open_frame_cache
    from pipeline.store import StoreError, open_event_store

    path = _small_store(tmp_path, "h5")
    if product == "cache":
        path = ensure_frame_cache(path, "train", Binning(T=2), tmp_path / "frames", "h5", progress=False).path
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(StoreError, match="truncated file"):
        (open_event_store if product == "store" else open_frame_cache)(path)


# ------------------------------------------------------------------------------------------- replacing a product
# atomic_output publishes a directory by one renameat2(RENAME_EXCHANGE) (where the OS has it) under an flock of
# the folder; kills and concurrent writers are real processes here.
_WRITER = r"""
import os, sys, time
import re
from pathlib import Path
import pipeline.store as store
path, tag, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
if mode in ("two-step", "kill-between"):
    store._exchange = lambda a, b: False  # a system without the exchange: two renames
if mode == "kill-between":
    store._after_swap_hook = lambda: os._exit(9)  # killed after old -> .old-<pid>, before new -> path
if len(sys.argv) > 4:  # concurrent writers: every rename takes 20 ms more, so the two swaps surely overlap
    real_replace = os.replace
    os.replace = lambda a, b: (real_replace(a, b), time.sleep(0.02))[0]
if mode == "kill-after-exchange":
    real = store.remove_path
    store.remove_path = lambda p: os._exit(9) if p.name.endswith(f".tmp-{os.getpid()}") else real(p)
with store.atomic_output(path) as tmp:
    tmp.mkdir()
    for i in range(50):
        (tmp / f"part{i}").write_text(tag)
    if len(sys.argv) > 4:  # wait for the go signal, so both writers publish at the same moment
        Path(sys.argv[4] + "." + tag).touch()
        while not Path(sys.argv[4]).exists():
            time.sleep(0.001)
"""


def _write_product(path: Path, tag: str, mode: str = "exchange", go: Path | None = None):
    import subprocess
    import sys

    args = [sys.executable, "-c", _WRITER, str(path), tag, mode] + ([str(go)] if go else [])
    return subprocess.Popen(args, stderr=subprocess.PIPE, text=True)


def _one_complete_product(path: Path, tags: set[str]) -> None:
    parts = {p.read_text() for p in path.iterdir()}
    assert len(list(path.iterdir())) == 50 and len(parts) == 1 and parts <= tags, parts
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "temporaries left behind"


@pytest.mark.parametrize("mode", ["exchange", "two-step"])
def test_concurrent_writers_of_one_product_both_succeed(tmp_path, mode):
    """The attack: two runs build the same product at once ('Directory not empty' for the second before)."""
    import time

    path = tmp_path / "product"
    assert _write_product(path, "old", mode).wait() == 0
    for round_ in range(2):
        go = tmp_path / f"go{round_}"
        procs = [_write_product(path, f"w{k}", mode, go) for k in range(2)]
        while not all(Path(f"{go}.w{k}").exists() for k in range(2)):
            time.sleep(0.001)
        go.touch()
        for p in procs:
            assert p.wait() == 0, p.stderr.read()
        for k in range(2):
            Path(f"{go}.w{k}").unlink()
        go.unlink()
        _one_complete_product(path, {"w0", "w1"})


def test_a_kill_between_the_two_renames_loses_nothing(tmp_path):
    """Without the exchange, a kill between old -> .old-<pid> and new -> path leaves no product: a reader gets a
    clear 'does not exist', and the next writer restores the stranded old product before it starts."""
    from pipeline.store import StoreError, atomic_output, open_event_store

    path = tmp_path / "product"
    assert _write_product(path, "old").wait() == 0
    proc = _write_product(path, "new", "kill-between")
    assert proc.wait() == 9
    assert not path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"product.old-{proc.pid}", f"product.tmp-{proc.pid}"]
    with pytest.raises(StoreError, match="does not exist"):
        open_event_store(tmp_path / "product.zarr")
    with atomic_output(path) as tmp:
        assert (path / "part0").read_text() == "old"  # restored on entry
        tmp.mkdir()
        for i in range(50):
            (tmp / f"part{i}").write_text("next")
    _one_complete_product(path, {"next"})


def test_a_kill_after_the_exchange_leaves_the_new_product_and_a_temporary_the_next_writer_clears(tmp_path):
    path = tmp_path / "product"
    assert _write_product(path, "old").wait() == 0
    proc = _write_product(path, "new", "kill-after-exchange")
    assert proc.wait() == 9
    assert {p.read_text() for p in path.iterdir()} == {"new"}  # there was never a moment without a product
    assert (tmp_path / f"product.tmp-{proc.pid}").exists()  # the old one, not yet deleted
    assert _write_product(path, "next").wait() == 0
    _one_complete_product(path, {"next"})


# ------------------------------------------------------------------------------------------- store replaced while read
# A reader pins the version it opened (an fd on the store, shard files opened relative to it); once a re-ingest
# replaced the store, every read refuses with "changed while it was being read" instead of mixing versions.
def _reingest(path: Path, seed: int) -> None:
    from pipeline.config import IngestConfig
    from pipeline.ingest import ingest

    tree = make_gesture_tree(path.parent / f"raw-re-{seed}", seed=seed, n_events=3000)
    ingest(get_spec("dvs_gesture"), tree.root, path, IngestConfig(format="h5" if path.suffix == ".h5" else "zarr",
                                                                    **SMALL_SHARDS), progress=False)


@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_reading_a_store_re_ingested_between_reads_is_refused(tmp_path, fmt):
    import pickle

    from pipeline.store import StoreError, open_event_store

    path = _small_store(tmp_path, fmt)
    split = open_event_store(path)["train"]
    copy = pickle.dumps(split)  # as a DataLoader worker gets it
    first, _ = split[0]
    _reingest(path, seed=1)  # between two reads of one reader
    if fmt == "zarr":
        with pytest.raises(StoreError, match="changed while it was being read"):
            split[1]
    else:  # the HDF5 file handle the reader holds keeps reading the version it opened
        np.testing.assert_array_equal(split[0][0], first)
    with pytest.raises(StoreError, match="changed while it was being read"):
        pickle.loads(copy)[0]
    assert open_event_store(path)["train"][0][0].tobytes() != first.tobytes()  # a fresh open reads the new one


def test_binning_while_the_store_is_re_ingested_is_refused(tmp_path, monkeypatch):
    """The attack: bin while ingest replaces the store (a Blosc error or an unsorted-t error before)."""
    import pipeline.frames as frames_mod
    from pipeline.frames import Binning, build_frame_cache
    from pipeline.store import StoreError, open_event_store

    path = _small_store(tmp_path)
    store = open_event_store(path)
    real, calls = frames_mod.bin_batch, []

    def bin_then_reingest(*args, **kwargs):  # the replacement lands between two blocks' reads
        calls.append(1)
        if len(calls) == 1:
            _reingest(path, seed=1)
        return real(*args, **kwargs)

    monkeypatch.setattr(frames_mod, "bin_batch", bin_then_reingest)
    out = tmp_path / "frames" / "c.zarr"
    with pytest.raises(StoreError, match="changed while it was being read"):
        build_frame_cache(store["train"], store.attrs, Binning(T=2), out, block_samples=2, block_events=1000,
                          progress=False)
    assert not out.exists() and list(out.parent.iterdir()) == []


# ------------------------------------------------------------------------------------------- arrays vs attributes
def _swap_frames(cache: Path, other: Path) -> None:
    """Put ``other``'s frames array under ``cache``'s attributes (and, for Zarr, re-list the files so that only
    the shape check stands between the attack and a wrong read)."""
    import shutil

    import h5py
    import zarr

    from pipeline.store import list_files

    if cache.suffix == ".h5":
        with h5py.File(other, "r") as src, h5py.File(cache, "r+") as dst:
            del dst["frames"]
            dst.create_dataset("frames", data=src["frames"][:])
        return
    shutil.rmtree(cache / "frames")
    shutil.copytree(other / "frames", cache / "frames")
    g = zarr.open_group(cache, mode="r+")
    g.attrs["files"] = list_files(cache)


@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_a_frame_cache_whose_shape_disagrees_with_its_attributes_is_refused(intact_store, tmp_path, fmt):
    from pipeline.frames import Binning, ensure_frame_cache, open_frame_cache
    from pipeline.store import StoreError

    t2 = ensure_frame_cache(intact_store, "train", Binning(T=2), tmp_path, fmt, progress=False)
    t4 = ensure_frame_cache(intact_store, "train", Binning(T=4), tmp_path, fmt, progress=False)
    _swap_frames(t2.path, t4.path)
    n = len(t2)
    with pytest.raises(StoreError, match=re.escape(f"frames has shape ({n}, 4, 2, 128, 128), the attributes say "
                                                   f"(N, T, P, H, W) = ({n}, 2, 2, 128, 128) (binning.T = 2")):
        open_frame_cache(t2.path, Binning(T=2))


def test_an_event_store_whose_offsets_disagree_with_its_columns_is_refused(tmp_path):
    import h5py

    from pipeline.store import StoreError, open_event_store

    path = _small_store(tmp_path, "h5")
    with h5py.File(path, "r+") as f:
        off = f["train/offsets"][:]
        off[-1] += 5
        f["train/offsets"][...] = off
    with pytest.raises(StoreError, match=r"split 'train' is inconsistent: attrs say n_events = \d+, offsets end at"):
        open_event_store(path)["train"]


# =========================================================================================== issue 10, inputs part
# (empty recordings and samples; the plan checked before work; a missing decoder; read-only folders; a full disk)
def _gesture(root: Path, recordings: dict[str, tuple[int, list]], train: list[str], test: list[str]) -> Path:
    """A DVS-Gesture tree: name -> (number of events, windows); events at x = y = 1 every 100 µs."""
    import numpy as np

    from pipeline.datasets.dvs_gesture import write_recording, write_trials

    for name, (n, windows) in recordings.items():
        t = np.arange(n, dtype=np.int64) * 100
        ones = np.ones(n, np.int64)
        write_recording(root, name, ones, ones, t, ones, windows)
    write_trials(root, train, test)
    return root


def _windows(*bounds):
    from pipeline.datasets.base import Window

    return [Window(k % 11, a, b) for k, (a, b) in enumerate(bounds)]


@pytest.fixture
def no_reads(monkeypatch):
    """Fail the test if ingest reads (and hashes) a recording: refusals must come before any of that work."""
    import pipeline.ingestion as ingest_mod

    def refuse(rec):
        raise AssertionError(f"{rec.path} was read before the plan was refused")

    monkeypatch.setattr(ingest_mod, "_read_and_hash", refuse)


def _no_temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name) if folder.exists() else []


# ------------------------------------------------------------------------------------------- empty recordings
def test_a_header_only_recording_is_counted_and_reported(tmp_path, capsys):
    """Legal, but never silent: ingest counts empty samples and recordings per split, names the recordings,
    and says so in its report; bin warns; the store's counts hold the keys (0 when nothing is empty)."""
    from pipeline.bin import main as bin_main
    from pipeline.ingest import main
    from pipeline.store import open_event_store

    root = _gesture(tmp_path / "raw", {
        "user01_lab": (0, _windows((0, 1000), (1000, 2000))),  # header only: both samples empty
        "user02_lab": (500, _windows((0, 20_000), (40_000, 60_000), (90_000, 95_000))),  # the last one empty
        "user03_lab": (500, _windows((0, 25_000), (25_000, 50_000))),
    }, ["user01_lab", "user02_lab"], ["user03_lab"])
    store = tmp_path / "ev.zarr"
    assert main(["dvs_gesture", "--raw", str(root), "--out", str(store), "--no-progress",
                 "--set", "ingest.val.dvs_gesture=0"]) == 0  # both training users stay in train
    out = capsys.readouterr().out
    assert "warning: train: 3 of 5 samples are empty" in out and "1 recording(s) hold no event at all: " \
        "user01_lab.aedat" in out
    assert "warning: test" not in out
    s = open_event_store(store)
    c = s.attrs["counts"]
    assert (c["train.empty_samples"], c["train.empty_recordings"], c["test.empty_samples"],
            c["test.empty_recordings"], c["empty_samples"]) == (3, 1, 0, 0, 3)
    assert s["train"].attrs["empty_recordings"] == ["user01_lab.aedat"] and s["test"].attrs["empty_recordings"] == []
    assert bin_main(["dvs_gesture", "--store", str(store), "--T", "2", "--no-progress",
                     "--set", f"paths.frames_root={tmp_path / 'frames'}"]) == 0
    err = capsys.readouterr().err
    assert "warning: dvs_gesture/train: 3 of 5 samples are empty" in err and "dvs_gesture/test" not in err


def test_an_empty_cifar_recording_is_one_empty_sample(tmp_path):
    """A whole-recording dataset: a header-only AEDAT 2.0 file gives one sample with no event, counted."""
    import numpy as np

    from pipeline.config import IngestConfig
    from pipeline.datasets.cifar10_dvs import CLASSES
    from pipeline.ingest import ingest
    from pipeline.io.aedat2 import write_aedat20

    from tests.conftest import make_cifar_tree

    root = tmp_path / "raw"
    make_cifar_tree(root, per_class=2)
    none = np.zeros(0, np.int64)
    write_aedat20(root / CLASSES[0] / f"cifar10_{CLASSES[0]}_0.aedat", none, none, none, none)
    c = ingest(get_spec("cifar10_dvs"), root, tmp_path / "c.zarr", IngestConfig(), progress=False)["counts"]
    # 2 per class: tet puts both in train, the default ingest.val carves index 1 of each class (never all)
    assert (c["train.empty_samples"], c["train.empty_recordings"], c["train.samples"], c["val.samples"]) == (1, 1, 10, 10)


def test_a_split_of_empty_samples_only_is_refused_and_nothing_published(tmp_path, capsys):
    from pipeline.ingest import main

    root = _gesture(tmp_path / "raw", {
        "user01_lab": (500, _windows((0, 25_000), (25_000, 50_000))),
        "user02_lab": (0, _windows((0, 1000), (1000, 2000))),  # the whole test split: header only
    }, ["user01_lab"], ["user02_lab"])
    store = tmp_path / "ev.zarr"
    assert main(["dvs_gesture", "--raw", str(root), "--out", str(store), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"error: {root}: every one of the 2 samples of the test split is empty" in err
    assert "1 of its recordings hold no event at all" in err and "Traceback" not in err
    assert not store.exists() and _no_temporaries(tmp_path) == []


def _store_with_empty_split(path: Path) -> Path:
    """A store written directly (bypassing ingest's refusal, like an older store): its test split holds only
    empty samples."""
    import numpy as np

    from pipeline.store import EventStoreWriter

    with EventStoreWriter(path, "zarr") as w:
        for split, n in (("train", 3), ("test", 0)):
            s = w.split(split)
            for i in range(4):
                t = np.arange(n, dtype=np.int64) + 1000 * i
                s.add(np.ones(n), np.ones(n), t, np.ones(n), label=i % 2, recording=0, start_us=1000 * i,
                      end_us=1000 * i + 999)
            w.finish_split(split, {"recordings": [{"name": "r"}], "counts": {}})
        w.finish({"dataset": "dvs_gesture", "classes": ["a", "b"], "sensor_size": [128, 128, 2], "store_id": "x" * 64,
                  "split_scheme": "official", "reader_version": "test", "sources": [], "counts": {}, "overlaps": []})
    return path


def test_bin_and_train_refuse_a_split_of_empty_samples_before_binning(tmp_path, capsys):
    from pipeline.bin import main as bin_main

    store = _store_with_empty_split(tmp_path / "ev.zarr")
    frames = tmp_path / "frames"
    assert bin_main(["dvs_gesture", "--store", str(store), "--T", "2", "--no-progress",
                     "--set", f"paths.frames_root={frames}"]) == 1
    assert "every one of the 4 samples of the test split is empty" in capsys.readouterr().err
    assert _train_one_epoch(store, tmp_path / "run", frames) == 1
    assert "every one of the 4 samples of the test split is empty" in capsys.readouterr().err
    assert not frames.exists() and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------- the plan, up front
@pytest.mark.parametrize("attack, exit_code, match", [
    ("delete the last label csv", 2, "user03_lab_labels.csv not found (the label file of"),
    ("delete the last recording", 2, "user03_lab.aedat (listed in"),
    ("bad row in the last label csv", 1, "user03_lab_labels.csv, row 3: expected three integers"),
    ("bad header in the last recording", 1, "user03_lab.aedat at byte 0"),
])
def test_the_whole_plan_is_checked_before_any_recording_is_read(tmp_path, capsys, no_reads, attack, exit_code,
                                                                 match):
    """A missing label csv used to be found only when it was hashed, after every earlier recording was decoded
    and written; a bad csv row or header in the last recording, after minutes of work. Now: before any read."""
    from pipeline.ingest import main

    root = _gesture(tmp_path / "raw", {f"user0{u}_lab": (500, _windows((0, 25_000), (25_000, 50_000)))
                                       for u in (1, 2, 3)}, ["user01_lab", "user02_lab"], ["user03_lab"])
    last = root / "user03_lab.aedat"
    if attack == "delete the last label csv":
        (root / "user03_lab_labels.csv").unlink()
    elif attack == "delete the last recording":
        last.unlink()
    elif attack == "bad row in the last label csv":
        (root / "user03_lab_labels.csv").write_text("class,startTime_usec,endTime_usec\n1,0,5\n2,x,9\n")
    else:
        last.write_bytes(b"#!AER-DAT9.9\r\n" + last.read_bytes()[14:])
    store = tmp_path / "ev.zarr"
    assert main(["dvs_gesture", "--raw", str(root), "--out", str(store), "--no-progress"]) == exit_code
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert not store.exists() and _no_temporaries(tmp_path) == []


def test_a_missing_aedat4_decoder_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, no_reads):
    """`aedat` is an optional extra: without it, an AEDAT 4 folder is refused at planning, naming the file and
    the pip command, instead of an ImportError traceback from the first AEDAT 4 recording decoded."""
    import sys

    import numpy as np

    from pipeline.ingest import main

    from tests.dv_files import events, write_dv

    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    for name in ("clap/a.aedat4", "wave/b.aedat4"):
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        write_dv(raw / name, *events(rng, 300, 128, 128), camera="DVS128_0001", resolution=(128, 128))
    monkeypatch.setitem(sys.modules, "aedat", None)  # `import aedat` now raises ImportError
    store = tmp_path / "r.zarr"
    assert main(["recordings", "--raw", str(raw), "--out", str(store), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error: {raw / 'clap' / 'a.aedat4'} and 1 more recording(s): AEDAT 4.0, reading AEDAT 4 files needs the " \
           "optional 'aedat' decoder: pip install" in err
    assert "Traceback" not in err and not store.exists()


# ------------------------------------------------------------------------------------------- read-only folders
@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)``: chmod 0o555; for root, whom modes do not bind, `os.access` also answers for that
    folder as it does on a read-only mount (EROFS), which is what `pipeline.guards.check_writable` asks."""
    import os

    made: list[Path] = []
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and Path(os.path.abspath(path)) in made:
            return False
        return real_access(path, mode, *args, **kwargs)

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
        made.append(Path(os.path.abspath(folder)))
        return folder

    if os.geteuid() == 0:
        monkeypatch.setattr(os, "access", access)
    yield make
    for folder in made:
        folder.chmod(0o755)


def test_a_read_only_events_folder_is_refused_before_any_read(tmp_path, capsys, read_only, no_reads):
    from pipeline.ingest import main

    root = _gesture(tmp_path / "raw", {f"user0{u}_lab": (500, _windows((0, 25_000))) for u in (1, 2)},
                    ["user01_lab"], ["user02_lab"])
    events = read_only(tmp_path / "events")
    assert main(["dvs_gesture", "--raw", str(root), "--out", str(events / "sub" / "ev.zarr"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {events / 'sub'}: cannot write the event store there: the folder (its existing "
                          f"parent {events}) is read-only") and "Traceback" not in err
    assert list(events.iterdir()) == []


def test_read_only_frames_and_run_folders_are_refused_before_any_cache_is_built(learnable_store, tmp_path, capsys,
                                                                               read_only):
    from pipeline.bin import main as bin_main

    frames = read_only(tmp_path / "frames")
    assert bin_main(["dvs_gesture", "--store", str(learnable_store), "--T", "2", "--no-progress",
                     "--set", f"paths.frames_root={frames}"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {frames}: cannot write the frame caches there")
    assert _train_one_epoch(learnable_store, tmp_path / "run", frames) == 2
    assert f"error: {frames}: cannot write the frame caches there" in capsys.readouterr().err
    runs = read_only(tmp_path / "runs")
    assert _train_one_epoch(learnable_store, runs / "run", tmp_path / "frames2") == 2
    assert f"error: {runs / 'run'}: cannot write the run (checkpoint, history, metrics) there" in \
        capsys.readouterr().err
    assert list(frames.iterdir()) == [] and list(runs.iterdir()) == [] and not (tmp_path / "frames2").exists()


def test_evaluate_refuses_a_read_only_run_folder_before_scoring(learnable_store, tmp_path, capsys, read_only,
                                                                monkeypatch):
    import pipeline.evaluate as evaluate_mod

    run = tmp_path / "run"
    assert _train_one_epoch(learnable_store, run, tmp_path / "frames") == 0
    monkeypatch.setattr(evaluate_mod, "evaluate_run", lambda *a, **k: pytest.fail("scored before the refusal"))
    read_only(run)
    capsys.readouterr()
    assert evaluate_mod.main([str(run), "--T", "2"]) == 2
    assert f"error: {run}: cannot write the evaluation" in capsys.readouterr().err
    assert not (run / "eval.json").exists()


# ------------------------------------------------------------------------------------------- a full disk
@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(after_bytes)``: every Zarr shard file (event store and frame cache columns) and every HDF5
    column block fails with ENOSPC once ``after_bytes`` have been written, after a partial write."""
    import errno

    import pipeline.store as store_mod

    state = {"left": 0}

    def enospc(written: int):
        state["left"] -= written
        if state["left"] < 0:
            raise OSError(errno.ENOSPC, "No space left on device")

    real_append, real_flush = store_mod._ShardFile.append, store_mod._H5Column._flush

    def append(self, data):
        real_append(self, data[: len(data) // 2])
        enospc(len(data))
        real_append(self, data[len(data) // 2:])

    def flush(self):
        enospc(self._fill * self.ds.dtype.itemsize)
        real_flush(self)

    def arm(after_bytes: int = 0):
        state["left"] = after_bytes
        monkeypatch.setattr(store_mod._ShardFile, "append", append)
        monkeypatch.setattr(store_mod._H5Column, "_flush", flush)

    return arm


@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_a_full_disk_while_ingesting_names_the_store_and_leaves_nothing(tmp_path, capsys, full_disk, fmt):
    from pipeline.ingest import main

    from tests.conftest import make_gesture_tree

    tree = make_gesture_tree(tmp_path / "raw", n_events=5000)
    store = tmp_path / "events" / f"ev.{'zarr' if fmt == 'zarr' else 'h5'}"
    full_disk(after_bytes=2000)
    assert main(["dvs_gesture", "--raw", str(tree.root), "--out", str(store), "--format", fmt, "--no-progress",
                 "--set", "ingest.chunk_events=1024", "--set", "ingest.shard_events=4096"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {store}: no space left on device while writing the event store: it needs about ")
    assert re.search(r"it needs about [\d.]+ KiB \(13 bytes per event before compression, ~1[0-9],[0-9]{3} events in "
                     r"[\d.]+ KiB of raw files\), [\d.]+ [KMGT]?i?B free there; nothing was written", err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not store.exists() and _no_temporaries(tmp_path / "events") == []


def test_a_full_disk_while_binning_names_the_cache_and_leaves_nothing(learnable_store, tmp_path, capsys, full_disk):
    from pipeline.bin import main as bin_main

    frames = tmp_path / "frames"
    full_disk(after_bytes=0)
    assert bin_main(["dvs_gesture", "--store", str(learnable_store), "--T", "2", "--out-size", "16", "16",
                     "--no-progress", "--set", f"paths.frames_root={frames}"]) == 1
    err = capsys.readouterr().err
    assert "no space left on device while writing the frame cache: it needs about 72.0 KiB (72 samples x 2 x 2 x " \
           "16 x 16 uint8, before compression)" in err and "Traceback" not in err
    assert not [p for p in frames.rglob("*") if p.is_file()] and _no_temporaries(frames) == []


def test_a_full_disk_while_writing_metrics_or_eval_is_one_line(learnable_store, tmp_path, capsys, monkeypatch):
    import errno

    import pipeline.evaluate as evaluate_mod
    import pipeline.train as train_mod
    from pipeline.store import atomic_output, write_atomic

    def full_for(name: str):
        def write(path, text):
            if Path(path).name != name:
                return write_atomic(path, text)
            with atomic_output(path) as tmp:
                tmp.write_text(text[: len(text) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        return write

    run = tmp_path / "run"
    monkeypatch.setattr(train_mod, "write_atomic", full_for("metrics.json"))
    assert _train_one_epoch(learnable_store, run, tmp_path / "frames") == 1
    assert f"error: {run / 'metrics.json'}: no space left on device while writing the metrics" in \
        capsys.readouterr().err
    assert not (run / "metrics.json").exists() and _no_temporaries(run) == []
    monkeypatch.setattr(train_mod, "write_atomic", write_atomic)
    assert _train_one_epoch(learnable_store, run, tmp_path / "frames") == 0
    monkeypatch.setattr(evaluate_mod, "write_atomic", full_for("eval.json"))
    capsys.readouterr()
    assert evaluate_mod.main([str(run), "--T", "2"]) == 1
    assert f"error: {run / 'eval.json'}: no space left on device while writing the evaluation" in \
        capsys.readouterr().err
    assert not (run / "eval.json").exists() and _no_temporaries(run) == []


def test_dataclass_defaults_are_params_yaml():
    """Code that builds a config without params.yaml (a library user, a test) gets the values `make repro` runs:
    the dataclass defaults and the repository's params.yaml agree, section by section."""
    from pipeline.config import BinConfig, EvaluateConfig, IngestConfig, PathsConfig

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    for section, cls in (("paths", PathsConfig), ("ingest", IngestConfig), ("bin", BinConfig),
                         ("train", TrainConfig), ("evaluate", EvaluateConfig)):
        assert load_section(section, cls, params) == cls(), section
