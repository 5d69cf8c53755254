from lit_caprl.stages.clip import ClipStage
from lit_caprl.stages.dpo import DPOStage
from lit_caprl.stages.grpo import GRPOStage
from lit_caprl.stages.reward_model import RewardModelStage
from lit_caprl.stages.sft import SFTStage

__all__ = ["ClipStage", "DPOStage", "GRPOStage", "RewardModelStage", "SFTStage"]
