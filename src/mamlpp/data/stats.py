"""Per-channel pixel statistics (mean, std of pixels in [0, 1]) of the built-in datasets.

Plain tuples in a module without numpy or torch, so that the dataset table
(:mod:`mamlpp.data.table`) can state each dataset's preprocessing at start-up; the loaders give
their splits the same tuples.
"""

from __future__ import annotations

# Omniglot and the synthetic strokes: pixels stay {0, 1} (background 1), as in the reference code.
OMNIGLOT_MEAN, OMNIGLOT_STD = (0.0,), (1.0,)
# The usual ImageNet statistics (mini- and tieredImageNet).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The usual CIFAR-100 training-set statistics (CIFAR-FS and FC100).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
