"""Which recipes a notebook execution trains, and the stand-in backbone where ShuffleNet's weights cannot be had."""
import pytest

from coco import networks, recipe
from coco.config import DEFAULT_MODEL


def test_automatic_recipes_follow_the_data_and_the_gpu():
    assert recipe.recipes_to_run(None, demo=True, cuda=True) == ["demo"]
    assert recipe.recipes_to_run(None, demo=False, cuda=True) == ["shufflenet"]
    assert recipe.recipes_to_run(None, demo=False, cuda=False) == ["cpu"]
    assert recipe.recipes_to_run(["shufflenet", "cpu"], demo=False, cuda=False) == ["shufflenet", "cpu"]
    assert recipe.recipes_to_run("cpu", demo=False, cuda=True) == ["cpu"]
    with pytest.raises(ValueError, match="RECIPES"):
        recipe.recipes_to_run(["gpu"], demo=False, cuda=False)


def test_missing_shufflenet_weights_give_the_stand_in_and_a_bold_note(monkeypatch):
    def unavailable(name, **kwargs):
        raise networks.PretrainedWeightsUnavailable(name)

    monkeypatch.setattr(networks, "weights_on_disk", lambda name: False)
    monkeypatch.setattr(networks, "build_model", unavailable)
    config, note = recipe.runnable_config("shufflenet", epochs=3)
    assert config.model == recipe.STAND_IN_MODEL and config.epochs == 3 and config.lr == 3e-3
    assert note.startswith("**Stand-in backbone: efficientnet_lite0") and "every other setting" in note
    with pytest.raises(networks.PretrainedWeightsUnavailable):
        recipe.runnable_config("shufflenet", model="resnet18")  # only the default backbone has a stand-in


def test_weights_on_disk_keep_the_preset(monkeypatch):
    monkeypatch.setattr(networks, "weights_on_disk", lambda name: True)
    config, note = recipe.runnable_config("shufflenet")
    assert config.model == DEFAULT_MODEL and note is None
    cpu, note = recipe.runnable_config("cpu")
    assert cpu.model == "efficientnet_lite2" and note is None
