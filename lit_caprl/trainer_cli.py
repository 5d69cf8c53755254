"""`lit-caprl fit` / `validate`: LightningCLI with our conventions, and checks that run before
anything heavy loads.

- Subclass mode for model and data, OmegaConf interpolation in YAML, several `-c` merge.
- `--ckpt_path=last` resumes from the newest `last.ckpt` under the run's `default_root_dir`
  (Lightning alone looks only in the new run's own version directory, finds nothing and starts
  from scratch), or stops and says where it looked.
- `preflight` checks what can be checked from the config alone (ranges, paths, a reader that
  is text-only, an `init_from` of the same model family as `model`) in well under a second,
  instead of after minutes of loading; each problem is one `ConfigError` naming its key.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import shutil
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningCLI

from lit_caprl.errors import ConfigError
from lit_caprl.preflight import last_checkpoint, preflight


class CapRLCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},  # errors -> `config_error`
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """`fit` and `validate`; no stage has a test or predict step (`lit-caprl caption` predicts)."""
        return {k: v for k, v in LightningCLI.subcommands().items() if k in ("fit", "validate")}

    def parse_arguments(self, parser: Any, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as e:
            raise config_error(str(e)) from None
        sub = self.config.get("subcommand")
        if sub and self.config[sub].get("ckpt_path") == "last":
            root = Path(self.config[sub].trainer.get("default_root_dir") or ".")
            self.config[sub].ckpt_path = str(last_checkpoint(root))
            print(f"resuming from {self.config[sub].ckpt_path}", flush=True)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            remove_unused_log_dir(self.trainer)
            raise

    def before_instantiate_classes(self) -> None:
        sub = self.config.get("subcommand")
        preflight(self.config[sub] if sub else self.config)


def config_error(message: str) -> ConfigError:
    """jsonargparse's report of a bad key or value, in one line; a misspelt option gets the
    closest names the class accepts ("did you mean")."""
    unknown = re.search(r"Option '([^']+)' is not accepted", message)
    owner = re.search(r"class_path '([\w.]+)'", message)
    key = re.search(r'Parser key "([^"]+)"', message)
    if unknown and owner:
        module, _, name = owner[1].rpartition(".")
        accepted = inspect.signature(getattr(importlib.import_module(module), name)).parameters
        close = difflib.get_close_matches(unknown[1], list(accepted), n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else f"; it accepts {list(accepted)}"
        where = f"{key[1]}.init_args." if key else ""
        return ConfigError(f"{where}{unknown[1]}: {name} has no option {unknown[1]!r}{hint}")
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    return ConfigError("; ".join(lines[:3]) + (" ..." if len(lines) > 3 else ""))


def remove_unused_log_dir(trainer: L.Trainer) -> None:
    """A fit that failed before it logged or saved anything leaves no empty `version_N` behind
    (only the config LightningCLI saved there); the run directory itself is never touched."""
    if trainer.logger is None or not trainer.is_global_zero or trainer.logger.log_dir is None:
        return
    log_dir = Path(trainer.logger.log_dir)
    if not log_dir.is_dir() or log_dir.resolve() == Path(trainer.default_root_dir).resolve():
        return
    if all(p.is_file() and p.name in ("config.yaml", "hparams.yaml") for p in log_dir.iterdir()):
        shutil.rmtree(log_dir)
