"""The one configuration (config.py), its presets, and the command-line flags generated from it (cli.py)."""
import dataclasses
import json

import pytest

from coco import cli, recipe
from coco.config import PRESET_DESCRIPTIONS, PRESETS, Config, config_from_preset


def test_config_round_trips_and_rejects_unknown_keys():
    config = config_from_preset("demo", epochs=3, lr=0.5)
    assert config.epochs == 3 and config.lr == 0.5  # explicit values beat the preset
    assert config.model == PRESETS["demo"]["model"]
    assert Config.from_dict(json.loads(json.dumps(dataclasses.asdict(config)))) == config
    with pytest.raises(ValueError, match="learning_rate"):
        Config.from_dict({**config.to_dict(), "learning_rate": 0.1})
    with pytest.raises(ValueError, match="select_metric"):
        Config(select_metric="accuracy").validate()
    with pytest.raises(ValueError, match="pos_weight"):
        Config(loss="asl", pos_weight=True).validate()
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        config_from_preset("nope")
    assert config_from_preset("shufflenet") == Config()  # the defaults are the shufflenet recipe


def test_every_preset_is_a_valid_documented_config():
    assert set(PRESETS) == set(PRESET_DESCRIPTIONS)
    for name in PRESETS:
        assert config_from_preset(name).validate()
    assert {"shufflenet", "demo", "cpu"} <= set(PRESETS)


def test_cli_flags_mirror_config_and_override_the_preset(capsys):
    parser = cli.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(Config):
        assert "--" + f.name.replace("_", "-") in help_text, f.name
    assert f"(default: {Config().lr})" in help_text and "(default: shufflenet_v2_x1_0)" in help_text

    args = parser.parse_args(["train", "--preset", "demo", "--epochs", "2", "--no-stratify", "--image-size", "48",
                              "--unfreeze-stages", "none"])
    config = cli.config_from_args(args)
    assert (config.epochs, config.stratify, config.image_size, config.unfreeze_stages) == (2, False, 48, None)
    assert config.model == PRESETS["demo"]["model"]  # not given: from the preset
    assert cli.config_from_args(parser.parse_args(["train"])) == Config()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--loss", "focal"])  # choices come from the Config field


def test_avgmax_pool_config_doubles_the_head_input():
    config = Config(model="efficientnet_lite0", pretrained=False, pool="avgmax")
    net = recipe.build_net(config).eval()
    assert net.num_features == 2 * 1280 and net.head[-1].in_features == 2 * 1280
    with pytest.raises(ValueError, match="choose one of"):
        Config(pool="max").validate()

