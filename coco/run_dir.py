"""The run folder: the one owner of its file names, with a typed reader and writer for each file.

``fit`` writes a run folder once and everything else (``predict``, the notebook's tables and figures, the
benchmark, ``--resume``) reads it through :class:`RunDir`; no other module spells a run file's name::

    runs/<timestamp>-<name>/
        config.json          the Config the run started with
        split.json           training / validation stems
        metrics.csv          one row per epoch (CSV_COLUMNS)
        tb/                  TensorBoard events
        last.pt, best.pt     checkpoints (model, optimiser, scheduler, scaler, EMA, RNG states, thresholds, ...)
        thresholds.json      the tuned thresholds of best.pt
        val_outputs.npz      validation probabilities and targets of best.pt's model (what it was tuned on)
        summary.json         status, best epoch, timings of each phase, the estimate made before, hardware, the
                             input path that ran (gpu, workers, or gpu then workers after a failure)
        features/            the feature cache of a run with frozen stages (coco.features.FeatureStore)
        final.pt, oof.npz, cross_fit.json     cross-fitted runs (Config.cross_fit_folds)
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from coco import atomic, course
from coco.config import Config
from coco.thresholds import ThresholdResult

CSV_COLUMNS = ("epoch", "lr", "train/loss", "train/f1@0.5", "val/loss", "val/f1", "val/f1@0.5", "val/precision",
               "val/recall", "val/map", "val/accuracy", "time_s")
CHECKPOINTS = ("last", "best", "final")


def save_checkpoint(path, state: Mapping) -> Path:
    """``torch.save(state)`` to ``path`` atomically (atomic.write_atomic)."""
    return atomic.write_atomic(path, lambda file: torch.save(dict(state), file))


def load_checkpoint(path) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU.

    ``weights_only=False`` because our checkpoints hold NumPy/Python RNG states and plain dicts that the
    restricted unpickler rejects; that unpickler exists to guard against *foreign* files, which can run code
    when loaded: only load checkpoints you (or this project) wrote.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (EOFError, RuntimeError, pickle.UnpicklingError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err}); the file is damaged or "
                         "cut short (copied while being written?): use another checkpoint of the run, or train "
                         "again") from err


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


class RunDir:
    """One run's folder. ``RunDir(path)`` opens an existing one; :meth:`create` makes a new one for a Config.

    Paths are attributes (``run.summary_path``); readers return plain types (dicts, lists, arrays,
    :class:`~coco.thresholds.ThresholdResult`); writers are atomic (``coco.atomic``)."""

    def __init__(self, path):
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.split_path = self.path / "split.json"
        self.history_path = self.path / "metrics.csv"
        self.summary_path = self.path / "summary.json"
        self.thresholds_path = self.path / "thresholds.json"
        self.val_outputs_path = self.path / "val_outputs.npz"
        self.oof_path = self.path / "oof.npz"
        self.cross_fit_path = self.path / "cross_fit.json"
        self.features_path = self.path / "features"
        self.tensorboard_path = self.path / "tb"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # ---- making one ----
    @classmethod
    def create(cls, config: Config) -> "RunDir":
        """A new, empty folder ``<out_dir>/<timestamp>-<run_name or model>`` (``-2``, ``-3``... when two runs start
        within one second)."""
        out_dir = Path(config.out_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic.check_writable(out_dir / "config.json")
        except OSError as err:
            raise OSError(err.errno, f"cannot create a run folder in {out_dir} ({err.strerror or err}); choose "
                                     "another out_dir (--out)") from err
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = config.run_name or config.model
        for attempt in range(1, 1000):
            path = out_dir / (f"{stamp}-{name}" if attempt == 1 else f"{stamp}-{name}-{attempt}")
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:
                continue
        raise FileExistsError(f"could not create a new run folder in {out_dir}")

    def is_run(self) -> bool:
        """Whether this folder was started by ``fit`` (it has ``config.json``, written first)."""
        return self.config_path.is_file()

    # ---- checkpoints ----
    def checkpoint_path(self, which: str) -> Path:
        if which not in CHECKPOINTS:
            raise ValueError(f"which must be one of {', '.join(CHECKPOINTS)}, got {which!r}")
        return self.path / f"{which}.pt"

    def has_checkpoint(self, which: str) -> bool:
        return self.checkpoint_path(which).is_file()

    def save_checkpoint(self, which: str, state: Mapping) -> Path:
        return save_checkpoint(self.checkpoint_path(which), state)

    def load_checkpoint(self, which: str) -> dict:
        return load_checkpoint(self.checkpoint_path(which))

    def resolve_checkpoint(self, which: str = "auto") -> str:
        """``auto``: ``final`` where the run was cross-fitted (final.pt exists), else ``best``."""
        if which == "auto":
            return "final" if self.has_checkpoint("final") else "best"
        self.checkpoint_path(which)  # refuses an unknown name
        return which

    # ---- config, split ----
    def write_config(self, config: Config) -> None:
        atomic.write_json(self.config_path, config.to_dict())

    def saved_config(self) -> dict:
        """The config the run was started with (its ``last.pt``, else its ``config.json``)."""
        if self.has_checkpoint("last"):
            return self.load_checkpoint("last")["config"]
        if self.config_path.is_file():
            return _read_json(self.config_path)
        raise FileNotFoundError(f"{self.path} is not a run folder (no last.pt, no config.json)")

    def config(self) -> Config:
        """The run's Config, from ``config.json``."""
        return Config.from_dict(_read_json(self.config_path))

    def write_split(self, stems: Sequence[str], train_idx, val_idx, **record) -> None:
        course.save_split(self.split_path, stems, train_idx, val_idx, **record)

    def split(self, stems: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(train_idx, val_idx) into ``stems`` (the labelled images, sorted as the dataset lists them)."""
        return course.load_split(self.split_path, stems)

    def split_record(self) -> dict:
        """``split.json`` as written: stems of each side and how they were drawn."""
        return _read_json(self.split_path) if self.split_path.is_file() else {}

    # ---- per-epoch history, summary ----
    def write_history(self, rows: Sequence[Mapping]) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic.write_text(self.history_path, text.getvalue())

    def history(self) -> list[dict]:
        """The rows of ``metrics.csv``, epoch as int and the rest as floats (none before the first epoch ends)."""
        if not self.history_path.is_file():
            return []
        with open(self.history_path, newline="", encoding="utf-8") as file:
            return [{key: (int(value) if key == "epoch" else float(value)) for key, value in row.items()}
                    for row in csv.DictReader(file)]

    def write_summary(self, summary: Mapping) -> None:
        atomic.write_json(self.summary_path, dict(summary))

    def summary(self) -> dict | None:
        """``summary.json`` (status, phases, estimate, hardware), or None while the run has not ended."""
        return _read_json(self.summary_path) if self.summary_path.is_file() else None

    # ---- thresholds and the probabilities they were tuned on ----
    def write_best_outputs(self, thresholds: ThresholdResult, probs, targets, stems: Sequence[str],
                           epoch: int) -> None:
        """``thresholds.json`` and ``val_outputs.npz`` of a new ``best.pt``."""
        atomic.write_json(self.thresholds_path, thresholds.to_dict())

        def write(file):
            np.savez_compressed(file, probs=np.asarray(probs, dtype=np.float32),
                                targets=np.asarray(targets) > 0.5, stems=np.asarray(stems), epoch=np.int64(epoch))
        atomic.write_atomic(self.val_outputs_path, write)

    def thresholds(self, which: str = "auto") -> ThresholdResult:
        """The thresholds that go with checkpoint ``which``: best.pt's from ``thresholds.json``, final.pt's
        (tuned on out-of-fold probabilities) from ``cross_fit.json``, last.pt's from inside it."""
        which = self.resolve_checkpoint(which)
        if which == "best" and self.thresholds_path.is_file():
            return ThresholdResult.from_dict(_read_json(self.thresholds_path))
        if which == "final" and self.cross_fit_path.is_file():
            return ThresholdResult.from_dict(self.cross_fit()["thresholds"])
        return ThresholdResult.from_dict(self.load_checkpoint(which)["thresholds"])

    def val_outputs(self) -> dict:
        """best.pt's validation ``probs``, ``targets`` (bool), ``stems`` and ``epoch``."""
        with np.load(self.val_outputs_path) as saved:
            return {"probs": saved["probs"], "targets": saved["targets"], "stems": [str(s) for s in saved["stems"]],
                    "epoch": int(saved["epoch"])}

    # ---- cross-fitting ----
    def write_cross_fit(self, record: Mapping, probs, targets, stems: Sequence[str], folds) -> None:
        """``oof.npz`` (out-of-fold probabilities of every labelled image, their targets, stems and folds) and
        ``cross_fit.json``."""
        atomic.write_atomic(self.oof_path, lambda file: np.savez_compressed(
            file, probs=probs, targets=targets, stems=np.asarray(stems), folds=folds))
        atomic.write_json(self.cross_fit_path, dict(record))

    def cross_fit(self) -> dict | None:
        """``cross_fit.json`` (folds, timings, out-of-fold mAP, final.pt's thresholds), or None if not cross-fitted."""
        return _read_json(self.cross_fit_path) if self.cross_fit_path.is_file() else None

    def oof_outputs(self) -> dict | None:
        """Out-of-fold ``probs``, ``targets``, ``stems`` and ``folds`` of every labelled image, or None if the run
        was not cross-fitted."""
        if not self.oof_path.is_file():
            return None
        with np.load(self.oof_path) as saved:
            return {key: saved[key] for key in saved.files}


def list_runs(runs_dir) -> tuple[list[RunDir], list[str]]:
    """The run folders directly inside ``runs_dir`` (sorted by name, i.e. by start time), and the names of the
    folders there that are not runs."""
    runs, skipped = [], []
    folder = Path(runs_dir)
    for path in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        run = RunDir(path)
        if run.is_run():
            runs.append(run)
        else:
            skipped.append(path.name)
    return runs, skipped
