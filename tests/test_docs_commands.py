"""Every ``python -m jaxsmooth.<cli> ...`` command in README.md and docs/**/*.md parses with that CLI's own parser.

How a command is read from markdown:

- In a fenced code block, a command starts at ``python -m jaxsmooth.NAME``
  (anything before it on the line, such as ``launch/local.sh 2``, is not
  part of it), continues on the next line while a line ends with ``\\``,
  and stops at an unquoted ``;``, ``&&``, ``||``, ``|``, ``>`` or ``#``.
  It is parsed in full: ``jaxsmooth.NAME._parser().parse_args`` must
  accept it, required arguments included.
- Shell: ``$(...)`` substitutions are removed (their output is unknown
  here); ``for V in A B; do ... done`` loops run the check once per value
  of ``$V``; variables assigned in the block (``D=workdirs/x``) are
  substituted; other ``$VARS`` stay as they are (a path, a value).
- Synopses: ``[...]`` groups (optional parts) and ``...`` words are left
  out, with the option word just before a ``...``. Upper-case words (FILE,
  DIR, configs/X.py) are placeholders and parse as the values they stand for;
  ``python -m jaxsmooth.X`` with an upper-case name stands for any CLI and is
  not read.
- ``--config.FIELD=VALUE`` (or ``--config.FIELD VALUE``) overrides are taken
  out as the CLIs do (`cli.split_overrides`); FIELD must be a field of
  `jaxsmooth.config.default()` and VALUE of its type, unless FIELD is an
  upper-case placeholder or VALUE holds a ``$``.
- An inline code span in prose (`` `python -m jaxsmooth.bench train --model` ``)
  names a command rather than giving one: its program, its subcommand (for
  CLIs that have them) and each ``--option`` it names must exist.
"""

import argparse
import contextlib
import glob
import importlib
import io
import itertools
import os
import re
import shlex

import pytest

from jaxsmooth import cli, config as config_lib
from jaxsmooth.errors import UserError

from conftest import ROOT

COMMAND = re.compile(r"python -m jaxsmooth\.([a-z_]\w*)")  # jaxsmooth.X, upper case: a placeholder
SEPARATOR = re.compile(r"[();<>|&]+")  # a shell operator token: the command ends before it
# A code span naming a program and what follows (`bench certify --noise`, `certify --sigma-from W`): a mention.
SHORT = re.compile(r"(analyze|attack|bench|certify|convert|report|train) (-{1,2}[a-z]|[a-z]+\b)")


def _markdown_files() -> list[str]:
    files = [os.path.join(ROOT, "README.md")]
    files += sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
    return [f for f in files if os.path.isfile(f)]


def _drop_substitutions(text: str) -> str:
    """`text` without its ``$(...)`` command substitutions (nested parentheses allowed)."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$(", i):
            depth, i = 1, i + 2
            while i < len(text) and depth:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _substitute(text: str, variables: dict[str, str]) -> str:
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        text = text.replace("${" + name + "}", value)
        text = re.sub(r"\$" + name + r"(?!\w)", lambda m: value, text)
    return text


def _words(command: str) -> list[str]:
    """Shell words of `command` from ``python`` to the first separator, synopsis parts left out."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = []
    for word in lexer:
        if SEPARATOR.fullmatch(word):
            break
        words.append(word)
    kept, depth = [], 0
    for word in words:  # [optional] groups
        depth += word.count("[") if word.startswith("[") else 0
        if depth == 0:
            kept.append(word)
        depth -= word.count("]") if word.endswith("]") and depth else 0
        depth = max(depth, 0)
    out = []
    for word in kept:
        if word == "..." or word.endswith("..."):
            if out and out[-1].startswith("-") and "=" not in out[-1]:
                out.pop()
            continue
        out.append(word)
    return out


def _block_commands(lines: list[str]) -> list[str]:
    """The commands of one fenced code block, each already expanded over the loops around it."""
    commands, loops, variables = [], [], {}
    i = 0
    while i < len(lines):
        line = lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):  # continuation
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i].strip()
        i += 1
        loop = re.match(r"\s*for (\w+) in ([^;]+); do\b", line)
        assign = re.match(r"\s*([A-Za-z_]\w*)=(\S+)", line)
        if loop:
            loops.append((loop.group(1), loop.group(2).split()))
        elif re.match(r"\s*done\b", line):
            loops.pop() if loops else None
        elif assign and not COMMAND.search(line):
            variables[assign.group(1)] = assign.group(2)
        start = COMMAND.search(line)
        if not start:
            continue
        text = _drop_substitutions(line[start.start():])
        names = [name for name, _ in loops]
        for values in itertools.product(*[values for _, values in loops]) or [()]:
            commands.append(_substitute(text, {**variables, **dict(zip(names, values))}))
    return commands


def _commands(path: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(full commands, inline mentions) of a markdown file, each as (where, command text)."""
    with open(path) as f:
        return _commands_of_text(f.read(), path)


def _commands_of_text(text: str, path: str = ROOT) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    full, inline, prose = [], [], []
    parts = re.split(r"^(```.*)$", text, flags=re.MULTILINE)
    in_block = False
    for part in parts:
        if part.startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            full += [(os.path.relpath(path, ROOT), c) for c in _block_commands(part.splitlines())]
        else:
            prose.append(part)
    comments = [line.split("#", 1)[1] for part, block in zip(parts, _in_block(parts)) if block
                for line in part.splitlines() if "#" in line]
    for span in re.findall(r"`([^`]+)`", "\n".join(prose + comments)):
        span = " ".join(span.split())
        if COMMAND.search(span):
            inline.append((os.path.relpath(path, ROOT), span[COMMAND.search(span).start():]))
        elif SHORT.match(span):  # `bench certify --noise`: the program named without python -m jaxsmooth.
            inline.append((os.path.relpath(path, ROOT), "python -m jaxsmooth." + span))
    return full, inline


def _in_block(parts: list[str]) -> list[bool]:
    """For each part of a markdown text split at its fences, whether it is a fenced code block's body."""
    inside, out = False, []
    for part in parts:
        if part.startswith("```"):
            inside = not inside
            out.append(False)
        else:
            out.append(inside)
    return out


def _parser(name: str) -> argparse.ArgumentParser:
    try:
        module = importlib.import_module(f"jaxsmooth.{name}")
    except ModuleNotFoundError:
        raise AssertionError(f"there is no module jaxsmooth.{name}") from None
    assert hasattr(module, "_parser"), f"jaxsmooth.{name} has no _parser()"
    return module._parser()


def _parse_error(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            parser.parse_args(argv)
        except SystemExit:
            return err.getvalue().strip().splitlines()[-1]
    return None


def _override_error(overrides: list[str]) -> str | None:
    checked = [o for o in overrides if not o.split("=", 1)[0].isupper() and "$" not in o]
    try:
        config_lib.apply_overrides(config_lib.resolve(config_lib.default()), checked)
    except UserError as e:
        return str(e)
    return None


def check_command(command: str) -> str | None:
    """Why `command` does not parse, or None."""
    words = _words(command)
    name = COMMAND.match(" ".join(words[:3])).group(1)
    try:
        rest, overrides = cli.split_overrides(words[3:])
    except UserError as e:
        return str(e)
    return _parse_error(_parser(name), rest) or _override_error(overrides)


def _options(parser: argparse.ArgumentParser) -> tuple[set[str], dict[str, argparse.ArgumentParser]]:
    options, subparsers = set(), {}
    for action in parser._actions:
        options.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            subparsers.update(action.choices)
    return options, subparsers


def check_mention(command: str) -> str | None:
    """Why an inline mention names a program, subcommand or option that does not exist, or None."""
    words = _words(command)
    name = COMMAND.match(" ".join(words[:3])).group(1)
    parser = _parser(name)
    options, subparsers = _options(parser)
    rest = words[3:]
    if subparsers and rest and not rest[0].startswith("-"):
        if rest[0] not in subparsers:
            return f"no subcommand {rest[0]!r} (there are {', '.join(subparsers)})"
        options, _ = _options(subparsers[rest[0]])
    unknown = [w.split("=")[0] for w in rest if w.startswith("--") and not w.startswith("--config.")
               and w.split("=")[0] not in options]
    return f"no option {unknown[0]}" if unknown else None


def _all(kind: int) -> list[tuple[str, str]]:
    return [c for path in _markdown_files() for c in _commands(path)[kind]]


@pytest.mark.parametrize("where, command", _all(0))
def test_each_documented_command_parses(where, command):
    assert check_command(command) is None, f"{where}: {command}\n{check_command(command)}"


@pytest.mark.parametrize("where, command", _all(1))
def test_each_command_named_in_prose_exists(where, command):
    assert check_mention(command) is None, f"{where}: {command}\n{check_mention(command)}"


def test_the_reader_finds_commands_and_the_check_finds_drift():
    block = [
        "D=workdirs/x",
        "for a in pgd ddn; do",
        "  python -m jaxsmooth.attack --config configs/quickstart.py --checkpoint $D/g --attack $a \\",
        "      $([ $a = ddn ] && echo --steps 100) --out $D/g_$a.tsv  # one file per attack",
        "done",
        "launch/local.sh 2 python -m jaxsmooth.train --config configs/X.py --workdir DIR [--config.FIELD=VALUE ...]",
    ]
    commands = _block_commands(block)
    assert len(commands) == 3 and "--attack ddn" in commands[1] and "workdirs/x/g_ddn.tsv" in commands[1]
    assert all(check_command(c) is None for c in commands)
    assert "--mode" in check_command(commands[0].replace("--attack pgd", "--attack pgd --mode search"))
    assert "--no-such-flag" in check_command(commands[2] + " --no-such-flag")
    assert "--workdir" in check_command("python -m jaxsmooth.train --config configs/quickstart.py")
    assert "did you mean train.batch_size" in check_command(
        "python -m jaxsmooth.train --config c.py --workdir w --config.train.batchsize=8")
    assert "nal.gamma" in check_command(
        "python -m jaxsmooth.train --config c.py --workdir w --config.objective.gamma=1")
    assert _block_commands(["thin CLIs (python -m jaxsmooth.X)"]) == []  # a placeholder, not a command
    assert check_mention("python -m jaxsmooth.bench train --model") is None
    assert check_mention("python -m jaxsmooth.bench nal") is not None  # the reports moved to jaxsmooth.report
    assert check_mention("python -m jaxsmooth.report nal --suite digits") is None
    # spans naming a program without `python -m jaxsmooth.`, in prose and in a code block's comments
    page = "see `certify --nope`\n```bash\nD=w  # the models of `bench deterministic --suite digits`\n```\n"
    _, mentions = _commands_of_text(page)
    assert [check_mention(c) is not None for _, c in mentions] == [True, True], mentions
