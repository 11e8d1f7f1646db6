"""The simulator's model, deployment and memory rules (models/simulator/
model_spec.py, deployment.py, memory.py): parameter counts and checkpoint
bytes of public models, from their real config.json (tests/fixtures/
hf_configs), within 5% of the published figures; the KV cache per token and a
memory breakdown against hand arithmetic; impossible tensor/pipeline
parallelism and memory configurations refused with a reason that names the
numbers; and config.json files the simulator cannot use refused with the
field named."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from models.simulator.deployment import BLOCK_SIZES, Deployment, Topology, Workload, validate_parallelism
from models.simulator.hardware import Device, load_catalog
from models.simulator.memory import memory_breakdown
from models.simulator.model_spec import ModelConfigError, ModelSpec, load_model_spec, spec_from_config

FIXTURES = Path(__file__).parent / "fixtures" / "hf_configs"
GIB = 1024**3

# name: (published parameters, published checkpoint bytes, published active parameters or None).
# Bytes are the safetensors index's "total_size" (for SmolLM2, one model.safetensors without an
# index: its bf16 tensors, parameters x 2). Parameters are total_size / 2 for the bf16 checkpoints
# (the model cards round them: 8B, 70B, 7.24B, 7.61B, 135M, 46.7B, 30.5B, 3.8B).
# Active: Mistral's announcement (12.9B of 46.7B per token), Qwen3's card (3.3B activated).
# gemma-2-9b's checkpoint is float32 (torch_dtype in its config.json): 4 bytes a parameter;
# its 9,241,705,984 parameters are the count published for it (Keras/Kaggle presets, the hub).
PUBLISHED = {
    "Llama-3.1-8B": (8_030_261_248, 16_060_522_496, None),
    "Llama-3.1-70B": (70_553_706_496, 141_107_412_992, None),
    "Mistral-7B-v0.1": (7_241_732_096, 14_483_464_192, None),
    "Qwen2.5-7B": (7_615_616_512, 15_231_233_024, None),
    "SmolLM2-135M": (134_515_008, 269_030_016, None),
    "Mixtral-8x7B-v0.1": (46_702_792_704, 93_405_585_408, 12_900_000_000),
    "Qwen3-30B-A3B": (30_532_122_624, 61_064_245_248, 3_300_000_000),
    "Phi-3-mini-4k-instruct": (3_821_079_552, 7_642_159_104, None),
    "gemma-2-9b": (9_241_705_984, 36_966_823_936, None),
}


def spec(name: str) -> ModelSpec:
    return load_model_spec(FIXTURES / name)


@pytest.fixture(scope="module")
def catalog() -> dict[str, Device]:
    return load_catalog()


def test_every_fixture_has_a_published_figure():
    assert sorted(p.name for p in FIXTURES.iterdir() if (p / "config.json").is_file()) == sorted(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameters_and_bytes_within_5_percent_of_the_published_figures(name: str):
    params, checkpoint_bytes, active = PUBLISHED[name]
    model = spec(name)
    assert model.name == name
    assert model.params == pytest.approx(params, rel=0.05)
    assert model.params * model.bytes_per_param() == pytest.approx(checkpoint_bytes, rel=0.05)
    if active is None:
        assert model.active_params == model.params and model.experts == 1
    else:
        assert model.active_params == pytest.approx(active, rel=0.05)
        assert model.active_params < model.params / 3  # a few experts of many, not all of them


def test_the_llama_style_formula_is_exact_where_it_describes_the_whole_model():
    # No biases and two norms a layer: the formula counts every tensor of the checkpoint.
    for name in ("Llama-3.1-8B", "Llama-3.1-70B", "Mistral-7B-v0.1", "SmolLM2-135M", "Mixtral-8x7B-v0.1",
                 "Phi-3-mini-4k-instruct"):
        assert spec(name).params == PUBLISHED[name][0], name
    assert spec("Mixtral-8x7B-v0.1").active_params == 12_879_925_248
    # What the formula leaves out is tiny: Qwen2.5's q/k/v biases (28 layers x 4608),
    # Qwen3's q/k norms (48 x 256) and Gemma 2's two extra norms a layer (42 x 2 x 3584).
    assert PUBLISHED["Qwen2.5-7B"][0] - spec("Qwen2.5-7B").params == 28 * (3584 + 512 + 512)
    assert PUBLISHED["Qwen3-30B-A3B"][0] - spec("Qwen3-30B-A3B").params == 48 * 2 * 128
    assert PUBLISHED["gemma-2-9b"][0] - spec("gemma-2-9b").params == 42 * 2 * 3584


def test_shapes_read_from_the_configs():
    llama = spec("Llama-3.1-8B")
    assert (llama.layers, llama.hidden, llama.heads, llama.kv_heads, llama.head_dim) == (32, 4096, 32, 8, 128)
    assert (llama.vocab, llama.intermediate, llama.max_positions, llama.dtype) == (128256, 14336, 131072, "bfloat16")
    assert llama.quantization is None
    qwen3 = spec("Qwen3-30B-A3B")
    assert (qwen3.experts, qwen3.experts_per_token, qwen3.intermediate, qwen3.head_dim) == (128, 8, 768, 128)
    assert qwen3.heads * qwen3.head_dim == 4096 != qwen3.hidden  # head_dim from the config, not hidden / heads
    mixtral = spec("Mixtral-8x7B-v0.1")
    assert (mixtral.experts, mixtral.experts_per_token, mixtral.intermediate) == (8, 2, 14336)
    gemma = spec("gemma-2-9b")
    assert (gemma.head_dim, gemma.heads, gemma.kv_heads, gemma.dtype) == (256, 16, 8, "float32")
    assert json.loads(json.dumps(llama.as_dict()))["params"] == llama.params


def test_an_unsaid_tie_word_embeddings_takes_the_family_default():
    gemma = json.loads((FIXTURES / "gemma-2-9b" / "config.json").read_text())
    assert "tie_word_embeddings" not in gemma  # as published: Gemma ties by default
    head = gemma["vocab_size"] * gemma["hidden_size"]
    assert spec_from_config({**gemma, "tie_word_embeddings": True}, "g").params == spec("gemma-2-9b").params
    assert spec_from_config({**gemma, "tie_word_embeddings": False}, "g").params == spec("gemma-2-9b").params + head
    llama = json.loads((FIXTURES / "Llama-3.1-8B" / "config.json").read_text())
    del llama["tie_word_embeddings"]  # Llama's default is an untied lm_head
    assert spec_from_config(llama, "l").params == PUBLISHED["Llama-3.1-8B"][0]
    smol = spec("SmolLM2-135M")  # tied: the embeddings count once
    assert smol.params == 49152 * 576 + 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576) + 576


def test_bytes_per_parameter_follow_the_quantization():
    llama = spec("Llama-3.1-8B")
    assert llama.bytes_per_param() == 2
    assert llama.bytes_per_param(dtype="float32") == 4
    assert llama.bytes_per_param("fp8") == llama.bytes_per_param("int8") == 1
    assert llama.bytes_per_param("int4") == llama.bytes_per_param("awq") == 0.525
    awq = spec_from_config({**json.loads((FIXTURES / "Llama-3.1-8B" / "config.json").read_text()),
                            "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}, "awq")
    assert awq.quantization == "awq" and awq.bytes_per_param() == 0.525
    assert awq.bytes_per_param("fp8") == 1  # a deployment's quantization overrides the checkpoint's


# --- KV cache -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "per_token"),
    [
        ("Llama-3.1-8B", 2 * 32 * 8 * 128 * 2),  # 131072: 128 KiB a token
        ("Llama-3.1-70B", 2 * 80 * 8 * 128 * 2),  # 327680: 320 KiB
        ("Mistral-7B-v0.1", 2 * 32 * 8 * 128 * 2),
        ("Qwen2.5-7B", 2 * 28 * 4 * 128 * 2),  # 57344: 56 KiB
        ("SmolLM2-135M", 2 * 30 * 3 * 64 * 2),  # 23040
        ("Mixtral-8x7B-v0.1", 2 * 32 * 8 * 128 * 2),  # experts do not touch the cache
        ("Qwen3-30B-A3B", 2 * 48 * 4 * 128 * 2),  # 98304: 96 KiB
        ("Phi-3-mini-4k-instruct", 2 * 32 * 32 * 96 * 2),  # 393216: no GQA, 3072 / 32 = 96 dims
        ("gemma-2-9b", 2 * 42 * 8 * 256 * 4),  # float32 checkpoint
    ],
)
def test_kv_cache_bytes_per_token(name: str, per_token: int):
    assert spec(name).kv_bytes_per_token() == per_token


def test_kv_cache_bytes_per_token_known_figures_and_dtype():
    llama = spec("Llama-3.1-8B")
    assert llama.kv_bytes_per_token() == 131072
    assert llama.kv_bytes_per_token("float32") == 262144
    assert spec("gemma-2-9b").kv_bytes_per_token("bfloat16") == 2 * 42 * 8 * 256 * 2


# --- memory breakdown -----------------------------------------------------------------------------


def test_memory_breakdown_matches_a_hand_computation(catalog):
    llama, h100 = spec("Llama-3.1-8B"), catalog["H100-SXM"]
    b = memory_breakdown(llama, Topology(h100, devices_per_node=2), Deployment(tensor_parallel=2, block_size=16),
                         Workload(input_tokens=1000, output_tokens=500, concurrency=8))
    # Weights: 8,030,261,248 bf16 parameters split over 2 devices.
    assert b.weights_gb * GIB == 8_030_261_248
    # KV: 8 KV heads over TP 2 = 4 a device: 2 x 32 layers x 4 x 128 x 2 bytes.
    assert b.kv_per_token_bytes == 65536
    # 1500 tokens + 10% = 1650, rounded up to 16-token blocks: 104 blocks, 1664 tokens.
    assert b.tokens_per_sequence == 1664 and b.sequences == 8
    assert b.kv_cache_gb * GIB == 8 * 1664 * 65536  # 872,415,232
    # Activations: a 2048-token chunk x (4 x 4096 + 2 x 14336 / 2) x 2 bytes, + 8 x vocab float32 logits.
    assert b.activations_gb * GIB == 2048 * (4 * 4096 + 14336) * 2 + 8 * 128256 * 4
    assert b.overhead_gb == 0.75 + 0.25  # the runtime, + NCCL buffers for tensor parallelism
    need = 8_030_261_248 + 872_415_232 + 129_933_312 + GIB  # 9.41 GiB: no more than 10 GB
    assert b.total_gb * GIB == pytest.approx(need)
    assert b.buffer_gb == 1.0 and b.usable_gb == pytest.approx((80 - 1) * 0.95)
    assert b.fits and b.reason is None
    # The most sequences that fit: past 10 GB of need the buffer is 2 GB; each sequence adds its
    # 1664 tokens of KV and its logits, the prefill chunk stays at 2048 tokens.
    room = (80 - 2) * 0.95 * GIB - 8_030_261_248 - 2048 * (4 * 4096 + 14336) * 2 - GIB
    assert b.max_sequences == math.ceil(room / (1664 * 65536 + 128256 * 4)) - 1 == 641
    assert b.as_dict()["usable_gb"] == b.usable_gb and b.as_dict()["total_gb"] == b.total_gb

    # One device: all the weights, all 8 KV heads; the need passes 10 GB, so the buffer is 2 GB.
    one = memory_breakdown(llama, Topology(h100), Deployment(block_size=16),
                           Workload(input_tokens=1000, output_tokens=500, concurrency=8))
    assert one.weights_gb * GIB == 16_060_522_496 and one.kv_per_token_bytes == 131072
    assert one.kv_cache_gb * GIB == 8 * 1664 * 131072 and one.overhead_gb == 0.75
    assert one.total_gb > 10 and one.buffer_gb == 2.0 and one.usable_gb == pytest.approx(78 * 0.95)


def test_block_rounding_replicas_and_max_num_seqs(catalog):
    llama, h100 = spec("Llama-3.1-8B"), catalog["H100-SXM"]
    workload = Workload(input_tokens=100, output_tokens=28, concurrency=10)  # 128 + 10% = 140 tokens
    for block, tokens in ((8, 144), (16, 144), (32, 160)):
        b = memory_breakdown(llama, Topology(h100), Deployment(block_size=block), workload)
        assert b.tokens_per_sequence == tokens
    # 10 users over 3 replicas: 4 sequences each; max_num_seqs caps them.
    assert memory_breakdown(llama, Topology(h100, 3), Deployment(replicas=3), workload).sequences == 4
    assert memory_breakdown(llama, Topology(h100), Deployment(max_num_seqs=6), workload).sequences == 6


def test_kv_per_device_with_pipeline_parallelism_and_replicated_kv_heads(catalog):
    h100 = catalog["H100-SXM"]
    workload = Workload(input_tokens=100, output_tokens=100)
    # 80 layers over 3 stages: 27 on the busiest; 8 KV heads over TP 2: 4.
    b = memory_breakdown(spec("Llama-3.1-70B"), Topology(h100, 8), Deployment(tensor_parallel=2, pipeline_parallel=3),
                         workload)
    assert b.kv_per_token_bytes == 2 * 27 * 4 * 128 * 2
    assert b.weights_gb * GIB == pytest.approx(70_553_706_496 * 2 / 6)
    # SmolLM2's 3 KV heads over TP 9: vLLM keeps a whole head on each device.
    smol = memory_breakdown(spec("SmolLM2-135M"), Topology(h100, 9), Deployment(tensor_parallel=9), workload)
    assert smol.kv_per_token_bytes == 2 * 30 * 1 * 64 * 2


def test_moe_weights_count_every_expert(catalog):
    mixtral = spec("Mixtral-8x7B-v0.1")
    b = memory_breakdown(mixtral, Topology(catalog["H100-SXM"], 2), Deployment(tensor_parallel=2),
                         Workload(input_tokens=512, output_tokens=128))
    assert b.weights_gb * GIB == 46_702_792_704  # all 8 experts resident, not the 2 a token uses


def test_llama_70b_bf16_does_not_fit_one_h100_and_says_by_how_much(catalog):
    llama70 = spec("Llama-3.1-70B")
    workload = Workload(input_tokens=2000, output_tokens=500, concurrency=16)
    b = memory_breakdown(llama70, Topology(catalog["H100-SXM"]), Deployment(), workload)
    assert not b.fits and b.max_sequences == 0
    weights = 70_553_706_496 * 2 / GIB  # 131.42 GB
    assert b.weights_gb == pytest.approx(weights)
    assert f"weights {weights:.2f} GB" in b.reason
    assert f"needs {b.total_gb:.2f} GB per H100-SXM of {78 * 0.95:.2f} GB usable" in b.reason
    assert "80 GB less a 2 GB buffer" in b.reason and "95%" in b.reason
    assert f"KV cache {b.kv_cache_gb:.2f} GB for 16 sequences of 2752 tokens" in b.reason

    four = memory_breakdown(llama70, Topology(catalog["H100-SXM"], 4), Deployment(tensor_parallel=4), workload)
    assert validate_parallelism(llama70, Topology(catalog["H100-SXM"], 4), Deployment(tensor_parallel=4)) == []
    assert four.fits and four.reason is None
    assert four.weights_gb == pytest.approx(weights / 4)
    assert four.sequences == 16 <= four.max_sequences


def test_llama_8b_on_an_l4_fits_quantized_but_not_bf16_at_long_contexts(catalog):
    llama, l4 = spec("Llama-3.1-8B"), catalog["L4"]
    assert l4.memory_gb == 24
    modest = Workload(input_tokens=1000, output_tokens=256, concurrency=8)
    for quantization, bytes_per_param in (("int4", 0.525), ("fp8", 1.0)):
        b = memory_breakdown(llama, Topology(l4), Deployment(quantization=quantization), modest)
        assert b.weights_gb * GIB == pytest.approx(8_030_261_248 * bytes_per_param)
        assert b.fits, b.reason
        assert b.sequences == 8 <= b.max_sequences
        # The need passes 10 GB on the way to max_sequences: they are counted with the 2 GB buffer.
        at_max = memory_breakdown(llama, Topology(l4), Deployment(quantization=quantization, max_num_seqs=1024),
                                  Workload(input_tokens=1000, output_tokens=256, concurrency=b.max_sequences))
        assert at_max.fits and at_max.buffer_gb == 2.0, at_max.reason
    large = Workload(input_tokens=8000, output_tokens=2000, concurrency=64)
    b = memory_breakdown(llama, Topology(l4), Deployment(), large)
    assert not b.fits
    assert b.weights_gb * GIB == 8_030_261_248 * 2
    assert b.kv_cache_gb * GIB == 64 * 11008 * 131072  # 10000 tokens + 10% in 16-token blocks
    assert "24 GB less a 2 GB buffer" in b.reason and "64 sequences of 11008 tokens" in b.reason
    assert b.max_sequences < 64


@pytest.mark.parametrize("name", ["Llama-3.1-8B", "Qwen2.5-7B", "Mixtral-8x7B-v0.1"])
def test_max_sequences_agrees_with_fits(catalog, name: str):
    model = spec(name)
    checked = set()
    for device in ("L4", "A100-40GB", "H100-SXM"):
        for tp, quantization in ((1, None), (2, "fp8"), (4, "int4")):
            topology = Topology(catalog[device], devices_per_node=4)
            deployment = Deployment(tensor_parallel=tp, quantization=quantization, max_num_seqs=10**6)
            for concurrency in (1, 4, 16, 64, 256):
                workload = Workload(input_tokens=1500, output_tokens=500, concurrency=concurrency)
                b = memory_breakdown(model, topology, deployment, workload)
                checked.add(b.fits)
                assert b.fits == (b.sequences <= b.max_sequences), (device, tp, quantization, concurrency)
                # max_sequences fit, one more does not.
                if b.max_sequences:
                    at = memory_breakdown(model, topology, deployment,
                                          Workload(input_tokens=1500, output_tokens=500,
                                                   concurrency=b.max_sequences))
                    assert at.fits and at.max_sequences == b.max_sequences, (device, tp, quantization, concurrency)
                more = memory_breakdown(model, topology, deployment,
                                        Workload(input_tokens=1500, output_tokens=500,
                                                 concurrency=b.max_sequences + 1))
                assert not more.fits and more.reason, (device, tp, quantization, concurrency)
    assert checked == {True, False}  # the grid has both


# --- validation -----------------------------------------------------------------------------------


def one_reason(reasons: list[str], *fragments: str) -> str:
    """The one reason that holds every fragment."""
    matching = [r for r in reasons if all(f in r for f in fragments)]
    assert len(matching) == 1, (fragments, reasons)
    return matching[0]


@pytest.mark.parametrize(
    ("name", "devices_per_node", "nodes", "deployment"),
    [
        ("Llama-3.1-8B", 1, 1, Deployment()),
        ("Llama-3.1-8B", 4, 1, Deployment(tensor_parallel=2, pipeline_parallel=2)),
        ("Llama-3.1-70B", 8, 1, Deployment(tensor_parallel=8)),
        ("Llama-3.1-70B", 8, 1, Deployment(tensor_parallel=4, replicas=2)),
        ("Llama-3.1-70B", 4, 2, Deployment(tensor_parallel=4, pipeline_parallel=2)),
        ("Qwen2.5-7B", 4, 1, Deployment(tensor_parallel=4, quantization="fp8")),
        ("Qwen2.5-7B", 2, 1, Deployment(tensor_parallel=2, block_size=32, quantization="int4")),
        ("SmolLM2-135M", 9, 1, Deployment(tensor_parallel=9, block_size=8)),  # 3 KV heads, replicated
        ("SmolLM2-135M", 30, 1, Deployment(pipeline_parallel=30, quantization="int8")),
        ("Mixtral-8x7B-v0.1", 8, 1, Deployment(tensor_parallel=8)),
        ("Qwen3-30B-A3B", 8, 1, Deployment(tensor_parallel=8)),  # 4 KV heads divide 8
        ("gemma-2-9b", 2, 1, Deployment(tensor_parallel=2)),
    ],
)
def test_possible_deployments_have_no_reasons(catalog, name, devices_per_node, nodes, deployment):
    assert validate_parallelism(spec(name), Topology(catalog["H100-SXM"], devices_per_node, nodes), deployment) == []


def test_tensor_parallel_beyond_one_node_is_refused(catalog):
    reasons = validate_parallelism(spec("Llama-3.1-8B"), Topology(catalog["H100-SXM"], 4, 2),
                                   Deployment(tensor_parallel=8))
    assert reasons == ["tensor parallel 8 exceeds the 4 H100-SXM devices of one node"]


def test_heads_that_do_not_split_over_tensor_parallel_are_refused(catalog):
    reasons = validate_parallelism(spec("SmolLM2-135M"), Topology(catalog["L4"], 2), Deployment(tensor_parallel=2))
    one_reason(reasons, "9 attention heads", "tensor parallel 2")
    one_reason(reasons, "3 KV heads", "tensor parallel 2")  # 3 neither divides nor is divided by 2
    assert len(reasons) == 2


def test_kv_heads_neither_dividing_nor_divided_by_tensor_parallel_are_refused(catalog):
    qwen = spec("Qwen2.5-7B")  # 28 heads, 4 KV heads
    reasons = validate_parallelism(qwen, Topology(catalog["H100-SXM"], 8), Deployment(tensor_parallel=7))
    assert reasons == ["the model's 4 KV heads neither divide nor are divided by tensor parallel 7"]
    # 28 heads and 4 KV heads over 14: the heads split, 14 is no multiple of 4
    reasons = validate_parallelism(qwen, Topology(catalog["H100-SXM"], 16), Deployment(tensor_parallel=14))
    assert reasons == ["the model's 4 KV heads neither divide nor are divided by tensor parallel 14"]


def test_more_pipeline_stages_than_layers_are_refused(catalog):
    reasons = validate_parallelism(spec("SmolLM2-135M"), Topology(catalog["L4"], 32), Deployment(pipeline_parallel=32))
    assert reasons == ["pipeline parallel 32 exceeds the model's 30 layers"]


def test_more_devices_than_available_are_refused(catalog):
    reasons = validate_parallelism(spec("Llama-3.1-8B"), Topology(catalog["H100-SXM"], 4),
                                   Deployment(tensor_parallel=2, replicas=3))
    assert reasons == ["3 replica(s) x tensor parallel 2 x pipeline parallel 1 need 6 devices; 4 are available"]
    reasons = validate_parallelism(spec("Llama-3.1-70B"), Topology(catalog["H100-SXM"], 4),
                                   Deployment(tensor_parallel=4, pipeline_parallel=2))
    one_reason(reasons, "need 8 devices", "4 are available")


def test_groups_that_would_span_nodes_are_refused(catalog):
    # 12 devices for 12 needed, but a node of 6 holds one group of 4: two nodes hold 2 of the 3.
    reasons = validate_parallelism(spec("Llama-3.1-8B"), Topology(catalog["H100-SXM"], 6, 2),
                                   Deployment(tensor_parallel=4, pipeline_parallel=3))
    assert len(reasons) == 1
    one_reason(reasons, "3 groups of 4 devices", "2 node(s) of 6 devices")


@pytest.mark.parametrize("block_size", [0, 12, 48, -16])
def test_a_block_size_vllm_lacks_is_refused(catalog, block_size: int):
    assert {8, 16, 32} <= set(BLOCK_SIZES) and block_size not in BLOCK_SIZES
    reasons = validate_parallelism(spec("Llama-3.1-8B"), Topology(catalog["L4"]), Deployment(block_size=block_size))
    assert reasons == [f"block_size {block_size} is not one of {', '.join(map(str, BLOCK_SIZES))}"]


@pytest.mark.parametrize("quantization", ["awq", "int3", "fp4", ""])
def test_an_unknown_quantization_is_refused(catalog, quantization: str):
    reasons = validate_parallelism(spec("Llama-3.1-8B"), Topology(catalog["L4"]),
                                   Deployment(quantization=quantization))
    assert reasons == [f"quantization {quantization!r} is not one of fp8, int8, int4 or none"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("tensor_parallel", 0), ("pipeline_parallel", 0), ("replicas", 0), ("max_num_seqs", 0),
     ("tensor_parallel", -2), ("pipeline_parallel", -1), ("replicas", -3), ("max_num_seqs", -256)],
)
def test_zero_and_negative_sizes_are_refused(catalog, field: str, value: int):
    reasons = validate_parallelism(spec("Llama-3.1-8B"), Topology(catalog["H100-SXM"], 8),
                                   Deployment(**{field: value}))
    assert reasons == [f"{field} must be at least 1, got {value}"]


def test_every_reason_is_given_at_once(catalog):
    reasons = validate_parallelism(spec("SmolLM2-135M"), Topology(catalog["L4"], 2),
                                   Deployment(tensor_parallel=4, pipeline_parallel=31, block_size=7,
                                              quantization="awq"))
    for fragments in (("block_size 7",), ("'awq'",), ("tensor parallel 4 exceeds the 2 L4",),
                      ("9 attention heads", "tensor parallel 4"), ("3 KV heads", "tensor parallel 4"),
                      ("pipeline parallel 31", "30 layers"), ("need 124 devices", "2 are available")):
        one_reason(reasons, *fragments)
    assert len(reasons) == 7


# --- config.json the simulator cannot use ---------------------------------------------------------


def write_config(directory: Path, content: str | dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(content if isinstance(content, str) else json.dumps(content))
    return directory


LLAMA_8B = json.loads((FIXTURES / "Llama-3.1-8B" / "config.json").read_text())


def test_a_file_or_a_directory_is_read_and_named(tmp_path: Path):
    d = write_config(tmp_path / "my-model", LLAMA_8B)
    assert load_model_spec(d).name == "my-model"
    assert load_model_spec(d / "config.json") == load_model_spec(str(d))
    assert load_model_spec(d, name="llama").name == "llama"


def test_a_missing_config_json_is_refused_and_the_hub_never_asked(tmp_path: Path):
    for path in (tmp_path, tmp_path / "nowhere", tmp_path / "nowhere" / "config.json"):
        with pytest.raises(ModelConfigError, match="config.json") as info:
            load_model_spec(path)
        assert "the hub is never asked" in str(info.value)


@pytest.mark.parametrize("content", ["{not json", "", '{"hidden_size": 4096,}'])
def test_invalid_json_is_refused(tmp_path: Path, content: str):
    with pytest.raises(ModelConfigError, match="not readable JSON"):
        load_model_spec(write_config(tmp_path, content))


def test_binary_garbage_is_refused(tmp_path: Path):
    tmp_path.joinpath("config.json").write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ModelConfigError, match="not readable JSON"):
        load_model_spec(tmp_path)


def test_a_json_that_is_not_an_object_is_refused(tmp_path: Path):
    with pytest.raises(ModelConfigError, match="must be a JSON object"):
        load_model_spec(write_config(tmp_path, "[1, 2, 3]"))


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_hidden_layers", "32"), ("num_hidden_layers", 0), ("num_hidden_layers", -1), ("num_hidden_layers", 32.0),
     ("num_hidden_layers", True), ("hidden_size", "4096"), ("num_attention_heads", 0),
     ("num_key_value_heads", 0), ("num_key_value_heads", "8"), ("head_dim", -128)],
)
def test_a_field_that_is_no_positive_integer_is_named(tmp_path: Path, field: str, value):
    with pytest.raises(ModelConfigError) as info:
        load_model_spec(write_config(tmp_path, {**LLAMA_8B, field: value}))
    message = str(info.value)
    assert f"field {field!r} must be a positive integer" in message
    # numbers are shown; text is not echoed (a client may point model_path at a file that is no config)
    assert (repr(value) in message) if not isinstance(value, str) else ("got a str" in message)


@pytest.mark.parametrize("field", ["hidden_size", "num_hidden_layers", "num_attention_heads"])
def test_a_missing_required_field_is_named(tmp_path: Path, field: str):
    config = {k: v for k, v in LLAMA_8B.items() if k != field}
    with pytest.raises(ModelConfigError, match=f"field '{field}' must be a positive integer, got None"):
        load_model_spec(write_config(tmp_path, config))


T5_SMALL = {
    "architectures": ["T5ForConditionalGeneration"], "d_ff": 2048, "d_kv": 64, "d_model": 512,
    "decoder_start_token_id": 0, "dropout_rate": 0.1, "eos_token_id": 1, "initializer_factor": 1.0,
    "is_encoder_decoder": True, "layer_norm_epsilon": 1e-06, "model_type": "t5", "n_positions": 512,
    "num_heads": 8, "num_layers": 6, "output_past": True, "pad_token_id": 0,
    "relative_attention_num_buckets": 32, "vocab_size": 32128,
}


def test_an_encoder_decoder_is_refused(tmp_path: Path):
    with pytest.raises(ModelConfigError, match="encoder-decoder"):
        load_model_spec(write_config(tmp_path / "t5-small", T5_SMALL))
    # Even with decoder-like fields beside it, the flag decides.
    with pytest.raises(ModelConfigError, match="encoder-decoder"):
        load_model_spec(write_config(tmp_path / "hybrid", {**LLAMA_8B, "is_encoder_decoder": True}))
    # Without the flag, T5's fields are not a decoder's: refused, the first missing field named.
    unflagged = {k: v for k, v in T5_SMALL.items() if k != "is_encoder_decoder"}
    with pytest.raises(ModelConfigError, match="'hidden_size'"):
        load_model_spec(write_config(tmp_path / "unflagged", unflagged))


def test_a_multimodal_config_gives_its_language_model(tmp_path: Path):
    d = write_config(tmp_path / "llava", {"model_type": "llava", "text_config": LLAMA_8B})
    model = load_model_spec(d)
    assert model.params == PUBLISHED["Llama-3.1-8B"][0] and model.kv_bytes_per_token() == 131072


def test_the_checkpoint_dtype_and_quantization_are_read(tmp_path: Path):
    assert load_model_spec(write_config(tmp_path / "f16", {**LLAMA_8B, "torch_dtype": "float16"})).dtype == "float16"
    newer = {k: v for k, v in LLAMA_8B.items() if k != "torch_dtype"}
    assert load_model_spec(write_config(tmp_path / "new", {**newer, "dtype": "float32"})).dtype == "float32"
    assert load_model_spec(write_config(tmp_path / "none", newer)).dtype == "bfloat16"  # unsaid: bf16
    fp8 = load_model_spec(write_config(tmp_path / "fp8", {**LLAMA_8B, "quantization_config": {"quant_method": "fp8"}}))
    assert fp8.quantization == "fp8" and fp8.params * fp8.bytes_per_param() == PUBLISHED["Llama-3.1-8B"][0]
    assert math.isclose(load_model_spec(write_config(tmp_path / "gptq", {
        **LLAMA_8B, "quantization_config": {"quant_method": "gptq", "bits": 4}})).bytes_per_param(), 0.525)


def test_only_a_small_file_named_config_json_is_read(tmp_path: Path):
    """model_path may come from a client: no other file, and no huge one, is read through it."""
    secret = tmp_path / "secrets.json"
    secret.write_text('{"hidden_size": "sk-live-SECRET"}')
    with pytest.raises(ModelConfigError, match="no config.json") as info:
        load_model_spec(secret)
    assert "SECRET" not in str(info.value)
    leaky = write_config(tmp_path / "leaky", {**LLAMA_8B, "hidden_size": "sk-live-SECRET"})
    with pytest.raises(ModelConfigError, match="got a str") as info:
        load_model_spec(leaky)
    assert "SECRET" not in str(info.value)
    huge = tmp_path / "huge"
    huge.mkdir()
    (huge / "config.json").write_bytes(b" " * (5 * 1024**2) + json.dumps(LLAMA_8B).encode())
    with pytest.raises(ModelConfigError, match="larger than 4 MB"):
        load_model_spec(huge)


def test_absurd_dimensions_are_refused_not_overflowed(tmp_path: Path):
    with pytest.raises(ModelConfigError, match="num_hidden_layers|layers"):
        load_model_spec(write_config(tmp_path, {**LLAMA_8B, "num_hidden_layers": 10**400}))
