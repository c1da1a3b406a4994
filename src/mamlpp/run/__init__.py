"""Experiments: the TOML experiment config and its presets, building a learner and device from
it, the trainer, the run folder (checkpoints, lock, resume), evaluation with confidence
intervals and ensembles, and the predictor for a trained model.

Uses :mod:`mamlpp.core`, :mod:`mamlpp.engine` and :mod:`mamlpp.data`; the command line and the
studies use it.
"""
