"""subbit.export."""
