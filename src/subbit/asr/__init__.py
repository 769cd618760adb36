"""subbit.asr."""
