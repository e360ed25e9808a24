"""The course's ``loops`` module: its functions, and the project's public names in one import.

The course hands students ``train_loop``, ``validation_loop`` and ``update_graphs`` in a module of this name;
they are here with the same names and arguments. Everything else a notebook or a script needs is re-exported
from the module that does the job, so ``import loops`` is enough:

====================  =========================================================================================
``config.py``         :class:`Config`, :data:`PRESETS`, :func:`config_from_preset`
``engine.py``         :func:`train_one_epoch`, :func:`evaluate`, :func:`predict`, :class:`ModelEma`, and the
                      course's :func:`train_loop`, :func:`validation_loop`, :func:`update_graphs`
``recipe.py``         :func:`build_net`, :func:`set_trainable`, :func:`make_scheduler`, :func:`steps_per_epoch`
``runs.py``           :func:`fit`, :func:`load_run`, :func:`predict_run`, checkpoints
``runtime.py``        :func:`resolve_device`, :func:`seed_everything`, precision settings
``cli.py``            the command line below
====================  =========================================================================================

Command line (``python -m loops --help``)::

    python -m loops train --data-root DIR [--preset NAME] [--model NAME] [--epochs N] ...   # last line: run folder
    python -m loops train --resume RUN_DIR
    python -m loops predict --run RUN_DIR --data-root DIR --out PREDICTIONS.json
    python -m loops bench ...
"""
from __future__ import annotations

import sys

from cli import build_parser, config_from_args, main
from config import PRESET_DESCRIPTIONS, PRESETS, Config, config_from_preset
from engine import ModelEma, evaluate, predict, train_loop, train_one_epoch, update_graphs, validation_loop
from recipe import build_net, make_scheduler, set_trainable, steps_per_epoch
from runs import fit, load_checkpoint, load_run, predict_run, resolve_checkpoint, save_checkpoint
from runtime import amp_settings, cpu_has_native_bf16, inference_settings, resolve_device, seed_everything

__all__ = [
    "Config", "PRESETS", "PRESET_DESCRIPTIONS", "config_from_preset",
    "train_one_epoch", "evaluate", "predict", "ModelEma", "train_loop", "validation_loop", "update_graphs",
    "build_net", "set_trainable", "make_scheduler", "steps_per_epoch",
    "fit", "load_run", "predict_run", "resolve_checkpoint", "save_checkpoint", "load_checkpoint",
    "resolve_device", "seed_everything", "amp_settings", "inference_settings", "cpu_has_native_bf16",
    "build_parser", "config_from_args", "main",
]

if __name__ == "__main__":
    sys.exit(main())
