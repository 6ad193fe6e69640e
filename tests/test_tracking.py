"""pipeline.tracking: metrics.jsonl, TensorBoard and an offline W&B run, each read back."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from pipeline.tracking import RunLogger, WandbSettings

STEPS = [{"success_rate": 0.25 * step, "loss": 1.0 / step, "reward/r_se_mean": -0.5, "policy_version": step - 1} for step in (1, 2, 3)]


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline and quiet, its config, caches and service logs under tmp_path: no login prompt, no network,
    nothing written to the home dir."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR", "XDG_CACHE_HOME"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home"))


def wandb_records(path: Path) -> list:
    """The records of a small .wandb file: a 7-byte header, then LevelDB-log chunks (crc32c, length, type)
    each holding one whole protobuf Record (a file under one 32 KiB block has no split records)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B" and len(data) < 32 * 1024
    records, pos = [], 7
    while pos + 7 <= len(data):
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        assert kind == 1, "a record split over blocks"  # FULL
        records.append(Record.FromString(data[pos + 7 : pos + 7 + length]))
        pos += 7 + length
    return records


def item_key(item) -> str:
    return item.key or "/".join(item.nested_key)  # W&B fills one of the two


def test_run_logger_writes_jsonl_tensorboard_and_an_offline_wandb_run(tmp_path, offline_wandb):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    logger = RunLogger(run_dir, {"seed": 0, "reward": {"mode": "mise"}}, WandbSettings(project="mise-rl-test", name="three-steps"))
    for step, metrics in enumerate(STEPS, start=1):
        logger.log(step, metrics)
        assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == step  # flushed at once
    logger.log_summary({"steps": 3, "publish_to_first_token_s": {1: 0.25, 2: 0.5}})
    logger.close()

    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{**m, "step": s} for s, m in enumerate(STEPS, start=1)]

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]

    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    records = wandb_records(next(offline.glob("run-*.wandb")))
    history = [{item_key(i): json.loads(i.value_json) for i in r.history.item} for r in records if r.HasField("history")]
    logged = [(h["_step"], h["success_rate"], h["loss"], h["reward/r_se_mean"]) for h in history]
    assert logged == [(step, m["success_rate"], m["loss"], -0.5) for step, m in enumerate(STEPS, start=1)]
    summary = {item_key(i): i.value_json for r in records if r.HasField("summary") for i in r.summary.update}
    assert json.loads(summary["publish_to_first_token_s"]) == {"1": 0.25, "2": 0.5}
    (run,) = [r.run for r in records if r.HasField("run")]
    assert run.project == "mise-rl-test" and run.display_name == "three-steps"


def test_without_wandb_settings_nothing_of_wandb_is_written(tmp_path):
    logger = RunLogger(tmp_path, {}, None)
    logger.log(1, {"loss": 0.5, "note": "text is kept in metrics.jsonl only"})
    logger.log_summary({"steps": 1})
    logger.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"loss": 0.5, "note": "text is kept in metrics.jsonl only", "step": 1}
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*")) and not (tmp_path / "wandb").exists()


def test_disabled_wandb_starts_no_run(tmp_path):
    logger = RunLogger(tmp_path, {}, WandbSettings(project="p", mode="disabled"))
    logger.log(1, {"loss": 0.5})
    logger.close()
    assert logger.wandb_run is None and not (tmp_path / "wandb").exists()


def test_a_missing_wandb_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(ImportError, match=r"pip install -e '\.\[wandb\]'"):
        RunLogger(tmp_path, {}, WandbSettings(project="p"))
    assert not (tmp_path / "metrics.jsonl").exists()  # failed before it opened anything


def test_an_unknown_wandb_mode_is_refused():
    with pytest.raises(ValueError, match="mode='cloud' is invalid: use one of online, offline, disabled"):
        WandbSettings(project="p", mode="cloud")
