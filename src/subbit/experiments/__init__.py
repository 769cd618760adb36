"""subbit.experiments: the paper's comparisons and ablations as runnable, resumable recipes.

``recipes`` names the method configs, ``ablations`` derives one-knob variants of ``gq4``,
``compare`` trains/evaluates them from one fp32 run and writes JSON, markdown and plots
(``plots``). The CLI front ends are ``subbit compare`` and ``subbit report``.
"""

from subbit.experiments.ablations import ABLATIONS, ablation_recipes
from subbit.experiments.compare import CompareConfig, CompareResult, deploy_bytes, markdown_table, run_compare
from subbit.experiments.recipes import RECIPES, Recipe, format_recipes, get_recipe, parse_recipes, quantizable_names

__all__ = [
    "ABLATIONS", "CompareConfig", "CompareResult", "RECIPES", "Recipe", "ablation_recipes", "deploy_bytes",
    "format_recipes", "get_recipe", "markdown_table", "parse_recipes", "quantizable_names", "run_compare",
]
