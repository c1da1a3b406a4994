"""Running meta-steps fast: the step runner (CUDA-graph replay on GPUs, eager steps elsewhere),
the capture-safety check, precision modes, and data-parallel synchronisation.

Sits on :mod:`mamlpp.core`; knows nothing of datasets, run folders or the command line.
"""
