from lit_caprl.callbacks.export import HFExport
from lit_caprl.callbacks.reward_logging import RewardLoggingCallback
from lit_caprl.callbacks.rollout import Rollout, RolloutCallback

__all__ = ["HFExport", "RewardLoggingCallback", "Rollout", "RolloutCallback"]
