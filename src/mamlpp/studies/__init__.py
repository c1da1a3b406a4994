"""Studies users run on top of the library: ablations, the meta-step benchmark, run reports and
their plots. Commands, not library: nothing below imports them.
"""
