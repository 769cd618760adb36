"""Default synthetic corpus (grammar + TTS) and readers for real corpora."""

from subbit.asr.corpus.build import BuildOptions, build_corpus, is_cached

__all__ = ["BuildOptions", "build_corpus", "is_cached"]
