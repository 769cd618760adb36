"""subbit.experiments."""
