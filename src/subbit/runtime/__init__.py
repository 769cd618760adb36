"""subbit.runtime."""
