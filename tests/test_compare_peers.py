"""experiments/compare_peers.py: runs every implementation, interleaved, and
reports medians and ratios (peers faked: no timed assertions)."""

import json

import pytest
from conftest import load_experiment


@pytest.fixture(scope="module")
def compare_peers():
  return load_experiment("compare_peers")


FAKE_TORCH = """
import json, sys
fast = "--channels-last" in sys.argv
print("noise")
print(json.dumps({"train_img_s": 40.0 if fast else 20.0, "eval_img_s": 100.0}))
"""
FAKE_KERAS = "import keras_is_not_installed_here\n"


def test_ratios_to_each_peer_and_the_fastest(compare_peers, tmp_path):
  peers = tmp_path / "peers"
  peers.mkdir()
  (peers / "torch_densenet.py").write_text(FAKE_TORCH)
  (peers / "keras_densenet.py").write_text(FAKE_KERAS)
  out = tmp_path / "out"
  report = compare_peers.main(
    f"--model tiny --batch-size 8 --steps 1 --repeats 2 --peers {peers} "
    f"--output {out}".split()
  )
  runs = report["runs"]
  assert [len(r) for r in runs.values()] == [2, 2, 2, 2]
  assert all(r["error"].startswith("skipped: ") for r in runs["keras-tf"])
  ours = report["summary"]["median"]["densenet_jax"]
  assert ours["train_img_s"] > 0 and ours["eval_img_s"] > 0
  ratios = report["summary"]["ours_over"]
  assert set(ratios) == {"pytorch", "pytorch-channels-last", "fastest peer"}
  assert ratios["fastest peer"]["train_img_s"] == pytest.approx(
    ours["train_img_s"] / 40.0
  )
  assert ratios["pytorch"]["train_img_s"] == pytest.approx(
    ours["train_img_s"] / 20.0
  )
  assert ratios["fastest peer"]["eval_img_s"] == pytest.approx(
    ours["eval_img_s"] / 100.0
  )
  commands = report["commands"]  # no paths of this machine
  assert commands["pytorch"] == "python torch_densenet.py --batch 8 --steps 1"
  assert commands["densenet_jax"].startswith("python -m densenet_jax.benchmark")
  saved = json.loads((out / "report.json").read_text())
  assert saved["summary"] == json.loads(json.dumps(report["summary"]))
  table = (out / "report.md").read_text()
  assert "| fastest peer |" in table and "skipped: " in table


def test_summary_skips_failed_runs(compare_peers):
  runs = {
    "densenet_jax": [
      {"train_img_s": 10.0, "eval_img_s": 50.0},
      {"error": "failed: boom"},
      {"train_img_s": 30.0, "eval_img_s": 70.0},
    ],
    "pytorch": [{"train_img_s": 10.0, "eval_img_s": 20.0}],
  }
  runs["densenet_jax-flax-layers"] = [{"train_img_s": 1.0, "eval_img_s": 1.0}]
  summary = compare_peers.summarise(runs)
  assert set(summary["ours_over"]) == {"pytorch", "fastest peer"}
  assert summary["median"]["densenet_jax"] == {
    "train_img_s": 20.0,
    "eval_img_s": 60.0,
  }
  ratios = summary["ours_over"]["pytorch"]
  assert ratios == {"train_img_s": 2.0, "eval_img_s": 3.0}
