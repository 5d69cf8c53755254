from lit_caprl.callbacks.export import HFExport

__all__ = ["HFExport"]
