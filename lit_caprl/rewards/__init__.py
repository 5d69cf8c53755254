from lit_caprl.rewards.base import FrozenReward, RewardOutput
from lit_caprl.rewards.caprl_qa import CapRLQAReward
from lit_caprl.rewards.composite import CompositeReward
from lit_caprl.rewards.length import LengthPenalty
from lit_caprl.rewards.reference import ReferenceMetric

__all__ = ["CapRLQAReward", "CompositeReward", "FrozenReward", "LengthPenalty", "ReferenceMetric", "RewardOutput"]
