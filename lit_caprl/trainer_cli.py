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
import json
import re
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningCLI

from lit_caprl.errors import ConfigError

RL_STAGES = ("GRPOStage", "DPOStage")  # their policy writes captions: it must see images


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


def last_checkpoint(root: Path) -> Path:
    """The newest `last.ckpt` (a file, or a sharded checkpoint's directory) under `root`."""
    found = sorted(root.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not found:
        raise ConfigError(f"ckpt_path=last: no last.ckpt under {root.resolve()} (the run's trainer.default_root_dir); "
                          "save one with ModelCheckpoint(save_last: true), or give the checkpoint's path")  # fmt: skip
    return found[-1]


def _local_config(path: object) -> dict | None:
    """A local `save_pretrained` directory's config.json, or None (a Hub id, a checkpoint, adapters)."""
    if not isinstance(path, str) or not (Path(path) / "config.json").is_file():
        return None
    return json.loads((Path(path) / "config.json").read_text())


def _kind(config: dict) -> str:
    return f"{config.get('model_type')} ({'vision-language' if 'vision_config' in config else 'text-only'})"


def _exists(key: str, path: object) -> None:
    from lit_caprl.models.loading import resolve

    try:
        resolve(str(path))
    except FileNotFoundError as e:
        raise ConfigError(f"{key}: {e}") from None


def preflight(cfg: Any) -> None:
    """Check a parsed `fit` config before any model or data loads; raise one `ConfigError`."""
    model = cfg.get("model") or {}
    args = model.get("init_args") or {}
    stage = str(model.get("class_path", "")).rsplit(".", 1)[-1]
    key = "model.init_args"
    if args.get("lr") is not None and not args["lr"] > 0:
        raise ConfigError(f"{key}.lr must be > 0, got {args['lr']}")
    if args.get("vision_lr") is not None and args["vision_lr"] < 0:
        raise ConfigError(f"{key}.vision_lr must be >= 0 (0 freezes the vision tower), got {args['vision_lr']}")
    if args.get("num_generations") is not None and args["num_generations"] < 2:
        raise ConfigError(f"{key}.num_generations must be >= 2: GRPO compares captions of one image, got "
                          f"{args['num_generations']}")  # fmt: skip
    if args.get("model") is not None:
        _exists(f"{key}.model", args["model"])
    init_from = args.get("init_from")
    if init_from is not None:
        path = Path(str(init_from))
        if not (path.is_file() or (path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
            raise ConfigError(f"{key}.init_from: {init_from} is neither an export directory (config.json) nor a "
                              "checkpoint file; give the previous stage's export, e.g. runs/NAME/export")  # fmt: skip
    base, start = _local_config(args.get("model")), _local_config(init_from)
    if base is not None and start is not None and _kind(base) != _kind(start):
        raise ConfigError(f"{key}.init_from: {init_from} is a {_kind(start)} model but model {args['model']} is a "
                          f"{_kind(base)} one; init_from must be an export of the same model")  # fmt: skip
    policy = start or base
    if stage in RL_STAGES and policy is not None and "vision_config" not in policy:
        raise ConfigError(f"{key}: the {stage} policy must be a vision-language captioner, but "
                          f"{init_from or args['model']} is {_kind(policy)} (a reader export?)")  # fmt: skip
    reward = args.get("reward")
    reward_args = reward.get("init_args") if hasattr(reward, "get") else None
    for reader_key, reader in _readers(reward_args, f"{key}.reward.init_args"):
        _exists(reader_key, reader)
        config = _local_config(reader)
        if config is not None and "vision_config" in config:
            raise ConfigError(f"{reader_key}: the reader must be a text-only LLM (it never sees the image), but "
                              f"{reader} is {_kind(config)} (a captioner export?)")  # fmt: skip
    _check_data(cfg.get("data") or {})


def _readers(args: Any, key: str) -> list[tuple[str, str]]:
    """(key, reader path) of a CapRLQAReward, also inside a CompositeReward's terms."""
    if not args:
        return []
    out = [(f"{key}.reader", args["reader"])] if args.get("reader") is not None else []
    for name, term in (args.get("terms") or {}).items():
        term_args = term.get("init_args") if hasattr(term, "get") else None
        out += _readers(term_args, f"{key}.terms.{name}.init_args")
    return out


def _check_data(data: Any) -> None:
    args = data.get("init_args") or {}
    key = "data.init_args"
    if args.get("root") is not None and not args.get("generate"):
        if not (Path(args["root"]) / "train.jsonl").is_file():
            raise ConfigError(f"{key}.root: {args['root']} holds no ShapesWorld data set (train.jsonl); write one "
                              f"with `lit-caprl data shapes --out {args['root']}`, or set generate: true")  # fmt: skip
    if (args.get("format") or "jsonl") == "jsonl":
        for name in ("train_file", "val_file"):
            if args.get(name) is not None and not Path(args[name]).is_file():
                raise ConfigError(f"{key}.{name}: {args[name]} does not exist")
    for name in ("batch_size", "num_workers"):
        if args.get(name) is not None and args[name] < (1 if name == "batch_size" else 0):
            raise ConfigError(f"{key}.{name} must be {'>= 1' if name == 'batch_size' else '>= 0'}, got {args[name]}")
