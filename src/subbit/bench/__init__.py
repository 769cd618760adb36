"""subbit.bench."""
