"""The paper's baselines as :class:`~subbit.quant.base.WeightQuantizer` methods.

Importing this package registers them: ``"uniform"`` (symmetric fake quant + STE, optional
LSQ; with ``bits=8, granularity="channel"`` it is the paper's 8-bit QAT), ``"s8bqat"`` (fixed
mu-law centroids + MRACos regularizer), ``"dkm"`` (differentiable soft k-means) and ``"ptq"``
(uniform round-to-nearest or 1-D k-means, no training).
"""

from subbit.quant.baselines.dkm import DKMOptions, DKMQuantizer
from subbit.quant.baselines.ptq import PTQOptions, PTQQuantizer
from subbit.quant.baselines.s8bqat import S8BQATOptions, S8BQATQuantizer
from subbit.quant.baselines.uniform import LSQOptions, UniformOptions, UniformQuantizer

__all__ = ["DKMOptions", "DKMQuantizer", "LSQOptions", "PTQOptions", "PTQQuantizer", "S8BQATOptions",
           "S8BQATQuantizer", "UniformOptions", "UniformQuantizer"]
