from lit_caprl.callbacks.curriculum import CurriculumCallback
from lit_caprl.callbacks.export import HFExport
from lit_caprl.callbacks.progress import ProgressFile
from lit_caprl.callbacks.reward_logging import RewardLoggingCallback
from lit_caprl.callbacks.rollout import RolloutCallback

__all__ = ["CurriculumCallback", "HFExport", "ProgressFile", "RewardLoggingCallback", "RolloutCallback"]
