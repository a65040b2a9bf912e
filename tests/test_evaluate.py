"""evaluate: the training run's test score, its outputs, and bad input."""

import json
import re
import shutil

import numpy as np
import pytest
from conftest import set_run_config

from densenet_jax import checkpointing, evaluate, reporting


def test_evaluate_equals_what_training_reported(trained_workdir, capsys):
  result = evaluate.main(["--workdir", str(trained_workdir)])
  trained = json.loads((trained_workdir / "test_result.json").read_text())
  assert result["accuracy"] == trained["test_accuracy"]  # to the last bit
  np.testing.assert_allclose(result["loss"], trained["test_loss"], rtol=1e-6)
  assert result["examples"] == trained["test_examples"] == 500
  assert result["step"] == trained["checkpoint_step"]
  assert result["checkpoint"] == f"checkpoints/best/{result['step']}"
  confusion = np.array(result["confusion_matrix"])
  assert confusion.shape == (10, 10) and confusion.sum() == 500
  assert np.trace(confusion) == round(result["accuracy"] * 500)
  assert list(result["per_class_accuracy"]) == [f"class{i}" for i in range(10)]
  assert result["images_per_s"] > 0
  out = capsys.readouterr().out
  assert "for this checkpoint: equal" in out
  assert "images/s" in out and "class9" in out
  saved = json.loads((trained_workdir / "eval" / "best_test.json").read_text())
  assert saved["accuracy"] == result["accuracy"]
  assert (trained_workdir / "eval" / "best_test_confusion.png").stat().st_size


def test_evaluate_another_split_into_another_folder(
  trained_workdir, tmp_path, unchanged
):
  with unchanged(trained_workdir):
    result = evaluate.main(
      [
        "--workdir",
        str(trained_workdir / "checkpoints" / "latest"),
        "--split",
        "validation",
        "--batch-size",
        "64",
        "--output",
        str(tmp_path),
      ]
    )
  assert result["examples"] == 64  # the smoke config's val_size
  assert result["split"] == "validation"
  assert sorted(p.name for p in tmp_path.iterdir()) == [
    "latest_validation.json",
    "latest_validation_confusion.png",
  ]


def test_evaluate_with_more_test_time_views(trained_workdir, capsys):
  result = evaluate.main(
    ["--workdir", str(trained_workdir), "--tta-translate-px", "2"]
  )
  assert result["tta"] == {"flip": False, "translate_px": 2}
  trained = json.loads((trained_workdir / "test_result.json").read_text())
  assert result["examples"] == 500 and result["loss"] != trained["test_loss"]
  # Not the function training scored: no comparison with its number.
  assert "training reported" not in capsys.readouterr().out
  saved = trained_workdir / "eval" / "best_test_translate2.json"
  assert json.loads(saved.read_text())["loss"] == result["loss"]


def test_kept_checkpoints_score_what_training_scored(trained_workdir, capsys):
  latest = trained_workdir / "checkpoints" / "latest"
  assert checkpointing.kept_steps(latest) == [4, 8]  # both epochs' ends
  rows = evaluate.main(["--workdir", str(trained_workdir), "--kept"])
  in_run = reporting.read_metrics_csv(trained_workdir / "metrics.csv")
  assert [row["epoch"] for row in rows] == [1, 2]
  for row, trained in zip(rows, in_run):
    assert row["test_accuracy"] == trained["test_accuracy"]
    np.testing.assert_allclose(row["test_loss"], trained["test_loss"], 1e-6)
    assert row["wall_time_s"] == trained["wall_time_s"]
  out = trained_workdir / "eval"
  assert reporting.read_metrics_csv(out / "kept_test.csv") == rows
  assert (out / "kept_test_curves.png").stat().st_size
  assert "epoch 2 (" in capsys.readouterr().out


def test_evaluate_scores_the_checkpoint_training_tested(workdir_copy, capsys):
  set_run_config(workdir_copy, test_checkpoint="latest")
  last = reporting.read_metrics_csv(workdir_copy / "metrics.csv")[-1]
  tested = {"checkpoint": "latest", "checkpoint_step": 8}
  tested["test_accuracy"] = last["test_accuracy"]  # the last epoch's score
  (workdir_copy / "test_result.json").write_text(json.dumps(tested))
  result = evaluate.main(["--workdir", str(workdir_copy)])
  assert result["step"] == 8 and result["accuracy"] == last["test_accuracy"]
  assert "for this checkpoint: equal" in capsys.readouterr().out
  assert (workdir_copy / "eval" / "latest_test.json").is_file()


def _damage(workdir, how):
  """Returns the expected message after damaging the copy `workdir`."""
  step = next((workdir / "checkpoints" / "best").iterdir())
  if how == "missing":
    shutil.rmtree(workdir)
    return "workdir .*run does not exist"
  if how == "empty":
    shutil.rmtree(workdir)
    workdir.mkdir()
    return "workdir .*run is empty: train into it first"
  if how == "truncated":  # a copy cut short: no state item
    shutil.rmtree(step / "state")
    return f"cannot read checkpoint {step}"
  if how == "corrupted":
    for path in (step / "state").rglob("d/*"):
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return f"cannot read checkpoint {step} \\(truncated or corrupted\\?\\)"
  if how == "other preset":
    set_run_config(workdir, model="reference")
    return (
      f"checkpoint {step} was not made by model 'reference' with 10 classes"
      " \\(synthetic\\), as .*config.json says: params/\\S+ has shape "
    )
  if how == "other class count":
    set_run_config(workdir, dataset="cifar100")
    return (
      "not made by model 'tiny' with 100 classes \\(cifar100\\), as "
      ".*config.json says: params/classifier/bias has shape \\(10,\\) there, "
      "\\(100,\\) expected"
    )
  raise AssertionError(how)


@pytest.mark.parametrize(
  "how",
  [
    "missing",
    "empty",
    "truncated",
    "corrupted",
    "other preset",
    "other class count",
  ],
)
def test_bad_workdirs_fail_clearly_and_change_nothing(
  workdir_copy, how, cli_error, unchanged
):
  expected = _damage(workdir_copy, how)
  parent = workdir_copy.parent
  with unchanged(parent):
    message = cli_error(evaluate.main, ["--workdir", workdir_copy])
  assert re.search(expected, message), message


@pytest.mark.parametrize(
  "args, expected",
  [
    (["--dataset", "mnist"], "unknown dataset 'mnist'; choose one of"),
    (["--split", "tset"], "argument --split: invalid choice: 'tset'"),
    (["--batch-size", "0"], "--batch-size: must be a positive integer, not 0"),
    (["--tta-translate-px", "-1"], "must be an integer >= 0, not -1"),
    (["--checkpoint", "worst"], "--checkpoint: invalid choice: 'worst'"),
    (["--kept", "--split", "validation"], "--kept scores the test split"),
    (["--kept", "--checkpoint", "best"], "or --checkpoint with it"),
  ],
)
def test_bad_arguments_fail_clearly_and_change_nothing(
  trained_workdir, args, expected, cli_error, unchanged
):
  with unchanged(trained_workdir):
    message = cli_error(evaluate.main, ["--workdir", trained_workdir, *args])
  assert expected in message
