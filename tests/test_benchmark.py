"""The benchmark runs end to end on the tiny preset (no timed assertions)."""

import json
import os
import platform
import subprocess
import sys

import pytest
from conftest import load_experiment

from densenet_jax import benchmark, xla_flags


def test_benchmark_pipeline_mode_reports_every_part(capsys, tmp_path):
  args = benchmark.parse_args(
    "--model tiny --mode pipeline --steps 1 --repeats 1 --batch-size 16 "
    "--json -".split()
  )
  result = benchmark.run(args)
  for key in ("train", "train_pipeline", "eval", "host_batches", "augment"):
    assert result[f"{key}_img_s"] > 0
    assert len(result[f"{key}_runs_img_s"]) == 1
  assert result["train_compile_s"] > 0 and result["peak_host_mb"] > 0
  assert result["params"] == 962 and result["env"]["backend"] == "cpu"
  assert "train step fed by the host pipeline" in benchmark.table(result)
  # --summarize: earlier results as one markdown table, a row each.
  path = tmp_path / "r.json"
  path.write_text(json.dumps(result))
  capsys.readouterr()
  benchmark.main(["--summarize", str(path), str(path)])
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 4 and lines[0].startswith("| model | impl |")
  cells = [c.strip() for c in lines[2].strip("|").split("|")]
  assert cells[:6] == [
    "tiny",
    "fast",
    "float32",
    "1 x cpu",
    "16",
    "pipeline (synthetic)",
  ]
  assert float(cells[6].replace(",", "")) == round(result["train_img_s"], 1)


def test_benchmark_cli_fakes_devices_in_bfloat16():
  """A subprocess: the device count must be set before JAX starts."""
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "densenet_jax.benchmark",
      "--model",
      "tiny",
      "--devices",
      "2",
      "--dtype",
      "bfloat16",
      "--mode",
      "eval",
      "--steps",
      "1",
      "--repeats",
      "1",
      "--batch-size",
      "8",
      "--json",
      "-",
    ],
    capture_output=True,
    text=True,
    check=True,
    env={**os.environ, "XLA_FLAGS": ""},
  )
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["env"]["device_count"] == 2 and result["dtype"] == "bfloat16"
  assert result["eval_img_s"] > 0 and "train_img_s" not in result
  flags = result["env"]["xla_flags"]
  assert "--xla_force_host_platform_device_count=2" in flags
  for name, value in xla_flags.defaults().items():
    assert f"--{name}={value}" in flags


def test_xla_flag_defaults_respect_the_users_choice():
  env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=-reduce"}
  assert xla_flags.apply_defaults(env) == {}
  assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=-reduce"
  env = {}
  added = xla_flags.apply_defaults(env)
  assert added == xla_flags.defaults()
  assert env.get("XLA_FLAGS", "") == " ".join(
    f"--{k}={v}" for k, v in added.items()
  )


def test_cpu_peak_bounds_throughput_by_flops(tmp_path):
  """experiments/cpu_peak.py: images/s at the matrix-product rate are that
  rate over XLA's FLOPs per image, and training costs more than eval."""
  out = tmp_path / "peak.json"
  result = load_experiment("cpu_peak").main(
    [
      "--model",
      "tiny",
      "--batch-size",
      "2",
      "--matmul-size",
      "64",
      "--repeats",
      "1",
      "--output",
      str(out),
    ]
  )
  assert result["matmul_gflop_s"] > 0
  assert result["train_gflop_per_image"] > 2 * result["eval_gflop_per_image"]
  assert result["train_img_s_at_peak"] == pytest.approx(
    result["matmul_gflop_s"] / result["train_gflop_per_image"]
  )
  assert json.loads(out.read_text()) == result


@pytest.mark.parametrize("m", [2, 4])
def test_winograd_convolution_and_its_gradients_equal_the_direct_ones(m):
  """experiments/conv_algorithms.py's F(mxm,3x3): the same outputs and
  gradients as lax's convolution, on a non-square map."""
  import jax
  import numpy as np

  from densenet_jax import layers

  conv_algorithms = load_experiment("conv_algorithms")
  keys = jax.random.split(jax.random.key(m), 3)
  x = jax.random.normal(keys[0], (2, 8, 12, 5))
  kernel = jax.random.normal(keys[1], (3, 3, 5, 7))
  cotangent = jax.random.normal(keys[2], (2, 8, 12, 7))
  winograd = lambda x, k: conv_algorithms.winograd_conv(x, k, m)  # noqa: E731
  y, vjp = jax.vjp(winograd, x, kernel)
  y_ref, vjp_ref = jax.vjp(layers.conv_same, x, kernel)
  for got, want in zip((y, *vjp(cotangent)), (y_ref, *vjp_ref(cotangent))):
    scale = float(np.max(np.abs(want)))
    np.testing.assert_allclose(got, want, atol=1e-5 * scale)
  with pytest.raises(ValueError, match="divisible by 4"):
    conv_algorithms.winograd_conv(x[:, :6], kernel, 4)


def test_conv_algorithms_times_every_shape_mode_and_algorithm(tmp_path):
  out = tmp_path / "conv.json"
  conv_algorithms = load_experiment("conv_algorithms")
  result = conv_algorithms.main(
    "--model tiny --batch-size 2 --eval-chunk 1 --repeats 1 --output".split()
    + [str(out)]
  )
  # tiny: one 8 -> 4 channel layer at 32x32, one at 16x16
  assert {(r["size"], r["in"], r["out"]) for r in result["rows"]} == {
    (32, 8, 4),
    (16, 8, 4),
  }
  assert len(result["rows"]) == 2 * 2 * len(conv_algorithms.ALGORITHMS)
  assert max(r["relative_error"] for r in result["rows"]) < 1e-5
  assert sorted(result["network_ms"]) == sorted(
    f"{mode}/{a}"
    for mode in ("eval", "train")
    for a in conv_algorithms.ALGORITHMS
  )
  direct = [r["ms"] for r in result["rows"] if r["algorithm"] == "direct"]
  assert sum(direct) == pytest.approx(
    result["network_ms"]["eval/direct"] + result["network_ms"]["train/direct"]
  )
  assert json.loads(out.read_text()) == result


def test_cpu_model_names_the_generation(tmp_path):
  # Two generations behind one cloud model name: family, model, vectors.
  cpuinfo = tmp_path / "cpuinfo"
  for model, flags, vectors in (
    ("1", "avx avx2", "AVX2"),
    ("17", "avx2 avx512f", "AVX-512"),
  ):
    cpuinfo.write_text(
      f"processor\t: 0\ncpu family\t: 25\nmodel\t\t: {model}\n"
      f"model name\t: AMD EPYC\nflags\t\t: fpu {flags}\n\n"
      "processor\t: 1\nmodel name\t: other\n"
    )
    assert benchmark.cpu_model(str(cpuinfo)) == (
      f"AMD EPYC (family 25, model {model}, {vectors})"
    )
  cpuinfo.write_text("processor\t: 0\n")
  assert benchmark.cpu_model(str(cpuinfo)) == platform.processor()
