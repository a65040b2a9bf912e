"""summary: the table, parameter counts and checkpoint size; bad input."""

import re

import pytest

from densenet_jax import inference, summary


def test_summary_of_a_run(trained_workdir, capsys, unchanged):
  with unchanged(trained_workdir):
    result = summary.main(["--workdir", str(trained_workdir)])
  model = inference.load(trained_workdir)
  assert result["parameters"] == inference.num_parameters(
    model.variables["params"]
  )
  assert result["batch_statistics"] == inference.num_parameters(
    model.variables["batch_stats"]
  )
  files = [p for p in model.checkpoint.rglob("*") if p.is_file()]
  assert result["checkpoint_bytes"] == sum(p.stat().st_size for p in files)
  assert result["checkpoints_bytes"] > result["checkpoint_bytes"]  # + latest
  out = capsys.readouterr().out
  assert "Total Parameters" in out and "stem_conv" in out
  assert f"parameters: {result['parameters']:,} trainable" in out
  assert f"checkpoint {model.checkpoint} (step {model.step}" in out


def test_summary_of_a_preset(capsys):
  ten = summary.main(["--model", "tiny"])
  hundred = summary.main(["--model", "tiny", "--num-classes", "100"])
  # The classifier: (features + 1) * classes parameters.
  features = (ten["parameters"] - hundred["parameters"]) // (10 - 100)
  assert features == 4 + 1  # 4 input features and a bias
  assert "checkpoint" not in ten
  assert ten["dtype"] == "float32"
  assert f"({ten['parameters'] * 4 / 1e3:.1f} kB as float32)" in (
    capsys.readouterr().out
  )


@pytest.mark.parametrize(
  "args, expected",
  [
    (["--model", "resnet"], "--model: invalid choice: 'resnet'"),
    (["--workdir", "{tmp}/nope"], "workdir .*nope does not exist"),
    (["--workdir", "{tmp}"], "workdir .* is empty: train into it first"),
    (["--model", "tiny", "--depth", "0"], "--depth: must be a positive"),
    (["--model", "tiny", "--workdir", "{tmp}"], "not allowed with argument"),
  ],
)
def test_bad_input_fails_clearly(tmp_path, args, expected, cli_error):
  message = cli_error(summary.main, [a.format(tmp=tmp_path) for a in args])
  assert re.search(expected, message), message
