"""Infrastructure with no MAML in it: atomic file writes, text formatting, progress bars, checked
configuration fields.

The lowest layer beside :mod:`mamlpp.errors`: it imports nothing else of the package.
"""
