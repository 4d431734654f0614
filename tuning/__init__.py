"""Population-Based Training of the RL phases (`run_pbt`) and its reports."""

from tuning.pbt import PBTResult, load_best, run_pbt

__all__ = ["PBTResult", "load_best", "run_pbt"]
