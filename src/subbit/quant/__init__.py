"""subbit.quant."""
