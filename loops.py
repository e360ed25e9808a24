"""The course's ``loops`` module: the training and validation loops students call, and the command line.

``train_loop`` and ``validation_loop`` are the course's functions with the course's names and arguments, written
on the project's engine (``coco.engine``: the epoch loop, evaluation, mixed precision). ``update_graphs`` is the
course's plotting helper (it lives in ``coco.engine`` because ``coco.fit`` draws with it too). Everything a run
needs beyond these lives in the ``coco`` package behind this file; the names a notebook or a script reaches for
are re-exported here, so ``import loops`` is enough:

=======================  ====================================================================================
``coco/config.py``       :class:`Config`, :data:`PRESETS`, :func:`config_from_preset`
``coco/engine.py``       :func:`train_one_epoch`, :func:`evaluate`, :func:`predict`, :func:`update_graphs`
``coco/recipe.py``       :func:`build_net`, :func:`build_optimizer`, :func:`make_scheduler`, :func:`set_trainable`
``coco/fit.py``          :func:`fit`: a whole run, from data to ``best.pt`` and thresholds
``coco/predict.py``      :func:`predict_run`, :func:`load_run`: a run's test predictions
``coco/run_dir.py``      :class:`RunDir`: the run folder, its files and their readers
``coco/cli.py``          the command line below
=======================  ====================================================================================

Command line (``python -m loops --help``)::

    python -m loops train --data-root DIR [--preset NAME] [--model NAME] [--epochs N] ...   # last line: run folder
    python -m loops train --resume RUN_DIR
    python -m loops predict --run RUN_DIR --data-root DIR --out PREDICTIONS.json
    python -m loops bench ...
"""
from __future__ import annotations

import sys

from coco.exits import quiet_interrupt

with quiet_interrupt(__name__):  # Ctrl-C while torch loads: one line, not a traceback (python -m loops)
    import torch

    from coco import leaderboard
    from coco.cli import main
    from coco.config import PRESET_DESCRIPTIONS, PRESETS, Config, config_from_preset
    from coco.engine import evaluate, predict, train_one_epoch, update_graphs
    from coco.fit import fit
    from coco.predict import load_run, predict_run
    from coco.recipe import build_net, build_optimizer, make_scheduler, set_trainable

__all__ = [
    "train_loop", "validation_loop", "update_graphs",
    "Config", "PRESETS", "PRESET_DESCRIPTIONS", "config_from_preset",
    "train_one_epoch", "evaluate", "predict", "build_net", "build_optimizer", "make_scheduler", "set_trainable",
    "fit", "load_run", "predict_run", "main",
]


def train_loop(train_loader, net, criterion, optimizer, device, mbatch_loss_group=-1):
    """The course's training epoch: one pass over ``train_loader`` updating ``net``.

    As in the course, returns the list of mean losses of consecutive groups of ``mbatch_loss_group``
    mini-batches when ``mbatch_loss_group > 0`` (for ``update_graphs``), and None otherwise.
    Full precision, no scheduler: :func:`train_one_epoch` is the same loop with those options.
    """
    result = train_one_epoch(net, train_loader, criterion, optimizer, device, progress=False)
    if mbatch_loss_group <= 0:
        return None
    losses = result["batch_losses"]
    n_groups = len(losses) // mbatch_loss_group  # a last, incomplete group is left out, as in the course
    return losses[: n_groups * mbatch_loss_group].view(n_groups, mbatch_loss_group).mean(dim=1).tolist()


def validation_loop(val_loader, net, criterion, num_classes, device, multi_label=False, th_multi_label=0.5,
                    one_hot=False, class_metrics=False):
    """The course's validation pass, scored with the leaderboard metric (``leaderboard.leaderboard_scores``).

    Multi-label: a class is predicted when its *probability* ``sigmoid(logit)`` exceeds ``th_multi_label``
    (the course's skeleton compared raw logits with the threshold, which at 0.5 means probability 0.62).
    Single-label: the arg-max class is predicted; targets are class indices, or one-hot rows with
    ``one_hot=True``. Returns ``{"loss", "accuracy", "f1", "precision", "recall"}``; with ``class_metrics``,
    ``(results, class_results)`` where ``class_results[c] = {"f1", "precision", "recall"}``.
    Accuracy: multi-label, the leaderboard's (true positives over positives); single-label, the fraction of
    images whose class is right.
    """
    out = evaluate(net, val_loader, device, criterion=criterion, progress=False)
    probs, targets = out["probs"], out["targets"]
    if multi_label:
        preds = probs > th_multi_label
        targets_hot = targets > 0.5
        threshold = th_multi_label
    else:
        labels = targets.argmax(dim=1) if one_hot else targets.long().view(-1)
        predicted = probs.argmax(dim=1)
        preds = torch.nn.functional.one_hot(predicted, num_classes).bool()
        targets_hot = torch.nn.functional.one_hot(labels, num_classes).bool()
        threshold = 0.5  # preds are 0/1 here
    scores = leaderboard.leaderboard_scores(preds, targets_hot, warn=False)
    results = {"loss": out["loss"], "accuracy": scores["accuracy"], "f1": scores["f1"],
               "precision": scores["precision"], "recall": scores["recall"]}
    if not multi_label:
        results["accuracy"] = float((predicted == labels).float().mean())
    if not class_metrics:
        return results
    table = leaderboard.per_class_table(preds.float() if not multi_label else probs, targets_hot, threshold,
                                    class_names=[str(c) for c in range(num_classes)])
    class_results = [{"f1": row["f1"], "precision": row["precision"], "recall": row["recall"]} for row in table]
    return results, class_results


if __name__ == "__main__":
    sys.exit(main())
