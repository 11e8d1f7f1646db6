"""The simulator's hardware (models/simulator/hardware.py): the catalog in
configs/hardware.yaml loads with datasheet figures, a bad catalog is refused
with the entry and field named, NVML names find their catalog entry, and this
host's devices come out of a GPU inventory plus a cached CPU measurement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.gpu import simulated
from models.simulator import hardware
from models.simulator.hardware import CatalogError, Device, host_devices, load_catalog, match_gpu, measure_cpu

REQUIRED = ("H100-SXM", "H100-PCIe", "H200", "A100-80GB", "A100-40GB", "L40S", "RTX-4090", "RTX-3090",
            "A10G", "L4", "T4", "V100", "MI300X", "CPU-EPYC-9654", "CPU-Xeon-8480", "CPU-generic-8core")

GOOD_ENTRY = {
    "kind": "gpu", "vendor": "X", "memory_gb": 24, "bandwidth_gbps": 500, "fp16_tflops": 50, "int8_tops": 100,
    "int4_tops": 0, "interconnect_gbps": 32, "interconnect_latency_us": 5, "cost_per_hour": 1.0,
}


@pytest.fixture(scope="module")
def catalog() -> dict[str, Device]:
    return load_catalog()


def test_the_catalog_has_every_required_device_with_datasheet_figures(catalog):
    assert set(REQUIRED) <= set(catalog)
    for name in REQUIRED:
        device = catalog[name]
        assert device.name == name and device.source == "catalog"
        assert device.memory_gb > 0 and device.bandwidth_gbps > 0 and device.fp16_tflops > 0
        assert device.int8_tops >= 0 and device.int4_tops >= 0 and device.cost_per_hour > 0
    gpus = {name: d for name, d in catalog.items() if d.kind == "gpu"}
    assert {"H100-SXM", "L4", "MI300X"} <= set(gpus) and catalog["CPU-EPYC-9654"].kind == "cpu"
    h100 = catalog["H100-SXM"]
    assert (h100.memory_gb, h100.bandwidth_gbps, h100.fp16_tflops) == (80, 3350, 989)  # dense, not 1979
    assert h100.int4_tops == 0  # Hopper has no INT4 tensor core
    assert (catalog["H200"].memory_gb, catalog["H200"].bandwidth_gbps) == (141, 4800)
    assert (catalog["MI300X"].memory_gb, catalog["MI300X"].bandwidth_gbps) == (192, 5300)
    assert (catalog["A100-80GB"].memory_gb, catalog["A100-80GB"].bandwidth_gbps) == (80, 2039)
    assert (catalog["A100-40GB"].memory_gb, catalog["L40S"].memory_gb, catalog["T4"].memory_gb) == (40, 48, 16)
    assert (catalog["V100"].memory_gb, catalog["L4"].bandwidth_gbps) == (32, 300)
    # NVLink modules talk far faster than PCIe cards; GPUs out-bandwidth CPUs.
    assert catalog["H100-SXM"].interconnect_gbps > 5 * catalog["H100-PCIe"].interconnect_gbps
    assert min(d.bandwidth_gbps for d in gpus.values()) > catalog["CPU-EPYC-9654"].bandwidth_gbps / 2
    assert catalog["CPU-generic-8core"].bandwidth_gbps < catalog["CPU-Xeon-8480"].bandwidth_gbps
    assert json.loads(json.dumps(h100.as_dict()))["aliases"] == list(h100.aliases)


def test_peak_throughput_follows_the_quantization(catalog):
    a100, h100, v100 = catalog["A100-80GB"], catalog["H100-SXM"], catalog["V100"]
    assert a100.peak_tflops(None) == a100.peak_tflops("bf16") == a100.peak_tflops("FP16") == 312
    assert a100.peak_tflops("int8") == a100.peak_tflops("fp8") == 624
    assert a100.peak_tflops("awq") == a100.peak_tflops("gptq") == a100.peak_tflops("int4") == 1248
    assert h100.peak_tflops("awq") == h100.int8_tops  # no INT4: the INT8 rate
    assert v100.peak_tflops("int4") == v100.peak_tflops("int8") == 125  # neither: the FP16 rate
    with pytest.raises(ValueError, match="unknown quantization 'int3'"):
        a100.peak_tflops("int3")


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "hardware.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fp16_tflops": None}, r"entry 'Bad', field 'fp16_tflops': Field required"),
        ({"bandwidth_gbps": -3}, r"entry 'Bad', field 'bandwidth_gbps': Input should be greater than 0 \(got -3\)"),
        ({"memory_gb": 0}, r"entry 'Bad', field 'memory_gb': Input should be greater than 0"),
        ({"int8_tops": -1}, r"entry 'Bad', field 'int8_tops': Input should be greater than or equal to 0"),
        ({"colour": "red"}, r"entry 'Bad', field 'colour': Extra inputs are not permitted"),
        ({"memory_gb": "80"}, r"entry 'Bad', field 'memory_gb': Input should be a valid number \(got '80'\)"),
        ({"kind": "tpu"}, r"entry 'Bad', field 'kind': Input should be 'gpu' or 'cpu'"),
        ({"aliases": ["ok", ""]}, r"entry 'Bad', field 'aliases.1': String should have at least 1 character"),
    ],
)
def test_a_bad_entry_is_refused_naming_the_file_entry_and_field(tmp_path, change, message):
    entry = {k: v for k, v in {**GOOD_ENTRY, **change}.items() if v is not None}
    path = _write(tmp_path, {"Good": GOOD_ENTRY, "Bad": entry})
    with pytest.raises(CatalogError, match=message) as err:
        load_catalog(path)
    assert str(err.value).startswith(f"{path}: ") and "'Good'" not in str(err.value)


def test_a_catalog_that_is_not_a_mapping_is_refused(tmp_path):
    with pytest.raises(CatalogError, match="top level must be a mapping of device name to figures, not list"):
        load_catalog(_write(tmp_path, [GOOD_ENTRY]))
    with pytest.raises(CatalogError, match="entry 'Bad': must be a mapping of field to value"):
        load_catalog(_write(tmp_path, {"Good": GOOD_ENTRY, "Bad": 3}))
    (tmp_path / "broken.yaml").write_text("A: [b\n")
    with pytest.raises(CatalogError, match=r"broken.yaml: line \d+, column \d+: invalid YAML"):
        load_catalog(tmp_path / "broken.yaml")
    with pytest.raises(CatalogError, match="missing.yaml: cannot read the file"):
        load_catalog(tmp_path / "missing.yaml")


def test_an_alias_claimed_twice_is_refused(tmp_path):
    path = _write(tmp_path, {"A": {**GOOD_ENTRY, "aliases": ["Card 9"]}, "B": {**GOOD_ENTRY, "aliases": ["card 9"]}})
    with pytest.raises(CatalogError, match="entry 'B', field 'aliases': 'card 9' is also an alias of 'A'"):
        load_catalog(path)


@pytest.mark.parametrize(
    ("nvml_name", "entry"),
    [
        ("NVIDIA H100 80GB HBM3", "H100-SXM"),
        ("NVIDIA H100 PCIe", "H100-PCIe"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
        ("NVIDIA A100-SXM4-40GB", "A100-40GB"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA GeForce RTX 4090", "RTX-4090"),
        ("NVIDIA GeForce RTX 3090", "RTX-3090"),
        ("Tesla T4", "T4"),
        ("Tesla V100-SXM2-32GB", "V100"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA L4", "L4"),
        ("nvidia l4", "L4"),
        ("AMD Instinct MI300X", "MI300X"),
        ("NVIDIA L40", None),  # "L4" is an alias, but only as a whole word
        ("NVIDIA XL4", None),
        ("NVIDIA B200", None),
        ("AMD EPYC 9654 96-Core Processor", None),  # CPU aliases are not GPUs
    ],
)
def test_nvml_names_find_their_catalog_entry(catalog, nvml_name, entry):
    device = match_gpu(nvml_name, catalog)
    assert (device.name if device else None) == entry


def test_the_longest_alias_wins():
    short = Device("short", "gpu", "X", 1, 1, 1, 0, 0, 0, 0, 1, aliases=("Card",))
    long = Device("long", "gpu", "X", 1, 1, 1, 0, 0, 0, 0, 1, aliases=("Card Pro",))
    for catalog in ({"s": short, "l": long}, {"l": long, "s": short}):
        assert match_gpu("Vendor Card Pro", catalog) is long
        assert match_gpu("Vendor Card", catalog) is short


FAKE_CPU = Device("host-cpu", "cpu", "AMD", 16, 20, 0.5, 0.5, 0.5, 0, 0, 0, source="measured")


def test_host_devices_group_gpus_by_name_and_take_their_memory(catalog, tmp_path):
    inventory = simulated([
        {"name": "NVIDIA H100 80GB HBM3", "memory_gb": 79.6},
        {"name": "NVIDIA L4", "memory_gb": 22.5},
        {"name": "NVIDIA H100 80GB HBM3", "memory_gb": 79.6},
        {"name": "Mystery Accelerator 9000", "memory_gb": 12},
    ])
    seen = []
    devices = host_devices(inventory, catalog, tmp_path, measure=lambda d: seen.append(d) or FAKE_CPU)
    assert seen == [tmp_path]
    assert [(h.device.name, h.count) for h in devices] == [
        ("H100-SXM", 2), ("L4", 1), ("Mystery Accelerator 9000", 1), ("host-cpu", 1)
    ]
    h100, l4, unknown, cpu = devices
    assert h100.device.memory_gb == 79.6 and h100.device.bandwidth_gbps == 3350 and h100.device.fp16_tflops == 989
    assert h100.device.source == "simulated" and "GPU 0, 2" in h100.note and "'H100-SXM'" in h100.note
    assert l4.device.memory_gb == 22.5 and l4.device.fp16_tflops == 121
    # Unknown: its own memory, the weakest catalog GPU's throughput, and a note that says so.
    weakest = min((d for d in catalog.values() if d.kind == "gpu"), key=lambda d: d.fp16_tflops)
    assert unknown.device.memory_gb == 12 and unknown.device.fp16_tflops == weakest.fp16_tflops
    assert unknown.device.bandwidth_gbps == weakest.bandwidth_gbps and unknown.device.kind == "gpu"
    assert "throughput is unknown" in unknown.note and repr(weakest.name) in unknown.note
    assert cpu.device is FAKE_CPU and "measured" in cpu.note


def test_a_host_without_gpus_still_has_its_cpu(catalog, tmp_path):
    devices = host_devices(simulated([]), catalog, tmp_path, measure=lambda d: FAKE_CPU)
    assert [(h.device, h.count) for h in devices] == [(FAKE_CPU, 1)]


def test_an_unknown_gpu_with_no_catalog_gpu_to_stand_in_is_an_error(catalog, tmp_path):
    cpus_only = {name: d for name, d in catalog.items() if d.kind == "cpu"}
    with pytest.raises(CatalogError, match="'Mystery' is not in the catalog"):
        host_devices(simulated([{"name": "Mystery", "memory_gb": 8}]), cpus_only, tmp_path, measure=lambda d: FAKE_CPU)


def test_the_cpu_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    device = measure_cpu(tmp_path)
    assert device.name == "host-cpu" and device.kind == "cpu" and device.source == "measured"
    assert device.bandwidth_gbps > 0 and device.fp16_tflops > 0 and device.memory_gb > 0
    assert device.int8_tops == device.int4_tops == device.fp16_tflops and device.cost_per_hour == 0
    cache = tmp_path / "simulator" / "host_cpu.json"
    stored = json.loads(cache.read_text())
    assert stored["device"] == device.as_dict() and stored["key"]["logical_cpus"] > 0

    def no_measuring(budget_s):
        raise AssertionError("measured although the cache holds this host")

    monkeypatch.setattr(hardware, "_measure", no_measuring)
    assert measure_cpu(tmp_path) == device


def test_a_cache_from_another_host_or_a_damaged_one_is_measured_over(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "_measure", lambda budget_s: (12.5, 0.25))
    cache = tmp_path / "simulator" / "host_cpu.json"
    cache.parent.mkdir()
    for damaged in ("{not json", "[]", json.dumps({"key": "x"}), json.dumps({"device": {}})):
        cache.write_text(damaged)
        device = measure_cpu(tmp_path)
        assert (device.bandwidth_gbps, device.fp16_tflops) == (12.5, 0.25)
        assert json.loads(cache.read_text())["device"]["bandwidth_gbps"] == 12.5
    stored = json.loads(cache.read_text())
    stored["key"]["cpu"] = "some other processor"
    stored["device"]["bandwidth_gbps"] = 999.0
    cache.write_text(json.dumps(stored))
    assert measure_cpu(tmp_path).bandwidth_gbps == 12.5
    # The right key but a figure that is no measurement: measured over too.
    stored = json.loads(cache.read_text())
    stored["device"]["fp16_tflops"] = "fast"
    cache.write_text(json.dumps(stored))
    assert measure_cpu(tmp_path).fp16_tflops == 0.25
