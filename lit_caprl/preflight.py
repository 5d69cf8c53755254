"""Checks of a `fit` config that need no model, data or Lightning: ranges, paths, a reader
that is text-only, an `init_from` of the same model kind as `model`. `lit-caprl fit` runs them
twice: first on the YAML files and `--key=value` overrides as written (`early_check`, before
Lightning is even imported: a mistake is reported in well under a second instead of ~8 s),
then on the config LightningCLI parsed (the authoritative one). Each problem is one
`ConfigError` naming its key.
"""

from __future__ import annotations

import ast
import difflib
import json
from pathlib import Path
from typing import Any

import yaml

from lit_caprl.errors import ConfigError, MissingPath
from lit_caprl.models.paths import resolve

RL_STAGES = ("GRPOStage", "DPOStage")  # their policy writes captions: it must see images


def _optim_fields() -> list[str]:
    """The fields of `lit_caprl.stages.optim.Optim`, read from its source (no torch import)."""
    tree = ast.parse((Path(__file__).parent / "stages" / "optim.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Optim")
    return [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)]


OPTIM_FIELDS = _optim_fields()


def early_check(argv: list[str]) -> None:
    """`preflight` on the config as the command line gives it (`-c` files merged left to right,
    then `--key=value` overrides). Only an early warning: whatever this cannot read, LightningCLI
    parses and checks again."""
    files, overrides, i = [], [], 1
    while i < len(argv):
        arg = argv[i]
        if arg in ("-c", "--config") and i + 1 < len(argv):
            files.append(argv[i + 1])
            i += 1
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
        elif arg.startswith("--") and "=" in arg and "+=" not in arg.split("=", 1)[0] + "=":
            overrides.append(arg[2:])
        elif arg.startswith("--") and "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            overrides.append(f"{arg[2:]}={argv[i + 1]}")
            i += 1
        i += 1
    try:
        cfg = read_config(files, overrides)
    except MissingPath:
        raise
    except Exception:  # noqa: BLE001 - syntax this reader does not know: LightningCLI will parse it
        return
    if isinstance(cfg, dict):
        _check_keys(cfg.get("model"), "model")
        _check_keys(cfg.get("data"), "data")
        preflight(cfg)
        if cfg.get("ckpt_path") == "last":
            last_checkpoint(Path((cfg.get("trainer") or {}).get("default_root_dir") or "."))


def read_config(files: list[str], overrides: list[str]) -> dict:
    """The config `-c` files (merged left to right) and `key=value` overrides make, as plain data."""
    for f in files:
        if not Path(f).is_file():
            raise MissingPath(f"config file {f} does not exist")
    cfg: dict = {}
    for f in files:
        cfg = _merge(cfg, yaml.safe_load(Path(f).read_text()) or {})
    for item in overrides:
        key, value = item.split("=", 1)
        node: Any = yaml.safe_load(value) if value else None
        for part in reversed(key.split(".")):
            node = {part: node}
        cfg = _merge(cfg, node)
    return cfg


def _merge(base: Any, new: Any) -> Any:
    """`new` over `base` as LightningCLI merges configs: dicts key by key, except that a node
    whose `class_path` changes is replaced whole (the new class has its own init_args)."""
    if not (isinstance(base, dict) and isinstance(new, dict)):
        return new
    if "class_path" in new and new["class_path"] != base.get("class_path"):
        return new
    return {**base, **{k: _merge(base[k], v) if k in base else v for k, v in new.items()}}


def accepted_arguments(class_path: str) -> list[str] | None:
    """The `__init__` argument names of one of our classes, read from its source without
    importing it (importing a stage pulls in torch and transformers: seconds); None when they
    cannot be read this way (another package's class, `**kwargs`, a parent's `__init__`)."""
    module, _, name = class_path.rpartition(".")
    if not module.startswith("lit_caprl"):
        return None
    root = Path(__file__).parent  # the lit_caprl package: its modules are files under it
    for _ in range(3):  # follow `from X import name` re-exports of a package's __init__
        path = root.joinpath(*module.split(".")[1:])
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if not path.is_file():
            return None
        tree = ast.parse(path.read_text())
        cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
        if cls is not None:
            init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
            if init is None or init.args.vararg or init.args.kwarg:
                return None
            return [a.arg for a in [*init.args.args, *init.args.kwonlyargs] if a.arg != "self"]
        source = next(
            (
                n.module
                for n in tree.body
                if isinstance(n, ast.ImportFrom) and n.module and any(alias.name == name for alias in n.names)
            ),
            None,
        )
        if source is None:
            return None
        module = source
    return None


def _check_keys(section: Any, key: str) -> None:
    """A misspelt `init_args` key of one of our classes, with the closest names it accepts."""
    if not hasattr(section, "get") or not isinstance(section.get("class_path"), str):
        return
    accepted = accepted_arguments(section["class_path"])
    if accepted is None:
        return
    owner = section["class_path"].rsplit(".", 1)[-1]
    for name in section.get("init_args") or {}:
        if name in accepted:
            continue
        if "optim" in accepted and name in (*OPTIM_FIELDS, "optimizer"):  # a config from before `optim`
            raise ConfigError(
                f"{key}.init_args.{name}: optimizer settings live under optim: write "
                f"{key}.init_args.optim.{'name' if name == 'optimizer' else name}"
            )
        close = difflib.get_close_matches(name, accepted, n=3)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else f"it accepts {accepted}"
        raise ConfigError(f"{key}.init_args.{name}: {owner} has no option {name!r}; {hint}")
    optim = (section.get("init_args") or {}).get("optim")
    for name in optim if isinstance(optim, dict) and "optim" in accepted else []:
        if name not in OPTIM_FIELDS:
            close = difflib.get_close_matches(name, OPTIM_FIELDS, n=3)
            hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else f"it accepts {OPTIM_FIELDS}"
            raise ConfigError(f"{key}.init_args.optim.{name}: Optim has no option {name!r}; {hint}")


def _number(value: Any) -> float | None:
    """A config value as a number; None when it is not one (the parser will say so)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def last_checkpoint(root: Path) -> Path:
    """The newest `last.ckpt` (a file, or a sharded checkpoint's directory) under `root`."""
    found = sorted(root.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not found:
        raise ConfigError(
            f"ckpt_path=last: no last.ckpt under {root.resolve()} (the run's trainer.default_root_dir); "
            "save one with ModelCheckpoint(save_last: true), or give the checkpoint's path"
        )
    return found[-1]


def _local_config(path: object) -> dict | None:
    """A local `save_pretrained` directory's config.json, or None (a Hub id, a checkpoint, adapters)."""
    if not isinstance(path, str) or not (Path(path) / "config.json").is_file():
        return None
    return json.loads((Path(path) / "config.json").read_text())


def _kind(config: dict) -> str:
    return f"{config.get('model_type')} ({'vision-language' if 'vision_config' in config else 'text-only'})"


def _exists(key: str, path: object) -> None:
    try:
        resolve(str(path))
    except FileNotFoundError as e:
        raise ConfigError(f"{key}: {e}") from None


def preflight(cfg: Any) -> None:
    """Check a parsed `fit` config before any model or data loads; raise one `ConfigError`."""
    model = cfg.get("model")
    model = model if hasattr(model, "get") else {}  # a class given by name alone: LightningCLI checks it
    args = model.get("init_args") or {}
    stage = str(model.get("class_path", "")).rsplit(".", 1)[-1]
    key = "model.init_args"
    optim = args.get("optim") if hasattr(args.get("optim"), "get") else {}
    lr, vision_lr = _number(optim.get("lr")), _number(optim.get("vision_lr"))
    groups = _number(args.get("num_generations"))
    if lr is not None and not lr > 0:
        raise ConfigError(f"{key}.optim.lr must be > 0, got {optim['lr']}")
    if vision_lr is not None and vision_lr < 0:
        raise ConfigError(f"{key}.optim.vision_lr must be >= 0 (0 freezes the vision tower), got {optim['vision_lr']}")
    if groups is not None and groups < 2:
        raise ConfigError(
            f"{key}.num_generations must be >= 2: GRPO compares captions of one image, got {args['num_generations']}"
        )
    if args.get("model") is not None:
        _exists(f"{key}.model", args["model"])
    init_from = args.get("init_from")
    if init_from is not None:
        path = Path(str(init_from))
        if not (path.is_file() or (path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
            raise ConfigError(
                f"{key}.init_from: {init_from} is neither an export directory (config.json) nor a "
                "checkpoint file; give the previous stage's export, e.g. runs/NAME/export"
            )
    base, start = _local_config(args.get("model")), _local_config(init_from)
    if base is not None and start is not None and _kind(base) != _kind(start):
        raise ConfigError(
            f"{key}.init_from: {init_from} is a {_kind(start)} model but model {args['model']} is a "
            f"{_kind(base)} one; init_from must be an export of the same model"
        )
    policy = start or base
    if stage in RL_STAGES and policy is not None and "vision_config" not in policy:
        raise ConfigError(
            f"{key}: the {stage} policy must be a vision-language captioner, but "
            f"{init_from or args['model']} is {_kind(policy)} (a reader export?)"
        )
    reward = args.get("reward")
    reward_args = reward.get("init_args") if hasattr(reward, "get") else None
    for reader_key, reader in _readers(reward_args, f"{key}.reward.init_args"):
        _exists(reader_key, reader)
        config = _local_config(reader)
        if config is not None and "vision_config" in config:
            raise ConfigError(
                f"{reader_key}: the reader must be a text-only LLM (it never sees the image), but "
                f"{reader} is {_kind(config)} (a captioner export?)"
            )
    data = cfg.get("data")
    _check_data(data if hasattr(data, "get") else {})


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
            raise ConfigError(
                f"{key}.root: {args['root']} holds no ShapesWorld data set (train.jsonl); write one "
                f"with `lit-caprl data shapes --out {args['root']}`, or set generate: true"
            )
    if (args.get("format") or "jsonl") == "jsonl":
        for name in ("train_file", "val_file"):
            if args.get(name) is not None and not Path(args[name]).is_file():
                raise ConfigError(f"{key}.{name}: {args[name]} does not exist")
    for name in ("batch_size", "num_workers"):
        value = _number(args.get(name))
        if value is not None and value < (1 if name == "batch_size" else 0):
            raise ConfigError(f"{key}.{name} must be {'>= 1' if name == 'batch_size' else '>= 0'}, got {args[name]}")
