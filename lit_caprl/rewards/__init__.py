from lit_caprl.rewards.base import FrozenReward, RewardOutput
from lit_caprl.rewards.caprl_qa import CapRLQAReward
from lit_caprl.rewards.classifier import ClassifierReward, NLIFidelity
from lit_caprl.rewards.clip import ClipSimilarity
from lit_caprl.rewards.composite import CompositeReward
from lit_caprl.rewards.length import LengthPenalty
from lit_caprl.rewards.reference import ReferenceMetric

__all__ = [
    "CapRLQAReward",
    "ClassifierReward",
    "ClipSimilarity",
    "CompositeReward",
    "FrozenReward",
    "LengthPenalty",
    "NLIFidelity",
    "ReferenceMetric",
    "RewardOutput",
]
