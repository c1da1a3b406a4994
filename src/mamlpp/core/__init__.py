"""MAML++ itself: the configuration of the six techniques, their schedules, the algorithm (inner
loop, multi-step loss, meta-loss, prediction), the ways tasks run together (executions), the
learner that holds the parameters, and the outer step.

Imports only :mod:`mamlpp.nn`, :mod:`mamlpp.util` and :mod:`mamlpp.errors`: no data, no run
folders, no command line. See ``docs/algorithm.md`` for the map from technique to function.
"""
