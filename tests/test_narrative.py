"""The sentences the notebook writes about a run (narrative.py) say what each recipe really does."""
import pandas as pd
import pytest

from coco import narrative
from coco.config import Config, config_from_preset


def test_each_recipe_is_described_as_it_trains():
    cpu = narrative.recipe_summary(config_from_preset("cpu"), n_stages=5, preset="cpu")
    for words in ("efficientnet_lite2 with ImageNet weights shipped in a pip package", "upsampled to 384 px",
                  "the backbone is frozen", "the image and its mirror image", "MLP head (1024 hidden units)",
                  "average and maximum side by side", "5-fold cross-fitting", "mirror image; thresholds"):
        assert words in cpu, words
    assert "backbone" not in cpu.split("Training:")[1].split(";")[0]  # no backbone learning rate: it does not train
    assert "random crops and colour jitter are not applied" in cpu
    default = narrative.recipe_summary(Config(), n_stages=5, preset="shufflenet")
    for words in ("shufflenet_v2_x1_0 with ImageNet weights from torchvision", "at 224 px",
                  "the whole network trains from the first epoch", "BatchNorm layers keep their pretrained statistics",
                  "a new random crop every epoch", "0.0003 for the backbone", "a linear head",
                  "tuned per class on the 10% validation split"):
        assert words in default, words
    assert "frozen" not in narrative.trains_text(Config(freeze_bn_stats=False), 5)
    staged = narrative.trains_text(Config(freeze_epochs=2, unfreeze_stages=2, freeze_bn_stats=False), 5)
    assert staged == "the head alone trains for 2 epochs, then the last 2 stages and the head"


def _history(val_loss, val_map):
    n = len(val_loss)
    return pd.DataFrame({"val/loss": val_loss, "train/f1@0.5": [0.5] * n, "val/f1@0.5": [0.3] * n, "val/map": val_map},
                        index=pd.Index(range(1, n + 1), name="epoch"))


def test_a_loss_that_rises_while_the_ranking_improves_is_calibration_not_overfitting():
    facts = narrative.history_facts(_history([3.0, 2.0, 2.4, 2.6], [0.2, 0.4, 0.45, 0.452]))
    assert facts["loss_rises"] and facts["ranking_improves"] and not facts["overfitting"]
    assert facts["val_loss_min_epoch"] == 2 and facts["val_loss_rise"] == pytest.approx(0.3)
    text = narrative.history_text(facts, cached=False)
    assert "overfits" not in text and "calibration" in text and "still improves" in text
    falling = narrative.history_facts(_history([3.0, 2.0, 2.4, 2.6], [0.2, 0.45, 0.42, 0.40]))
    assert falling["overfitting"] and not falling["ranking_improves"]
    assert "**the model overfits** after epoch 2" in narrative.history_text(falling, cached=False)
    improving = narrative.history_facts(_history([3.0, 2.5, 2.2, 2.0], [0.2, 0.3, 0.4, 0.5]))
    assert not improving["overfitting"] and improving["still_improving"]
    assert "more epochs may help" in narrative.history_text(improving, cached=True)


def test_the_plateau_is_where_the_curve_stays_within_the_band_not_where_it_first_reaches_it():
    # The committed run's case: the band is reached at epoch 3, left at epoch 4 (0.561 against a 0.568 peak),
    # and held from epoch 5 on.
    facts = narrative.history_facts(_history([2.0] * 6, [0.50, 0.530, 0.564, 0.561, 0.566, 0.568]))
    assert facts["map_plateau_epoch"] == 5 and facts["best_map_epoch"] == 6
    assert "within 0.005 of it from epoch 5 to the last" in narrative.history_text(facts, cached=False)
    # a curve that falls out of the band at the end has no plateau, and says so
    fallen = narrative.history_facts(_history([2.0] * 4, [0.50, 0.568, 0.566, 0.55]))
    assert fallen["map_plateau_epoch"] is None
    assert "ends lower, at 0.550" in narrative.history_text(fallen, cached=False)


def test_the_metric_rule_is_named_and_common_classes_are_not_called_rare():
    import numpy as np

    targets = np.zeros((10, 80), dtype=bool)
    targets[:, 0] = True
    targets[:2, 24] = True  # backpack on 2 of 10 images
    preds = targets.copy()
    preds[:, 24] = True
    facts = narrative.threshold_behaviour(preds, targets, np.full(80, 0.02), targets.sum(axis=0))
    text = narrative.threshold_behaviour_text(facts)
    assert "backpack (100% of the images, threshold 0.02, 2 validation images, prevalence 20%)" in text
    assert "zero-true-positive rule" in text and "not rare ones" in text and "rare class" not in text
    weakest = pd.DataFrame({"recall": [1.0, 0.4], "threshold": [0.02, 0.3], "ap": [0.40, 0.2]},
                           index=["refrigerator", "toaster"])
    note = narrative.everywhere_text(weakest)
    assert "refrigerator AP 0.40" in note and "no threshold" not in note and "toaster" not in note
    assert narrative.everywhere_text(weakest.iloc[1:]) is None
    lpi = narrative.labels_per_image_text(validation=13.0, mock=14.9, test=17.1, true=2.9)
    assert all(words in lpi for words in ("13.0 on the validation images", "14.9 on the mock test sets",
                                          "17.1 on the test images", "2.90 true labels"))


def test_the_submission_is_chosen_by_expected_f1_and_the_choice_is_said():
    from coco import tables

    def item(model, expected, crossed):
        return {"config": Config(model=model), "summary": {"best": {"val/map": 0.5}, "time_s": 600.0},
                "expected": {"f1": expected, "spread": 0.01}, "cross_fit": pd.DataFrame() if crossed else None}

    table, chosen = tables.recipe_comparison({"shufflenet": item("efficientnet_lite0", 0.52, False),
                                              "cpu": item("efficientnet_lite2", 0.49, True)})
    assert chosen == "shufflenet" and table.loc["cpu", "protocol"] == "mock test sets (cross-fitted)"
    text = narrative.choice_text(table, chosen)
    assert "**The `shufflenet` run writes the test predictions**" in text and "`cpu` 0.490" in text
    stand_in = Config(model="efficientnet_lite0")
    cpu_text = narrative.where_recipe_ran(stand_in, {"hardware": {"torch_threads": 2}}, "note")
    assert "never with ShuffleNet V2's weights" in cpu_text and "never on a GPU" in cpu_text
    gpu_text = narrative.where_recipe_ran(Config(), {"hardware": {"gpu": "NVIDIA H200"}}, None)
    assert "ShuffleNet V2's own ImageNet weights" in gpu_text and "on a GPU (NVIDIA H200)" in gpu_text
    assert "not in this execution" in narrative.where_recipe_ran(stand_in, None, None)


def test_fit_time_is_compared_with_the_estimate_of_the_same_phases():
    summary = {"phases": {"inputs_s": 60.0, "epochs_s": 150.0},
               "estimate": {"seconds": {"feature cache": 90.0, "epochs": 120.0, "predict": 60.0}}}
    text = narrative.fit_vs_estimate(summary)
    assert "fit took 3.5 min" in text and "was 3.5 min" in text and "predict" not in text


def test_study_tables_are_compact_with_takeaways():
    from coco import tables

    reference, _ = tables.load_reference_study()
    for protocol in ("fine-tuning", "nested CV"):
        table = tables.study_summary(tables.study_rows(reference, protocol))
        assert list(table.columns) == ["F1", "F1 se", "mAP", "time (min)"]
        lines = narrative.study_takeaways(table, protocol)
        assert 2 <= len(lines) <= 4 and all("nan" not in line for line in lines)


def test_generous_thresholds_are_explained_only_when_they_are_generous():
    import numpy as np

    targets = np.zeros((10, 80), dtype=bool)
    targets[:, 0] = True
    preds = targets.copy()
    preds[:, 5] = preds[:, 6] = True  # two classes on every image
    facts = narrative.threshold_behaviour(preds, targets, np.full(80, 0.5), targets.sum(axis=0))
    assert narrative.generous(facts) and [row["class"] for row in facts["everywhere"]] == ["person", "bus", "train"]
    assert "predicted on nearly every image" in narrative.threshold_behaviour_text(facts)
    exact = narrative.threshold_behaviour(targets, targets, np.full(80, 0.5), targets.sum(axis=0))
    assert not narrative.generous(exact) and "close to the true number" in narrative.threshold_behaviour_text(exact)


def test_the_frontier_names_the_best_recipe_within_each_budget(tmp_path):
    from coco import figures, tables

    frame = pd.DataFrame({"short": ["fast", "slow", "big"], "preset": ["cpu-fast", "cpu", ""],
                          "f1": [0.39, 0.485, 0.476], "f1_se": [0.02, 0.03, 0.03], "map": [0.46, 0.56, 0.57],
                          "hours_65k": [0.4, 2.2, 3.1], "peak_gib": [1.4, 1.9, 2.0]})
    text = narrative.frontier_text(frame)
    assert "Within 0.5 h at 65,000 images the highest F1 is fast (0.390" in text
    assert "the `cpu` preset is slow" in text
    assert "big (3.1 h) scores 0.476: more hours bought no F1 here." in text
    better = frame.assign(f1=[0.39, 0.485, 0.5])
    assert "+0.015 F1 for 0.9 more hours" in narrative.frontier_text(better)
    frame.to_csv(tmp_path / "frontier.csv", index=False)
    read = tables.frontier_rows(tmp_path / "frontier.csv")
    assert list(read["short"]) == ["fast", "slow", "big"] and read.loc[2, "preset"] == ""
    assert tables.frontier_rows(tmp_path / "absent.csv") is None
    figures.plot_frontier(read, save=tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").stat().st_size > 0
