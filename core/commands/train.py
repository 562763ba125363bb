"""train: fine-tune with LoRA / QLoRA into a run folder (runs/<name>/); the GUI runs this same command."""

from __future__ import annotations

HELP = "Fine-tune a Qwen3 model with LoRA / QLoRA (Unsloth on a GPU) into runs/<name>/."


def add_arguments(p) -> None:
    from core.config import RunConfig
    from core.settings import add_cli_flags

    p.add_argument("config", help="Run config YAML (see presets/train/), or a run folder to resume.")
    p.add_argument("--resume", action="store_true",
                   help="Continue the run from its newest checkpoint (same step count).")
    p.add_argument("--dry-run", action="store_true",
                   help="Check the config and print it resolved, without training.")
    # Every RunConfig setting as a flag: --name, --runs-dir, --model.name-or-path, --train.micro-batch ...
    add_cli_flags(p, RunConfig)


def resolve_config(args):
    """The RunConfig for these arguments: the YAML (or the run folder's config.yaml) + flag overrides."""
    from pathlib import Path

    from core.config import RunConfig
    from core.runfolder import RunFolder
    from core.settings import ConfigError, cli_overrides, deep_merge, from_dict, read_yaml
    from core.train.runs import CONFIG, new_run_name

    path = Path(args.config).expanduser()
    run_dir = None  # the run folder given, which then is the run (wherever it was copied to)
    if path.is_dir():
        if not (path / CONFIG).is_file():
            raise ConfigError(f"{path} is a folder without {CONFIG}; give a config YAML or a run folder")
        run_dir, path = path, path / CONFIG
    elif path.name == CONFIG and RunFolder(path.parent).status_path.is_file():
        run_dir = path.parent  # the config.yaml inside a run folder: that run
    data, lines = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of settings, got {type(data).__name__}", "", str(path))
    overrides = cli_overrides(args)
    if overrides:
        data = deep_merge(data, overrides)
    cfg = from_dict(RunConfig, data, source=str(path), lines=lines)
    if run_dir is not None:
        given = getattr(args, "set__name", None)
        if given and given != run_dir.name:
            raise ConfigError(f"--name {given} differs from the run folder given ({run_dir}); the folder is "
                              "the run: copy or rename the folder instead", "name")
        cfg.name, cfg.runs_dir = run_dir.resolve().name, str(run_dir.resolve().parent)
    if not cfg.name:
        if args.resume:
            raise ConfigError("--resume needs the run's name (--name) or its folder", "name")
        cfg.name = new_run_name(cfg.model.name_or_path, cfg.model.method)
    cfg.runs_dir = str(Path(cfg.runs_dir).expanduser().resolve())
    return cfg


def run(args) -> int:
    import sys

    from core.settings import dump_yaml
    from core.train.runs import check_run_name

    cfg = resolve_config(args)
    check_run_name(cfg.name)
    if args.dry_run:
        sys.stdout.write(dump_yaml(cfg))
        return 0
    from core.train.worker import run as train

    return train(cfg, resume=args.resume)
