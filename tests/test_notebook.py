"""challenge.ipynb, executed headlessly the way README's main command runs it (papermill, kernel `python3`).

Without course data the notebook must run in demo mode from top to bottom, train a model that beats chance, write a
predictions JSON that passes validation, and leave the committed notebook and figures byte for byte as they were.
A data path that was given but is wrong must stop it, never turn into demo mode.
"""
import ast
import hashlib
import json
import os
from pathlib import Path

import nbformat
import numpy as np
import papermill
import pytest

from coco import course, data, leaderboard, narrative, notebook_check, submission, tables, thresholds
from coco.run_dir import list_runs

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "challenge.ipynb"
PARAMETERS = {"DATA_ROOT", "RECIPES", "OVERRIDES", "RUNS_DIR", "PREDICTIONS_PATH", "DEMO_DIR", "DEMO_TRAIN_IMAGES",
              "DEMO_TEST_IMAGES", "FIGURES_DIR", "PROGRESS"}
FIGURES = ("03_class_frequency", "03_training_images", "03_labels_per_image", "03_split", "04_augmentation", "05_loss", "05_lr_schedule",
           "06_training", "07_threshold_sweep", "07_class_thresholds", "08_per_class", "08_precision_recall",
           "08_f1_vs_frequency", "08_examples_best", "08_examples_worst", "09_test_predictions", "10_finetuning",
           "10_recipes")


def _committed_files() -> dict:
    """SHA-256 of the committed notebook and of every file under images/ (what an execution must not touch)."""
    paths = [NOTEBOOK] + sorted(p for p in (ROOT / "images").rglob("*") if p.is_file())
    return {str(p.relative_to(ROOT)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _kernel_environment(monkeypatch) -> None:
    # No course data anywhere: the kernel runs in an empty folder (no ./ms-coco) without $MSCOCO_ROOT, so the
    # outcome does not depend on what a developer keeps in the repository root.
    monkeypatch.delenv("MSCOCO_ROOT", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    # One OpenMP thread: on a shared 2-core machine two threads against another busy process ran the demo training
    # ~5x slower (measured); one thread keeps the run to a couple of minutes everywhere.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _execute(work: Path, **parameters) -> Path:
    output = work / "executed.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(output), parameters=parameters, cwd=str(work),
                               kernel_name="python3", progress_bar=False)
    return output


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("notebook")
    before = _committed_files()
    with pytest.MonkeyPatch.context() as monkeypatch:
        _kernel_environment(monkeypatch)
        output = _execute(work, RUNS_DIR=str(work / "runs"), PREDICTIONS_PATH=str(work / "predictions.json"),
                          DEMO_DIR=str(work / "demo-data"), FIGURES_DIR=str(work / "figures"), PROGRESS=False)
    return {"work": work, "output": output, "before": before, "after": _committed_files()}


def test_committed_notebook_is_parameterised_for_papermill():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert notebook.metadata["kernelspec"]["name"] == "python3"  # generic: runs in whatever environment runs it
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1
    assigned = {target.id for node in ast.parse(tagged[0].source).body if isinstance(node, ast.Assign)
                for target in node.targets}
    assert assigned == PARAMETERS
    # The committed copy keeps the cell papermill injected for its execution (what the saved outputs ran with),
    # right after the parameters cell; it may set only the parameters, and no machine's path.
    injected = [index for index, cell in enumerate(notebook.cells)
                if "injected-parameters" in cell.metadata.get("tags", [])]
    assert len(injected) <= 1
    for index in injected:
        assert "parameters" in notebook.cells[index - 1].metadata.get("tags", [])
        source = notebook.cells[index].source
        assert {target.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
                for target in node.targets} <= PARAMETERS
        assert "/home/" not in source and "/work/" not in source and "/tmp/" not in source


def test_demo_execution_leaves_committed_files_untouched(demo_run):
    assert demo_run["after"] == demo_run["before"]


def test_demo_execution_says_demo_mode_in_bold(demo_run):
    notebook = nbformat.read(demo_run["output"], as_version=4)
    texts = [output.get("data", {}).get("text/markdown", "") for cell in notebook.cells if cell.cell_type == "code"
             for output in cell.get("outputs", [])]
    banners = [text for text in texts if "**DEMO MODE: course data not found" in text]
    assert banners, "the demo-mode banner is missing from the executed notebook"
    assert "scores below say nothing about COCO" in banners[0]


def test_demo_predictions_validate_and_the_model_beats_chance(demo_run):
    work = demo_run["work"]
    demo_root = work / "demo-data"
    test_dir = course.course_dirs(demo_root)["test_images"]
    predictions = json.loads((work / "predictions.json").read_text())
    assert submission.validate_predictions(predictions, data.COCOTestImageDataset(test_dir).stems) == []

    run_dirs, _ = list_runs(work / "runs")
    assert len(run_dirs) == 1
    run_dir = run_dirs[0]
    summary = run_dir.summary()
    assert summary["status"] == "finished"
    val_f1 = summary["best"]["val/f1"]

    # Chance: a model that ignores the image and outputs the training split's class rates, thresholds tuned the
    # same way on the same validation images (and, for the test set, those thresholds applied to it).
    full = data.COCOTrainImageDataset(*list(course.course_dirs(demo_root).values())[:2])
    train_idx, val_idx = run_dir.split(full.stems)
    rates = full.targets[train_idx].mean(axis=0)
    val_targets = full.targets[val_idx] > 0
    val_prior = np.broadcast_to(rates, val_targets.shape)
    prior_thresholds = thresholds.tune_thresholds(val_prior, val_targets)
    chance_val = leaderboard.leaderboard_scores(prior_thresholds.apply(val_prior), val_targets, warn=False)["f1"]
    labels = submission.read_labels(demo_root / "labels" / "test")
    stems = sorted(labels)
    test_targets = np.zeros((len(stems), course.NUM_CLASSES), dtype=bool)
    for row, stem in enumerate(stems):
        test_targets[row, labels[stem]] = True
    test_prior = np.broadcast_to(rates, test_targets.shape)
    chance_test = leaderboard.leaderboard_scores(prior_thresholds.apply(test_prior), test_targets, warn=False)["f1"]
    test_f1 = submission.score_predictions(predictions, labels, warn=False)["f1"]
    print(f"validation F1 {val_f1:.3f} (chance {chance_val:.3f}); test F1 {test_f1:.3f} (chance {chance_test:.3f})")
    # Measured on this machine: validation 0.32 against chance 0.012; test 0.17 against chance 0.013.
    assert val_f1 > max(0.15, 5 * chance_val)
    assert test_f1 > max(0.08, 5 * chance_test)


def test_demo_execution_writes_every_figure_as_png(demo_run):
    figures = demo_run["work"] / "figures"
    for name in FIGURES:
        path = figures / f"{name}.png"
        assert path.is_file(), path
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def test_a_wrong_data_root_stops_the_notebook_instead_of_running_the_demo(tmp_path, monkeypatch):
    _kernel_environment(monkeypatch)
    with pytest.raises(papermill.PapermillExecutionError) as raised:
        _execute(tmp_path, DATA_ROOT=str(tmp_path / "ms-cocoo"), RUNS_DIR=str(tmp_path / "runs"),
                 DEMO_DIR=str(tmp_path / "demo-data"), FIGURES_DIR=str(tmp_path / "figures"))
    assert raised.value.ename == "FileNotFoundError"
    assert "ms-cocoo" in raised.value.evalue and "not in the course layout" in raised.value.evalue
    assert not (tmp_path / "demo-data").exists() and not (tmp_path / "runs").exists()


def _outputs(notebook) -> list[str]:
    """Every text the executed cells showed (printed lines and Markdown), in order."""
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") == "stream":
                texts.append(output["text"])
            texts.append(output.get("data", {}).get("text/markdown", ""))
    return [text for text in texts if text]


def test_sentences_about_the_run_are_true_of_the_run(demo_run):
    """What the notebook says about its run (recipe, augmentation, what trains, curves, selected epoch, expected
    score, the model used for the test) is what the run folder records."""
    notebook = nbformat.read(demo_run["output"], as_version=4)
    shown = "\n".join(_outputs(notebook))
    (run_dir,), _ = list_runs(demo_run["work"] / "runs")
    config = run_dir.config()
    summary = run_dir.summary()
    n_stages = 5  # EfficientNet-Lite0, the demo preset's model
    assert config.model == "efficientnet_lite0" and f"{config.model} with" in shown
    assert f"at {config.image_size} px" in shown and "**This execution trains the `demo` recipe**" in shown
    assert narrative.recipe_summary(config, n_stages, "demo") in shown
    # the augmentation claimed is the one the run used: cached views, with random crops only if it cached some
    claim = narrative.augmentation_text(config)
    assert f"**The `demo` run:** {claim}." in shown and ("random crop" in claim) == (config.cache_views > 2)
    assert narrative.trains_text(config, n_stages) in shown and "the last 2 stages and the head train" in shown
    # the curves: lowest validation loss, the selected epoch, the expected score's protocol
    history = tables.history_frame(run_dir)
    facts = narrative.history_facts(history)
    assert narrative.history_text(facts, cached=True) in shown
    assert f"lowest at epoch {int(history['val/loss'].idxmin())}" in shown
    assert f"best.pt (epoch {summary['best_epoch']})" in shown
    assert "**Expected F1 on the test set:" in shown and "held-out halves of the validation split" in shown
    assert "mock test sets" not in shown.split("**Expected F1 on the test set:")[1].split("\n")[0]  # not cross-fitted
    assert "valid: 100 test images from the demo run's best.pt" in shown
    assert "The `demo` run writes the test predictions: it is the only run" in shown
    assert "AdamW" in shown and "OneCycleLR" in shown  # where the default recipe's optimiser and schedule are built
    conclusions = [text for text in _outputs(notebook) if "**Result.**" in text][0]
    assert f"The demo recipe ({config.model}) trained for {summary['epochs_done']} epochs" in conclusions
    assert "more epochs (the validation mAP was still rising)" not in conclusions or facts["still_improving"]


def test_demo_execution_keeps_the_notebook_limits(demo_run):
    """No error, AdamW and OneCycleLR named, the schedule figure saved, prose, HTML and size within bounds, no raw
    NaN/True/False in the generated sentences (coco/notebook_check.py; run it on the committed copy too)."""
    measured = notebook_check.measure(demo_run["output"], demo_run["work"] / "figures")
    assert notebook_check.problems(measured) == [], measured
