"""subbit.asr.models."""
