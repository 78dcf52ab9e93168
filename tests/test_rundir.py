"""The run-directory owner: layout, atomic writes, config pinning, the advisory lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lostreg.io.atomic import atomic_write_json, atomic_write_text
from lostreg.rundir import (
    CONFIG_FILE,
    PREDS_FILE,
    PredictionStore,
    RunConfigMismatch,
    RunDir,
    RunError,
    RunLockedError,
    RunNotFoundError,
)


def identity(config: dict) -> dict:
    return {key: config.get(key) for key in ("backbone", "lost")}


def test_atomic_writes_replace_whole_files_and_leave_no_temporaries(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})  # not JSON: nothing is replaced
    assert json.loads(path.read_text()) == {"a": 2}
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "no" / "such" / "dir.txt", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_pin_config_writes_once_and_refuses_another_identity(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    config = {"backbone": {"name": "dino"}, "lost": {"k_patches": 100}, "batch_size": 8}
    run.pin_config(config, identity)
    assert run.read_config() == config
    # Execution settings are not part of the identity: accepted, and the file keeps the first config.
    run.pin_config({**config, "batch_size": 1}, identity)
    assert run.read_config()["batch_size"] == 8
    with pytest.raises(RunConfigMismatch, match=r"lost\.k_patches: 100 in the run dir, 50 now"):
        run.pin_config({**config, "lost": {"k_patches": 50}}, identity)


def test_readers_name_what_is_wrong(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    with pytest.raises(RunNotFoundError, match="no such directory"):
        run.require(CONFIG_FILE)
    run.path.mkdir()
    with pytest.raises(RunNotFoundError, match="no config.yaml"):
        run.read_config()
    with pytest.raises(RunNotFoundError, match=f"no {PREDS_FILE}"):
        run.read_predictions()
    assert run.read_metrics() is None and run.read_run_info() == {"sessions": []}
    run.config_path.write_text("- a list\n")
    with pytest.raises(RunError, match="expected a mapping"):
        run.read_config()
    run.preds_path.write_text('{"image_id": "1"}\n{"image": "x.jpg"}\n')
    with pytest.raises(RunError, match=r"preds.jsonl:2: corrupt prediction line \(no image_id\)"):
        run.read_predictions()


def test_prediction_store_drops_a_partial_line_and_keeps_the_first_record(tmp_path: Path) -> None:
    store = PredictionStore(tmp_path / PREDS_FILE)
    store.append([{"image_id": "1", "v": 1}, {"image_id": "2", "v": 2}])
    with store.path.open("a") as f:
        f.write('{"image_id": "3", "v"')
    assert set(store.read()) == {"1", "2"}
    assert store.path.read_text().endswith('"v"'), "read() never modifies the file"
    assert set(store.load()) == {"1", "2"} and store.path.read_text().endswith("\n")
    store.append([{"image_id": "1", "v": 9}])
    assert store.read()["1"]["v"] == 1


def test_sessions_and_metrics(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.append_session({"command": "a"})
    run.append_session({"command": "b"})
    run.write_metrics({"total": 3})
    assert [s["command"] for s in run.read_run_info()["sessions"]] == ["a", "b"]
    assert run.read_metrics() == {"total": 3}


def test_second_writer_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    with run.lock("lostreg eval first"):
        with pytest.raises(RunLockedError, match=rf"pid {os.getpid()} .*lostreg eval first"):
            with RunDir(tmp_path / "run").lock("lostreg eval second"):
                pass
    with run.lock("again"):  # released on exit
        pass


_HOLDER = textwrap.dedent("""
    import sys, time
    from lostreg.rundir import RunDir
    with RunDir(sys.argv[1]).lock("holder"):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_lock_of_a_killed_process_is_released(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            with RunDir(tmp_path).lock():
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    deadline = time.monotonic() + 10
    while True:  # the kernel drops the lock with the process
        try:
            with RunDir(tmp_path).lock():
                break
        except RunLockedError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
