"""What every command-line entry point shares: config arguments and the error line.

Bad input prints one line, ``error: <field>: <what is wrong>``, and exits
with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any, Callable, Mapping, Sequence

from jaxsmooth import config as config_lib, jobs
from jaxsmooth.errors import UserError


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless it says its default itself or has none worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and "default" not in text and action.default not in (None, False, "")
                and action.default is not argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def parser(program: str, description: str) -> argparse.ArgumentParser:
    """The argument parser of ``python -m jaxsmooth.<program>``: defaults shown, the description as written."""
    return argparse.ArgumentParser(prog=f"python -m jaxsmooth.{program}", description=description,
                                   formatter_class=HelpFormatter)


def add_subcommands(parser: argparse.ArgumentParser, **kwargs) -> argparse._SubParsersAction:
    """``parser.add_subparsers(**kwargs)`` whose subcommands' helps show defaults too (`HelpFormatter`)."""
    import functools

    return parser.add_subparsers(parser_class=functools.partial(argparse.ArgumentParser,
                                                                formatter_class=HelpFormatter), **kwargs)


def add_config_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """--config; when not `required`, a missing one means the config.json of the workdir the command reads."""
    parser.add_argument("--config", required=required, default=None,
                        help="an experiment config: a packaged name (e.g. quickstart) or a file (e.g. my_config.py)" + (
                            "" if required else " (default: the config.json of the --checkpoint workdir)")
                        + "; any field of it is overridden with --config.FIELD=VALUE, e.g. "
                          "--config.train.num_epochs=2 --config.objective.sigma=0.5 (docs/config.md lists them)")


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """--coordinator, --num-processes, --process-id, --coordinator-timeout (see `start_jax`)."""
    g = parser.add_argument_group("multi-host (jax.distributed; SLURM and TPU pods need none of these)")
    g.add_argument("--coordinator", default=None, help="coordinator address host:port (process 0 listens there)")
    g.add_argument("--num-processes", type=int, default=None, help="number of processes")
    g.add_argument("--process-id", type=int, default=None, help="this process's id, 0 .. num-processes - 1")
    g.add_argument("--coordinator-timeout", type=float, default=120.0,
                   help="seconds to wait for the coordinator and the other processes (default 120)")


def start_jax(args: argparse.Namespace | None = None) -> bool:
    """What a job sets up before its first JAX computation: the persistent compilation cache
    (`compilation.use_persistent_cache`; ``JAXSMOOTH_CACHE_DIR`` moves it or, ``off``, switches it off), then
    `distributed.maybe_initialize_distributed` from the arguments of `add_distributed_arguments` (when given).
    Returns whether the multi-controller runtime started."""
    from jaxsmooth import compilation, distributed  # imports jax: after argument errors are reported

    compilation.use_persistent_cache()
    if args is None:
        return False
    return distributed.maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                                                 timeout_s=args.coordinator_timeout)


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates ``--config.a.b=value`` / ``--config.a.b value`` overrides from other arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            body = arg[len("--config."):]
            if "=" not in body:
                if i + 1 >= len(argv):
                    raise UserError(body, "override has no value; write --config.FIELD=VALUE")
                body = f"{body}={argv[i + 1]}"
                i += 1
            overrides.append(body)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def keyword_arguments(parser: argparse.ArgumentParser, options: Mapping[str, Any]) -> argparse.Namespace:
    """A CLI's parsed arguments from Python keywords, as its flags would give them.

    `options` names flags by their argparse names (``--sigma-from``:
    ``sigma_from``); the others keep their defaults. A list or tuple for a
    comma-separated flag (``radii=[0.25, 0.5]``) is joined with commas, and a
    string for a typed flag is converted by its type. An unknown name, a
    missing required flag or a value outside a flag's choices is one
    `UserError` naming it.
    """
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    unknown = sorted(set(options) - set(actions))
    if unknown:
        raise UserError(unknown[0], f"is not an option of {parser.prog}; its options: {', '.join(sorted(actions))}")
    values = {}
    for dest, action in actions.items():
        if dest not in options:
            if action.required:
                raise UserError(dest, f"is required by {parser.prog}")
            values[dest] = action.default
            continue
        value = options[dest]
        if isinstance(value, (list, tuple)) and not isinstance(action.default, list):
            value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        if isinstance(value, str) and action.type not in (None, str):
            try:
                value = action.type(value)
            except (TypeError, ValueError) as e:
                raise UserError(dest, f"{value!r}: {e}") from None
        if action.choices is not None and value not in action.choices:
            raise UserError(dest, f"must be one of {', '.join(map(str, action.choices))}, got {value!r}")
        values[dest] = value
    return argparse.Namespace(**values)


def keyword_entry(program: str, parser: Callable[[], argparse.ArgumentParser],
                  run: Callable[[argparse.Namespace, list[str]], int]) -> Callable[..., int]:
    """A job CLI's ``write(*, overrides=(), **options)``: ``python -m jaxsmooth.<program>`` from Python."""

    def write(*, overrides: Sequence[str] = (), **options) -> int:
        with jobs.session():
            return run(keyword_arguments(parser(), options), list(overrides))

    write.__doc__ = f"""``python -m jaxsmooth.{program}`` from Python: writes (or resumes) the TSV ``out`` as the CLI
    would.

    `options` are the CLI's flags by name (``--no-progress``:
    ``no_progress=True``; see `cli.keyword_arguments`), `overrides` its
    ``--config.FIELD=VALUE`` overrides without the prefix. Returns 0; a bad
    option raises `UserError`, a stop (SIGTERM) `jobs.Stopped`.
    """
    write.__qualname__ = write.__name__ = "write"
    return write


def load_config(path: str | None, overrides: Sequence[str], workdir: str = ""):
    """The config `path` (a file or a packaged config's name, `config_lib.find`) with `overrides`; without
    `path`, the config.json `workdir` was made with."""
    if path:
        return config_lib.apply_overrides(config_lib.load(path), overrides)
    import os

    if not workdir:
        raise UserError("config", "is required when no --checkpoint workdir is given to read its config.json from")
    found = os.path.join(workdir, "config.json")
    try:
        with open(found) as f:
            text = f.read()
    except OSError as e:
        raise UserError("config", f"not given, and {found} cannot be read ({e.strerror}); give --config") from None
    return config_lib.apply_overrides(config_lib.from_json(text), overrides)


def load_model(config_path: str | None, overrides: Sequence[str], workdir: str, step: int | None, *,
               field: str = "checkpoint", wrapper: str = "", wrapper_kind: str | None = None,
               fold_batch_norm: bool = True):
    """(config, model, dataset) of a certify or attack command: the config (`load_config`; without `config_path`,
    the workdir's own, after checking the workdir holds a classifier's checkpoint so that a wrong workdir is named
    first), the model through the one loader, with the wrapper of `wrapper` (of `wrapper_kind` only, when given)
    in front, and the data set the config names (`jaxsmooth.loader.load_with_data`)."""
    from jaxsmooth import checkpoint, loader

    if not config_path:
        checkpoint.checkpoint_folder(workdir, field, step)
        loader.refuse_wrapper(workdir, field)
    config = load_config(config_path, overrides, workdir)
    model, dataset = loader.load_with_data(config, workdir, step, field=field, wrapper=wrapper,
                                           wrapper_kind=wrapper_kind, fold_batch_norm=fold_batch_norm)
    return config, model, dataset


def add_wrapper_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """--wrapper and --denoiser (a --wrapper of the kind ``denoiser`` only) of certify and attack; `what` says what
    the command then does with classifier(wrapper(x))."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--wrapper", default="",
                   help=f"the workdir of a model wrapper put in front of the classifier: {what}")
    g.add_argument("--denoiser", default="", help="the workdir of a denoiser (denoised smoothing, docs/denoised.md): "
                                                  "--wrapper for a denoiser only, trained for the sigma certified")


def wrapper_of(args: argparse.Namespace) -> dict:
    """The keywords of `load_model` for the --wrapper or --denoiser given (`add_wrapper_arguments`)."""
    from jaxsmooth.models import dncnn

    if args.denoiser and args.wrapper:  # the parser refuses both; its keyword form (`keyword_entry`) gets here
        raise UserError("denoiser", "give one of --wrapper and --denoiser: --denoiser is --wrapper for a denoiser")
    if args.denoiser:
        return {"wrapper": args.denoiser, "wrapper_kind": dncnn.NAME}
    return {"wrapper": args.wrapper, "wrapper_kind": None}


def wrapper_field(args: argparse.Namespace) -> str:
    """The field an error about the wrapper names: ``denoiser`` or ``wrapper``, as given."""
    return wrapper_of(args)["wrapper_kind"] or "wrapper"


def flag_name(parser: argparse.ArgumentParser | None, field: str) -> str:
    """`field` as the command line spells it: ``batch`` -> ``--batch``, ``sigma_file`` -> ``--sigma-file``, where the
    program (or one of its subcommands) has that option; any other field (``train.batch_size``, a file) as it is.

    The library names what is wrong by its own names (the API's keywords); a CLI's error names what its user typed.
    """
    if parser is None:
        return field
    options = set()
    for action in parser._actions:
        options.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            options.update(o for sub in action.choices.values() for a in sub._actions for o in a.option_strings)
    return next((flag for flag in (f"--{field}", f"--{field.replace('_', '-')}") if flag in options), field)


def main_wrapper(command: Callable[[list[str]], int], *, job: bool = False,
                 parser: Callable[[], argparse.ArgumentParser] | None = None) -> Callable[[list[str] | None], int]:
    """A CLI's ``main(argv=None) -> exit status``: runs `command`, turning a `UserError` into one ``error:`` line
    and exit status 2. With `parser` (the program's parser factory), the line names an option as the user typed
    it (`flag_name`).

    With `job` (train, certify, attack), `command` runs in a `jobs.session`: a
    SIGTERM or SIGINT stops it after saving, with one line and exit status 75;
    a failed write (full disk) is one ``error:`` line and status 74 (see
    `jaxsmooth.jobs` for every status).
    """

    def main(argv: list[str] | None = None) -> int:
        argv = sys.argv[1:] if argv is None else argv
        try:
            with jobs.session() if job else contextlib.nullcontext():
                return command(argv)
        except UserError as e:
            print(f"error: {flag_name(parser() if parser else None, e.field)}: {e.message}", file=sys.stderr)
            return getattr(e, "exit_status", 2)
        except jobs.Stopped as e:
            print(e, file=sys.stderr)
            return e.exit_status
        except KeyboardInterrupt:
            print("interrupted; rerun the same command to resume", file=sys.stderr)
            return 130

    return main
