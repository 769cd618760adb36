"""subbit.quant.baselines."""
