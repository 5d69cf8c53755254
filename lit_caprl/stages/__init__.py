from lit_caprl.stages.sft import SFTStage

__all__ = ["SFTStage"]
