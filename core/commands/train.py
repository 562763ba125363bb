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
    from core.train.launch import rank_info
    from core.train.runs import check_run_name

    cfg = resolve_config(args)
    check_run_name(cfg.name)
    # A resumed run keeps the settings it started with; a name already in use is the worker's
    # error to report. A rank of a ddp / fsdp run was checked by its launcher.
    if not args.resume and rank_info() is None and not _taken(cfg):
        check_settings(cfg)
    if rank_info() is None:
        from core.train.launch import plan

        plan(cfg)  # train.gpus / train.strategy this machine cannot run: refused before a folder is made
    if args.dry_run:
        sys.stdout.write(dump_yaml(cfg))
        return 0
    info = rank_info()
    if info is not None:  # one process of a ddp / fsdp run, started by its launcher parent
        from core.train.ranks import run_rank

        return run_rank(cfg, info, args.resume)
    from core.train.worker import run as train

    return train(cfg, resume=args.resume)


def _taken(cfg) -> bool:
    """The run folder exists and is not the queued one the GUI prepared for this start."""
    from pathlib import Path

    from core.train import runs

    run_dir = Path(cfg.runs_dir) / cfg.name
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return False
    return runs.read_status(run_dir).get("state") != "queued"


def check_settings(cfg) -> None:
    """The settings checked against each other, the data and the GPU (core.train.validate), as the
    Train tab checks them: warnings printed, every error raised at once. A run folder the GUI
    prepared for this config is marked failed with the same list, so it does not wait forever."""
    import sys
    from pathlib import Path

    from core.train import runs
    from core.train.validate import SettingsProblems, check_run, detected_card, errors, warnings

    problems = check_run(cfg, card=detected_card(cfg))
    for p in warnings(problems):
        print(f"warning: {p}", file=sys.stderr)
    bad = errors(problems)
    if not bad:
        return
    exc = SettingsProblems(bad)
    status = Path(cfg.runs_dir) / cfg.name / runs.STATUS
    if status.is_file() and runs.read_status(status.parent).get("state") == "queued":
        runs.write_status(status.parent, state="failed", error=str(exc), resumable=False,
                          finished=runs.now_iso(), advice="Change the settings named above and start a new run.")
    raise exc
