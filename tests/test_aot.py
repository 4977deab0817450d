"""`python -m invideo_jax.aot`: a tiny recipe's train and predict steps compiled for real TPU topologies by libtpu with
no TPU attached (one slice, and two slices joined by a DCN axis), the printed JSON checked; TPU names against the
Cloud TPU slice shapes; the simulated-CPU path."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from invideo_jax import aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = "configs/videomae_finetune.py:vit_s,frames=2"
TINY = ["--config.model.kwargs.depth=1", "--config.model.kwargs.width=64", "--config.model.kwargs.mlp_dim=128",
        "--config.model.kwargs.num_heads=2", "--config.model.kwargs.image_size=32", "--config.data.crop_size=32",
        "--config.optim.num_layers=1"]
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu not installed (pip install -e '.[tpu]'; make test installs it)")


def run_aot(*args) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TPU_SKIP_MDS_QUERY="1")
    out = subprocess.run([sys.executable, "-m", "invideo_jax.aot", *args, *TINY], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, out.stdout
    return json.loads(lines[0])


def check_memory(row, hbm):
    memory = row["per_device"]
    assert set(memory) == {"argument", "output", "alias", "temp", "generated_code", "peak"}
    assert memory["peak"] == pytest.approx(memory["argument"] + memory["output"] - memory["alias"] + memory["temp"],
                                           abs=2e-3)
    assert 0 < memory["peak"] < (1 - aot.FIT_MARGIN) * hbm and row["fits"] is True


@needs_libtpu
def test_tiny_recipe_compiles_for_a_v5e_2x2_slice():
    row = run_aot(f"--config={RECIPE},batch=8", "--config.eval_batch_size=8", "--topology=v5e:2x2")
    assert row["device_kind"] == "TPU v5 lite" and row["num_devices"] == 4 and row["topology"] == "v5e:2x2"
    assert row["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} and row["hbm_per_device"] == 16  # the recipe's FSDP
    check_memory(row, 16)
    check_memory(row["predict"], 16)
    assert row["per_device"]["generated_code"] > 0  # the TPU compiler's own figure (the CPU backend reports 0)
    assert row["flops_per_step"] > 0 and row["batch"] == 8 and row["dtype"] == ["bfloat16"]


@needs_libtpu
def test_two_slices_get_a_dcn_data_axis_with_accumulation_and_the_flash_kernel():
    row = run_aot(f"--config={RECIPE},batch=16,attn=tpu_flash", "--config.eval_batch_size=16", "--topology=v5e-4",
                  "--num_slices=2", "--predict=false", "--config.grad_accum_steps=2")
    assert row["device_kind"] == "TPU v5 lite" and row["num_devices"] == 8 and row["num_slices"] == 2
    assert row["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1} and row["dcn"] == {"dcn_data": 2}
    assert row["grad_accum_steps"] == 2
    assert row["attn_impl"] == ["tpu_flash"]  # the Pallas kernel, inside shard_map, compiled by the TPU compiler
    check_memory(row, 16)
    assert "predict" not in row


def test_cloud_tpu_names_give_the_published_slice_shapes():
    # Cloud TPU slice shapes: v4 and v5p names count TensorCores (two per chip), v5e and v6e names count chips.
    cases = {"v4-32": "v4:2x2x4", "v4-8": "v4:2x2x1", "v5p-128": "v5p:4x4x4", "v5p-64": "v5p:2x4x4",
             "v5p-256": "v5p:4x4x8", "v5e-16": "v5e:4x4", "v5e-8": "v5e:2x4", "v5e-256": "v5e:16x16",
             "v6e-64": "v6e:8x8", "v6e-1": "v6e:1x1", "v5p:4x4x4": "v5p:4x4x4", "v5e:2x2": "v5e:2x2"}
    assert {name: aot.parse_topology(name).name for name in cases} == cases
    assert aot.parse_topology("v5p-128").chips == 64
    assert aot._wraps((4, 4, 4)) == (True,) * 3 and aot._wraps((2, 4, 4)) == (False,) * 3
    assert aot._wraps((8, 16, 1)) == (False, True, False)
    for bad in ("v3-8", "v5e-12", "v5p-7", "v5p:4x4", "v5e:4x4x4", "tpu"):
        with pytest.raises(ValueError, match="topology"):
            aot.parse_topology(bad)


def test_cpu_topology_keeps_the_simulated_device_path():
    config = _tiny_config(batch=8)
    row = aot.compile_report(config, "cpu:4", predict=False)
    assert row["device_kind"] == "cpu" and row["num_devices"] == 4 and row["fits"] is None
    assert row["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} and row["per_device"]["peak"] >= 0
    with pytest.raises(ValueError, match="CPU devices"):
        aot.compile_report(config, "cpu:64")


def _tiny_config(batch):
    from configs import videomae_finetune
    c = videomae_finetune.get_config(f"vit_s,frames=2,batch={batch}")
    for flag in TINY:
        path, value = flag.removeprefix("--config.").split("=")
        *parents, leaf = path.split(".")
        node = c
        for parent in parents:
            node = node[parent]
        node[leaf] = int(value)
    return c


def test_model_settings_are_json_values_even_when_a_config_holds_dtype_objects():
    import jax.numpy as jnp
    import ml_collections
    config = ml_collections.ConfigDict({"model": {"kwargs": {
        "dtype": jnp.dtype(jnp.bfloat16), "llm": {"dtype": jnp.dtype(jnp.bfloat16), "remat": "full"},
        "vision": {"dtype": "float32"}}}})
    assert aot.model_settings(config, "dtype") == ["bfloat16", "float32"]
    assert json.loads(json.dumps(aot.model_settings(config, "dtype"))) == ["bfloat16", "float32"]
    assert aot.model_settings(config, "remat") == ["full"]
