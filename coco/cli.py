"""The command line, ``python -m loops train|predict|bench``: arguments in, one run or prediction out.

A failure (missing or broken data, a bad setting, missing pretrained weights, a full or read-only disk, an invalid
predictions file) ends in one ``error: ...`` message on stderr that names the file and says what to do, and exit
status 2; ``--debug`` shows the traceback instead. Ctrl-C ends in one line (``train``: how to resume), exit status
130 (``coco.exits``).
"""
from __future__ import annotations

import argparse
from typing import Sequence

from coco import bench, costs, exits, fit, networks, predict, submission
from coco.config import PRESET_DESCRIPTIONS, PRESETS, Config, add_config_flags, config_from_preset, overrides_from_args
from coco.run_dir import RunDir

DESCRIPTION = "Train a multi-label classifier on the course data, or predict its test images."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loops", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{train,predict,bench}")
    presets = "; ".join(f"{name}: {text}" for name, text in PRESET_DESCRIPTIONS.items())
    train = commands.add_parser("train", help="train a model; prints the run folder as the last line",
                                description="Train a model into a new run folder (or resume one). "
                                            "The last line printed is the run folder's path.",
                                epilog="examples:\n"
                                       "  python -m loops train --data-root ms-coco\n"
                                       "  python -m loops train --preset demo --data-root demo-data --epochs 5\n"
                                       "  python -m loops train --preset cpu --data-root ms-coco --out runs\n"
                                       "  python -m loops train --resume runs/20250101-120000-shufflenet_v2_x1_0",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--preset", choices=list(PRESETS), help=f"named recipe to start from ({presets})")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue this run from its last.pt (its saved config; only device, num-workers, "
                            "progress, data-root and out-dir may be given)")
    train.add_argument("--stop-after-epochs", type=int, metavar="N", help=argparse.SUPPRESS)  # tests: simulate Ctrl-C
    add_config_flags(train, {"model": networks.list_models()})
    pred = commands.add_parser("predict", help="write test-set predictions (JSON) with a run's tuned thresholds",
                               description="Predict the test images with a run's best checkpoint and its tuned "
                                           "thresholds; writes a validated predictions JSON.")
    pred.add_argument("--run", required=True, metavar="RUN_DIR", help="run folder (holds best.pt)")
    pred.add_argument("--out", required=True, metavar="PREDICTIONS.json", help="output file")
    pred.add_argument("--data-root", metavar="DIR", help="course data folder (default: the run's data root)")
    pred.add_argument("--which", choices=("auto", "final", "best", "last"), default="auto",
                      help="checkpoint to use (default auto: final.pt of a cross-fitted run, else best.pt)")
    pred.add_argument("--device", help="cuda, mps, cpu or auto (default: the run's setting)")
    pred.add_argument("--batch-size", type=int, help="images per batch (default: twice the run's batch size)")
    pred.add_argument("--num-workers", type=int, help="DataLoader workers (default: chosen from the hardware)")
    pred.add_argument("--no-progress", action="store_true", help="no progress bar")
    pred.add_argument("--skip-bad-files", action="store_true",
                      help="predict no label for unreadable test images, printing how many (default: stop with an "
                           "error naming them)")
    commands.add_parser("bench", help="input-pipeline benchmark (`python -m loops bench --help`)", add_help=False)
    for command in (train, pred):
        command.add_argument("--debug", action="store_true", help="on failure, show the Python traceback instead of "
                                                                  "one error line")
    return parser


def config_from_args(args: argparse.Namespace) -> Config | None:
    """The Config a parsed ``train`` command asks for: the preset (default "shufflenet") with the explicitly
    given flags on top; with ``--resume``, None (the run's saved config) or the saved config plus the flags."""
    overrides = overrides_from_args(args)
    if args.resume:
        if args.preset:
            raise ValueError("--preset cannot be combined with --resume (the run's saved config is used)")
        if not overrides:
            return None
        return Config.from_dict({**RunDir(args.resume).saved_config(), **overrides})
    return config_from_preset(args.preset or "shufflenet", **overrides)


def _train(args) -> int:
    config = config_from_args(args)
    result = fit.fit(config, resume=args.resume, stop_after_epochs=args.stop_after_epochs)
    if result["best"] is not None:
        best = result["best"]
        print(f"best epoch {result['best_epoch']}: val F1 {best['val/f1']:.4f}, val loss {best['val/loss']:.4f}, "
              f"mAP {best['val/map']:.4f} ({result['status']})")
    print(result["run_dir"])
    return 0


def _predict(args) -> int:
    summary = predict.predict_run(args.run, args.out, data_root=args.data_root, which=args.which, device=args.device,
                                  batch_size=args.batch_size, num_workers=args.num_workers,
                                  progress=not args.no_progress, skip_bad_files=args.skip_bad_files)
    skipped = f" ({summary['skipped']} of them unreadable)" if summary["skipped"] else ""
    print(f"{summary['images']} test images, {summary['mean_labels']:.2f} labels per image on average, "
          f"{summary['empty']} without a label{skipped} (global threshold {summary['global_threshold']:.2f}, "
          f"at_least_one={summary['at_least_one']}, {summary['checkpoint']})")
    print(summary["path"])
    return 0


# Failures whose message already says what went wrong and what to do: printed as they are. Anything else is
# printed with its type (a bug, most likely): --debug shows its traceback.
_EXPECTED = (ValueError, OSError, FloatingPointError, submission.PredictionsError, costs.ResourceError,
             networks.PretrainedWeightsUnavailable)


def describe(err: BaseException) -> str:
    """The text after ``error:`` for a failure of a command."""
    if isinstance(err, networks.PretrainedWeightsUnavailable):
        return f"{err}\n(on the command line, pretrained=False is --no-pretrained)"
    return exits.describe(err, _EXPECTED)


def _command(argv: list[str]) -> int:
    if argv[:1] == ["bench"]:
        return int(bench.bench_main([arg for arg in argv[1:] if arg != "--debug"]) or 0)
    args = build_parser().parse_args(argv)
    return _train(args) if args.command == "train" else _predict(args)


def main(argv: Sequence[str] | None = None) -> int:
    return exits.run(_command, argv, describe)
