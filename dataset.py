"""The course's ``dataset`` module: the 80 class names, the course's datasets, the split, the transform presets.

What a student reaches for, under the course's names:

* ``CLASSES`` / ``NUM_CLASSES``: the 80 COCO class names in the course's order (person = 0 ... toothbrush = 79).
* ``COCOTrainImageDataset(img_dir, annotations_dir, transform=None)``: labelled images, ``dataset[i] ->
  (image, 80-long multi-hot target)``, every label line checked (a bad one is an error naming ``file:line``).
* ``COCOTestImageDataset(img_dir, transform=None)``: the unlabelled test images, ``dataset[i] -> (image, stem)``.
* ``split_train_val``, ``kfold_assignments``, ``TransformSubset``: a stratified split and folds, each side with
  its own transform.
* ``TrainPreset`` / ``EvalPreset``: the transforms (random crops, aspect and colour jitter, mirror; resize and
  pad), picklable, so DataLoader workers started with ``spawn`` (Windows, macOS) can use them.
* ``course_dirs`` / ``find_data_root``: where the course's folders are.

The code lives in the ``coco`` package: ``coco/course.py`` (class names, label files, the folder layout, splits;
no torch), ``coco/data.py`` (the datasets), ``coco/transforms.py`` (the presets), ``coco/synthetic.py`` (the demo
data, ``python -m coco.synthetic OUT_DIR``). Datasets and transforms are defined there, so they pickle as
``coco.data.*`` and ``coco.transforms.*``.
"""
from coco.course import (CLASSES, IMAGE_EXTENSIONS, NUM_CLASSES, course_dirs, find_data_root, kfold_assignments,
                         load_split, read_label_file, save_split, split_train_val)
from coco.data import COCOTestImageDataset, COCOTrainImageDataset, TransformSubset, load_rgb, unreadable_images
from coco.transforms import EvalPreset, TrainPreset, denormalise, long_side_size

__all__ = ["CLASSES", "NUM_CLASSES", "IMAGE_EXTENSIONS", "read_label_file", "course_dirs", "find_data_root",
           "split_train_val", "kfold_assignments", "save_split", "load_split", "load_rgb", "unreadable_images",
           "COCOTrainImageDataset", "COCOTestImageDataset", "TransformSubset", "TrainPreset", "EvalPreset",
           "denormalise", "long_side_size"]
