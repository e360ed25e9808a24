"""The engine behind the course's four modules (``dataset``, ``models``, ``metrics``, ``loops``), one job a file.

Imports flow one way, from the ground floor up (``tests/test_architecture.py`` checks it):

* ground floor, importing nothing of the package: ``config`` (the one ``Config`` and the presets), ``atomic``
  (the one file writer), ``exits`` (how the commands end: error lines, Ctrl-C, exit statuses), ``course`` (class
  names, label files, folder layout, splits; no torch), ``runtime`` (device, precision, seeds, loader settings,
  memory);
* data: ``data`` (the datasets), ``transforms`` (the presets), ``synthetic`` (the demo data), ``image_cache``,
  ``gpu_batches`` (decode and augment on the GPU), ``loaders`` (which input path, and its loader);
* model and metric: ``networks``, ``losses``, ``leaderboard``, ``thresholds``, ``submission``, ``metrics_cli``;
* training: ``recipe`` (what a Config builds), ``engine`` (the epoch loops), ``features`` (the feature cache and
  heads on it), ``costs`` (what a run will cost), ``run_dir`` (the run folder), ``fit``, ``predict``, ``bench``,
  ``cli``;
* the notebook's report: ``tables``, ``figures``, ``narrative`` (read from run folders, never recomputing them).
"""
