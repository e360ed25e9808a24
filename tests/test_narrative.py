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


def test_the_curves_are_read_for_overfitting_and_progress():
    rising = pd.DataFrame({"val/loss": [3.0, 2.0, 2.4, 2.6], "train/f1@0.5": [0.1, 0.5, 0.7, 0.9],
                           "val/f1@0.5": [0.1, 0.3, 0.3, 0.3], "val/map": [0.2, 0.4, 0.45, 0.452]},
                          index=pd.Index([1, 2, 3, 4], name="epoch"))
    facts = narrative.history_facts(rising)
    assert facts["overfitting"] and facts["val_loss_min_epoch"] == 2 and facts["val_loss_rise"] == pytest.approx(0.3)
    assert facts["map_plateau_epoch"] == 3 and not facts["still_improving"]
    assert "**the model overfits** after epoch 2" in narrative.history_text(facts, cached=False)
    improving = rising.assign(**{"val/loss": [3.0, 2.5, 2.2, 2.0], "val/map": [0.2, 0.3, 0.4, 0.5]})
    facts = narrative.history_facts(improving)
    assert not facts["overfitting"] and facts["still_improving"]
    assert "more epochs may help" in narrative.history_text(facts, cached=True)


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
