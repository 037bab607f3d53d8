"""Nothing lost: writes reach the disk before they count, and a damaged newest checkpoint costs one checkpoint's
worth of steps, not the run."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from benchmark.core import cache
from benchmark.training.loop import Checkpoints, TrainingError, train_loop


@pytest.fixture
def fsyncs(monkeypatch):
    """Every os.fsync call: (is the descriptor a directory, its path)."""
    calls = []
    real = os.fsync

    def recording(fd):
        path = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        calls.append((os.path.isdir(path), path))
        return real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return calls


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name descriptors")
@pytest.mark.parametrize("writer", ["atomic_file", "atomic_path"])
def test_atomic_writes_fsync_the_file_and_then_its_folder(tmp_path, fsyncs, writer):
    target = tmp_path / "sub" / "out.bin"
    if writer == "atomic_file":
        with cache.atomic_file(target) as fh:
            fh.write(b"data")
    else:
        with cache.atomic_path(target) as tmp:
            with open(tmp, "wb") as fh:  # a library writing by name, without fsync of its own
                fh.write(b"data")
    assert target.read_bytes() == b"data"
    files = [p for is_dir, p in fsyncs if not is_dir]
    dirs = [p for is_dir, p in fsyncs if is_dir]
    assert files and all(".out.bin~" in p for p in files)  # the temporary file, before the rename
    assert dirs == [str(target.parent)]  # the rename itself, after
    assert not list(target.parent.glob(".out.bin~*"))


def test_temporary_files_of_dead_processes_are_removed_and_a_live_writers_are_not(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    host = cache._host()
    (tmp_path / "a" / "b").mkdir(parents=True)
    orphan = tmp_path / "a" / "b" / f".record.json~{host}~{pid}~x1y2.tmp"
    mine = tmp_path / "a" / f".ckpt.pt~{host}~{os.getpid()}~z3.tmp"
    elsewhere = tmp_path / f".record.json~otherhost~{pid}~q9.tmp"
    plain = tmp_path / "a" / "notes.tmp"
    for path in (orphan, mine, elsewhere, plain):
        path.write_bytes(b"half")
    assert cache.remove_orphan_temps(tmp_path) == [orphan]
    assert not orphan.exists() and mine.exists() and elsewhere.exists() and plain.exists()


def _loop(folder, total, stop_after=None, seen=None):
    state = {"w": torch.zeros(1)}

    def step_fn(step):
        state["w"] += 1
        if seen is not None:
            seen.append(step)
        return {"loss": 1.0, "images": 1}

    reached = train_loop(checkpoints=Checkpoints(folder), total_steps=total, step_fn=step_fn,
                         get_state=lambda: {"w": state["w"].clone()}, set_state=lambda s: state.update(w=s["w"]),
                         checkpoint_every=2, desc="t", progress=False, stop_after=stop_after)
    return reached, state



def test_row_writer_writes_rows_and_runs_of_rows_and_refuses_what_does_not_fit(tmp_path):
    import numpy as np

    path = tmp_path / "rows.npy"
    writer = cache.RowWriter.create(path, (5, 2, 3), np.uint8)
    rows = np.arange(30, dtype=np.uint8).reshape(5, 2, 3)
    writer[0] = rows[0]
    writer[1:4] = rows[1:4]
    writer[-1] = rows[4]
    with pytest.raises(ValueError, match="6 bytes for rows 1:3"):
        writer[1:3] = rows[1]
    with pytest.raises(ValueError, match="rows 4:5 of a file of 5 rows"):
        writer[4:7] = rows[2:5]  # past the end
    writer.close()
    np.testing.assert_array_equal(np.load(path), rows)


def test_a_scratch_array_is_mapped_from_a_file_deleted_with_it(tmp_path):
    import gc

    import numpy as np

    def fill(writer):
        for start in range(0, 10, 4):
            writer[start : min(10, start + 4)] = np.full((min(4, 10 - start), 3), start, dtype=np.int16)

    array = cache.scratch_rows(tmp_path / "scratch", "x.npy", (10, 3), np.int16, fill)
    (file,) = (tmp_path / "scratch").iterdir()
    assert isinstance(array, np.memmap) and not array.flags.writeable
    np.testing.assert_array_equal(array[:, 0], [0, 0, 0, 0, 4, 4, 4, 4, 8, 8])
    del array
    gc.collect()
    assert not file.exists()

    def failing(writer):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        cache.scratch_rows(tmp_path / "scratch", "y.npy", (10, 3), np.int16, failing)
    assert not list((tmp_path / "scratch").iterdir())  # nothing left behind

def test_a_damaged_newest_checkpoint_resumes_from_the_one_before(tmp_path, caplog):
    folder = tmp_path / "ckpt"
    _loop(folder, 10, stop_after=5)  # checkpoints at steps 2 and 4 (keep=2)
    ckpts = Checkpoints(folder)
    newest = ckpts.latest()
    assert newest[0] == 4
    newest[1].write_bytes(b"damaged")
    seen = []
    with caplog.at_level(logging.WARNING, logger="benchmark.training.loop"):
        reached, state = _loop(folder, 10, seen=seen)
    assert reached == 10 and seen[0] == 2 and float(state["w"]) == 10  # steps 2..9 redone, nothing else lost
    assert (folder / "ckpt-00000004.pt.unreadable").is_file()  # kept for a look, out of the way
    assert any("ckpt-00000004.pt is unreadable" in r.getMessage() for r in caplog.records)


def test_no_readable_checkpoint_at_all_is_one_clear_error(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "ckpt-00000002.pt").write_bytes(b"x")
    (folder / "ckpt-00000004.pt").write_bytes(b"y")
    with pytest.raises(TrainingError, match=r"no readable checkpoint in .*ckpt.*delete the folder"):
        _loop(folder, 10)


@pytest.fixture(scope="module")
def none_cfg():
    from benchmark.orchestration.runner import build_config
    from benchmark.plugins import load_plugins

    load_plugins()
    return build_config("none", "nsclc", "smoke", 0, "cpu", ["probe.bootstrap=0"])


def test_a_run_finished_by_another_process_while_this_one_waited_is_kept(tmp_path, none_cfg, monkeypatch):
    from benchmark.orchestration import runner

    first = runner.run_one(none_cfg, tmp_path, progress=False)
    run_dir = runner.run_dir_for(none_cfg, tmp_path)
    done = (run_dir / "record.json").read_bytes()
    (run_dir / "record.json").unlink()  # as it was when this process looked: unfinished
    real_enter = runner._RunLock.__enter__

    def other_process_finishes_first(self):
        (run_dir / "record.json").write_bytes(done)  # ... and it finished before this process got the lock
        return real_enter(self)

    monkeypatch.setattr(runner._RunLock, "__enter__", other_process_finishes_first)
    second = runner.run_one(none_cfg, tmp_path, progress=False)
    assert second.get("reused") and second["mlflow"]["run_id"] == first["mlflow"]["run_id"]
    assert (run_dir / "record.json").read_bytes() == done  # not deleted, not recomputed


def test_a_record_that_is_not_a_json_object_is_recomputed_with_a_warning(tmp_path, none_cfg, caplog):
    from benchmark.orchestration import runner

    run_dir = runner.run_dir_for(none_cfg, tmp_path)
    run_dir.mkdir(parents=True)
    (run_dir / "record.json").write_text("[1, 2]")
    with caplog.at_level(logging.WARNING, logger="benchmark"):
        record = runner.run_one(none_cfg, tmp_path, progress=False)
    assert not record.get("reused") and "test_unseen/balanced_accuracy" in record["metrics"]
    assert any("is not a run record" in r.getMessage() and "record.json" in r.getMessage() for r in caplog.records)


def test_results_jsonl_skips_a_torn_last_line_quietly_and_names_a_bad_line_elsewhere(tmp_path, caplog):
    from benchmark.core.tracking import read_records

    good = '{"run_id": "a", "metrics": {}}'
    torn = '{"run_id": "c", "me'
    (tmp_path / "results.jsonl").write_text(f'{good}\n[1, 2]\nnot json\n{good.replace("a", "b")}\n{torn}')
    with caplog.at_level(logging.WARNING, logger="benchmark.core.tracking"):
        records = read_records(tmp_path)
    assert [r["run_id"] for r in records] == ["a", "b"]
    named = sorted(r.getMessage() for r in caplog.records)
    assert len(named) == 2 and "results.jsonl line 2 " in named[0] and "results.jsonl line 3 " in named[1]



def test_the_next_append_cuts_a_torn_last_line_so_every_line_is_a_record(tmp_path):
    from benchmark.core.tracking import append_record, read_records

    (tmp_path / "results.jsonl").write_text('{"run_id": "a", "metrics": {}}\n{"run_id": "b", "me')
    append_record(tmp_path, {"run_id": "c", "metrics": {}})
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["run_id"] for line in lines] == ["a", "c"]
    assert [r["run_id"] for r in read_records(tmp_path)] == ["a", "c"]


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from benchmark.orchestration import runner
from benchmark.core import tracking
from benchmark.orchestration.runner import build_config, run_one

cfg = build_config("none", "nsclc", "smoke", 0, "cpu", ["probe.bootstrap=0"])
if sys.argv[2] == "during":  # killed while computing: its MLflow run was created, then nothing more
    runner._execute = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
else:  # killed after writing record.json, before closing its MLflow run
    real = tracking.Tracker.log_artifact
    def log_artifact(self, path, artifact_path=None):
        if Path(path).name == "record.json":
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, path, artifact_path)
    tracking.Tracker.log_artifact = log_artifact
run_one(cfg, Path(sys.argv[1]), progress=False)
"""


@pytest.mark.parametrize("when", ["during", "after_record"])
def test_an_mlflow_run_left_running_by_a_killed_process_is_closed_by_the_next_attempt(tmp_path, none_cfg, when):
    import subprocess
    import sys

    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from benchmark.orchestration import runner
    from tests.conftest import ROOT

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI", None)
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(tmp_path), when], env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("medibench-nsclc").experiment_id

    def states():
        runs = client.search_runs([experiment], run_view_type=ViewType.ALL)
        return sorted((r.info.status, r.info.run_id) for r in runs)

    assert [s for s, _ in states()] == ["RUNNING"]
    record = runner.run_one(none_cfg, tmp_path, progress=False)
    if when == "during":  # the orphan is KILLED and the run is done again, in a new MLflow run
        assert not record["reused"]
        assert sorted(s for s, _ in states()) == ["FINISHED", "KILLED"]
    else:  # the record is the result: reused, and its MLflow run finished with the record attached
        assert record["reused"] and states() == [("FINISHED", record["mlflow"]["run_id"])]
        assert "record.json" in [a.path for a in client.list_artifacts(record["mlflow"]["run_id"])]


HOLD_LOCK = """
import sys, time
from pathlib import Path
from benchmark.orchestration.runner import _RunLock
with _RunLock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def test_the_run_lock_names_its_holder_and_dies_with_it(tmp_path):
    import signal
    import socket
    import subprocess
    import sys

    from benchmark.orchestration.runner import RunBusy, _RunLock
    from tests.conftest import ROOT

    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunBusy, match=rf"being computed by another process \({socket.gethostname()} "
                                          rf"{holder.pid}\)"):
            with _RunLock(tmp_path):
                pass
        holder.send_signal(signal.SIGKILL)  # no clean-up runs: the OS drops the lock with the process
        holder.wait(timeout=30)
        with _RunLock(tmp_path):
            assert (tmp_path / ".lock").read_text() == f"{socket.gethostname()} {os.getpid()}"
    finally:
        holder.kill()


def test_a_lock_file_left_by_a_dead_host_does_not_block_the_run(tmp_path):
    from benchmark.orchestration.runner import _RunLock

    (tmp_path / ".lock").write_text("a-host-that-died 4242")  # what a crashed machine leaves behind
    with _RunLock(tmp_path):
        pass


def test_a_full_disk_while_writing_the_record_is_one_line_and_loses_nothing(tmp_path, monkeypatch, capsys):
    import errno

    from benchmark.cli import main
    from benchmark.core.tracking import read_records
    from benchmark.orchestration import runner

    real = runner.atomic_write_json

    def disk_full(path, obj):
        if path.name == "record.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, obj)

    args = ["run", "--method", "none", "--task", "nsclc", "--preset", "smoke", "--out", str(tmp_path),
            "--no-progress", "--set", "probe.bootstrap=0"]
    monkeypatch.setattr(runner, "atomic_write_json", disk_full)
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot write ") and "record.json: No space left on device" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert read_records(tmp_path) == [] and not list(tmp_path.glob("runs/*/*/*/record.json"))  # no half record
    monkeypatch.setattr(runner, "atomic_write_json", real)  # space again: the same command finishes the run
    assert main(args) == 0 and len(read_records(tmp_path)) == 1


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MB file system (tmpfs), too small for a run: the kernel's own ENOSPC, no simulation."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"needs permission to mount a tmpfs (root): {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk_is_one_line_and_the_same_command_finishes_once_there_is_space(small_disk):
    import subprocess

    from tests.conftest import run_cli

    args = ["run", "--method", "none", "--task", "nsclc", "--preset", "smoke", "--out", str(small_disk / "results"),
            "--no-progress", "--set", "probe.bootstrap=0"]
    full = run_cli(*args)
    assert full.returncode == 1, full.stderr
    last = full.stderr.strip().splitlines()[-1]
    # whichever write meets the full disk first: a cache or record file (ENOSPC) or the MLflow store (sqlite)
    assert last.startswith("error: cannot write ") and str(small_disk / "results") in last
    assert "No space left on device" in last or "the disk is full" in last
    assert "Traceback" not in full.stderr
    assert [line for line in full.stderr.splitlines() if not line.startswith(("INFO", "WARNING"))] == [last]
    assert not [p for p in small_disk.rglob("*") if p.name.endswith(".tmp")]  # no partial file
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert len((small_disk / "results" / "results.jsonl").read_text().splitlines()) == 1
