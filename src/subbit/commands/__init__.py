"""CLI verbs, one module each; see :mod:`subbit.cli`."""
