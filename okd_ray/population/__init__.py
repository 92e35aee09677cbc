"""The population step: Member and Fusion (plain PyTorch) and the step both engines run."""

from .fusion import Fusion
from .member import Member
from .plan import PopulationPlan, load_dataset, plan_population
from .step import population_eval, population_step

__all__ = ["Fusion", "Member", "PopulationPlan", "load_dataset", "plan_population", "population_eval", "population_step"]
