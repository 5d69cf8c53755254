from lit_caprl.rewards.base import FrozenReward, RewardOutput
from lit_caprl.rewards.caprl_qa import CapRLQAReward

__all__ = ["CapRLQAReward", "FrozenReward", "RewardOutput"]
