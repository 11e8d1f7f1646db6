"""The simulator's learning and storage parts in process: the regressor is
trained on the shipped measurements, beats nothing it was not shown, corrects
only the devices it has records for, survives a save and a load; the
heuristic counts the users there are; simulator.db keeps a run whole or not
at all, and a bounded number of runs."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from models.simulator.deployment import Deployment, Topology, Workload
from models.simulator.hardware import load_catalog
from models.simulator.heuristic import predict
from models.simulator.model_spec import load_model_spec
from models.simulator.records import METRICS, read_jsonl, shipped_records
from models.simulator.regressor import Regressor, RegressorError, leave_one_out
from models.simulator.store import SimulatorStore
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "hf_configs"


@pytest.fixture(scope="module")
def records():
    found = shipped_records()
    assert len(found) == 31, "models/simulator/data/measured.jsonl ships 31 measured points"
    return found


def test_the_shipped_records_are_real_measurements_of_smollm2_on_this_cpu(records) -> None:
    for record in records:
        assert record.model.params == 134_515_008 and record.device.name == "host-cpu"
        assert all(record.measured[name] > 0 for name in METRICS)
        assert record.measured["ttft_ms"] < record.measured["e2e_latency_s"] * 1000


def test_leave_one_out_reports_both_methods_and_the_regressor_learns(records) -> None:
    evaluation = leave_one_out(records)
    assert evaluation["records"] == 31 and evaluation["method"] == "leave-one-out"
    errors = evaluation["mean_abs_pct_error"]
    assert len(evaluation["per_record"]) == 31
    # On points it never saw, the corrected figure is on the whole closer than the roofline's
    # for time to first token and total throughput (the metrics the heuristic gets least right).
    assert errors["regressor"]["ttft_ms"] < errors["heuristic"]["ttft_ms"]
    assert errors["regressor"]["total_throughput"] < errors["heuristic"]["total_throughput"]
    assert all(value < 25 for value in errors["regressor"].values())
    many = leave_one_out(records * 3)  # beyond 60 records: folds, each record still held out
    assert many["method"] == "10-fold" and many["records"] == 93 and len(many["per_record"]) == 93


def test_too_few_records_is_a_clear_error(records) -> None:
    with pytest.raises(RegressorError, match="at least 3"):
        Regressor.train(records[:2])
    with pytest.raises(RegressorError, match="at least 4"):
        leave_one_out(records[:3])


def test_the_regressor_corrects_only_devices_it_has_records_for(records, tmp_path: Path) -> None:
    regressor = Regressor.train(records)
    record = records[0]
    heuristic = predict(record.model, record.topology, record.deployment, record.workload)
    same = regressor.predict(record.model, record.topology, record.deployment, record.workload, heuristic)
    assert same.method == "regressor" and same.ttft_ms != heuristic.ttft_ms
    # Another host's CPU has the same name but other memory: the heuristic stands there.
    other_cpu = replace(record.device, memory_gb=record.device.memory_gb * 4)
    elsewhere = regressor.predict(record.model, Topology(other_cpu), record.deployment, record.workload)
    assert elsewhere.method == "heuristic"
    h100 = load_catalog()["H100-SXM"]
    on_gpu = regressor.predict(record.model, Topology(h100), record.deployment, record.workload)
    assert on_gpu.method == "heuristic"

    regressor.save(tmp_path)
    loaded = Regressor.load(tmp_path)
    assert loaded is not None and loaded.trained_on == 31 and loaded.knows(record.device)
    again = loaded.predict(record.model, record.topology, record.deployment, record.workload, heuristic)
    assert again.ttft_ms == pytest.approx(same.ttft_ms)
    (tmp_path / "meta.json").write_text(json.dumps([1, 2]))
    with pytest.raises(RegressorError, match="unreadable"):
        Regressor.load(tmp_path)
    assert Regressor.load(tmp_path / "nothing-here") is None


def test_idle_replicas_add_no_throughput() -> None:
    model = load_model_spec(FIXTURES / "Llama-3.1-8B")
    topology = Topology(load_catalog()["H100-SXM"], devices_per_node=8)
    one_user = Workload(input_tokens=512, output_tokens=128, concurrency=1)
    totals = {replicas: predict(model, topology, Deployment(replicas=replicas), one_user).total_throughput
              for replicas in (1, 2, 8)}
    assert totals[1] == pytest.approx(totals[2]) == pytest.approx(totals[8])
    eight_users = replace(one_user, concurrency=8)
    assert predict(model, topology, Deployment(replicas=8), eight_users).total_throughput > 4 * totals[1]


def config_row(rank: int) -> dict:
    return {"device": "L4", "rank": rank, "config": {"tensor_parallel": 1, "rank": rank},
            "metrics": {"error_rate": 0.0, "cost_per_million_tokens": float(rank), "throughput_per_user": 10.0}}


def test_a_run_is_stored_whole_or_not_at_all(tmp_path: Path) -> None:
    store = SimulatorStore(tmp_path / "simulator.db")
    broken = [config_row(1), {"device": "L4"}]  # the second has no rank: the insert fails half-way
    with pytest.raises(KeyError):
        store.save_run("w1", "m", "heuristic", {}, {}, broken, 1)
    assert store.run("w1") is None
    with sqlite3.connect(tmp_path / "simulator.db") as db:
        assert db.execute("SELECT count(*) FROM configurations").fetchone() == (0,)
    store.save_run("w2", "m", "heuristic", {"x": 1}, {}, [config_row(2), config_row(1)], 1)
    assert [item["rank"] for item in store.configurations("w2")] == [1, 2]


def test_old_runs_go_but_blacklisted_configurations_stay(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("models.simulator.store.KEEP_RUNS", 3)
    store = SimulatorStore(tmp_path / "simulator.db")
    store.save_run("first", "m", "heuristic", {}, {}, [config_row(1)], 1)
    failed = store.configurations("first")[0]["id"]
    assert store.blacklist("first", failed, "OOM")
    for index in range(5):
        store.save_run(f"later-{index}", "m", "heuristic", {}, {}, [config_row(1)], 1)
    kept = [run["workflow_id"] for run in store.runs(100)]
    assert kept[:3] == ["later-4", "later-3", "later-2"]
    assert "later-0" not in kept and "later-1" not in kept
    assert "first" in kept  # its blacklisted configuration still steers later runs
    assert store.failed_configs("m") == [{"device": "L4", "config": {"tensor_parallel": 1, "rank": 1},
                                          "feedback": "OOM"}]


def test_an_unreadable_stored_record_is_left_out(tmp_path: Path, records) -> None:
    store = SimulatorStore(tmp_path / "simulator.db")
    store.add_record(records[0], "job-1")
    with sqlite3.connect(tmp_path / "simulator.db") as db:
        db.execute("INSERT INTO records (job_id, created, record) VALUES ('job-1', 0, '{\"model\": 1}')")
    assert len(store.records()) == 1


def test_shipped_file_lines_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "measured.jsonl"
    bad.write_text('{"model": {}}\n')
    with pytest.raises(ValueError, match="measured.jsonl:1"):
        read_jsonl(bad)


def test_models_yaml_args_become_the_deployment_a_record_describes() -> None:
    from models.simulator.deployment import deployment_from_args

    cpu = deployment_from_args({}, "cpu")  # vLLM 0.32's own CPU defaults
    assert (cpu.max_num_seqs, cpu.block_size, cpu.chunked_prefill, cpu.prefix_caching) == (128, 128, True, True)
    assert deployment_from_args({}, "gpu").block_size == 16
    given = deployment_from_args({"max_num_seqs": 4, "enable-prefix-caching": "false", "quantization": "awq"}, "cpu")
    assert (given.max_num_seqs, given.prefix_caching, given.quantization) == (4, False, None)
    with pytest.raises(ValueError):
        deployment_from_args({"max_num_seqs": "lots"}, "cpu")
