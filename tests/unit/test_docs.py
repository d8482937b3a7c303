"""The documentation's examples work: every fenced TOML block of README.md and docs/*.md
parses, and validates as what it is (a job or a fragment of one against the job schema,
so a key that does not exist fails; a dataset manifest against the manifest reader);
every mpisgd command line in a fenced shell block names an existing subcommand and
existing flags, and its ``--set`` overrides load with its job; every ``--set key=``
anywhere in the docs names a key of the schema."""

from __future__ import annotations

import ast
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from mpisgd import cli
from mpisgd.config import JobConfig, load_config
from mpisgd.data.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "slurm" / "README.md"]
SHELLS = {"sh", "bash", "shell", "console"}
# Words that stand for a value in a usage line, e.g. ``[--set key=value ...]``.
PLACEHOLDER_KEYS = {"key", "KEY", "section.key"}


@dataclass
class Block:
    path: Path
    line: int        # of the opening fence
    lang: str
    text: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} ({self.lang})"


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced code block of a Markdown file, with its info string's language."""
    blocks, current, lines = [], None, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fence = re.match(r"\s*```\s*([\w+-]*)", line)
        if fence and current is None:
            current, lines = Block(path, number, fence.group(1).lower(), ""), []
        elif fence:
            current.text = "\n".join(lines) + "\n"
            blocks.append(current)
            current = None
        elif current is not None:
            lines.append(line)
    assert current is None, f"{path}:{current.line}: a fence is never closed"
    return blocks


ALL = [b for p in DOCS for b in fenced_blocks(p)]
TOML = [b for b in ALL if b.lang == "toml"]
SHELL = [b for b in ALL if b.lang in SHELLS]


def test_the_docs_hold_examples_to_check():
    """Guards the parser above: a change of fence style must not empty the lists."""
    assert len(TOML) >= 3 and len(SHELL) >= 10
    assert any(b.path.name == "README.md" and b.path.parent == ROOT for b in TOML)


@pytest.mark.parametrize("block", TOML, ids=str)
def test_toml_block_parses_and_validates(block, tmp_path):
    try:
        doc = tomllib.loads(block.text)
    except tomllib.TOMLDecodeError as exc:
        pytest.fail(f"{block} is not valid TOML: {exc}\n{block.text}")
    if "shard" in doc:   # a dataset manifest (docs/data-format.md)
        path = tmp_path / "manifest.toml"
        path.write_text(block.text)
        assert [e["path"] for e in read_manifest(str(path))]
        return
    path = tmp_path / "job.toml"
    path.write_text(block.text)
    load_config(str(path))   # a ConfigError names the key


def test_an_unknown_key_in_a_block_fails(tmp_path):
    """The check above is not vacuous: a misspelt key in a README-style block fails."""
    path = tmp_path / "job.toml"
    path.write_text('[optimizer]\nname = "sgd"\nrate = 0.5\n')
    with pytest.raises(ValueError, match="optimizer.rate"):
        load_config(str(path))


# ---------------------------------------------------------------------------------
# Command lines


def _tree(module: str) -> ast.Module:
    return ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())


def _declared(node: ast.AST) -> set[str]:
    """The option strings of every ``add_argument`` call under ``node``."""
    return {a.value for call in ast.walk(node) if isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute) and call.func.attr == "add_argument"
            for a in call.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")}


def _flags_of(module: str) -> set[str]:
    """Every option a command's module declares, itself or through a helper function it
    imports from another module of mpisgd.commands (shared arguments)."""
    tree = _tree(module)
    flags = _declared(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mpisgd.commands"):
            names = {a.name for a in node.names}
            flags |= {f for fn in ast.walk(_tree(node.module))
                      if isinstance(fn, ast.FunctionDef) and fn.name in names
                      for f in _declared(fn)}
    return flags


# name -> the module that parses its arguments (each table entry starts with it)
COMMANDS = {name: entry[0] for name, entry in {**cli.COLLECTIVE, **cli.LOCAL}.items()}
TOP_LEVEL = {"-h", "--help", "--version"}   # options of ``mpisgd`` itself, alone


@dataclass
class Invocation:
    block: Block
    words: list[str]   # the arguments after ``mpisgd``

    def __str__(self) -> str:
        return f"{self.block}: mpisgd {' '.join(self.words)}"


def invocations(block: Block) -> list[Invocation]:
    """The mpisgd command lines of a shell block: ``python -m mpisgd ...`` (after any
    launcher) and the installed ``mpisgd ...``; comments and continuations handled."""
    found = []
    text = block.text.replace("\\\n", " ")
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        for segment in _segments(words):
            start = None
            for i, word in enumerate(segment):
                if word == "mpisgd" and (i == 0 or segment[i - 1] == "-m"):
                    start = i + 1
                    break
            if start is not None:
                found.append(Invocation(block, segment[start:]))
    return found


def _segments(words: list[str]) -> list[list[str]]:
    """Split a command line at ``&&``, ``||``, ``;`` and ``|``."""
    out, current = [], []
    for word in words:
        if word in ("&&", "||", ";", "|"):
            out.append(current)
            current = []
        else:
            current.append(word)
    return [*out, current]


INVOCATIONS = [inv for b in SHELL for inv in invocations(b)]


def test_the_docs_show_many_command_lines():
    assert len(INVOCATIONS) >= 25
    assert {"train", "solve", "cv", "eval", "predict", "data", "info", "plot", "compare"} <= {
        _command(inv)[0] for inv in INVOCATIONS}


def _command(inv: Invocation) -> tuple[str, list[str]]:
    """(subcommand, its arguments); no subcommand: train, as the entry does."""
    words = inv.words
    if words and words[0] in COMMANDS:
        return words[0], words[1:]
    return "train", words


@pytest.mark.parametrize("inv", INVOCATIONS, ids=str)
def test_command_line_uses_existing_subcommand_flags_and_keys(inv):
    if inv.words and (inv.words[0] in TOP_LEVEL or inv.words[0] == "help"):
        rest = inv.words[1:]
        assert rest == [] or (inv.words[0] == "help" and rest[0] in COMMANDS
                              and len(rest) == 1), f"{inv}: {inv.words[0]} takes no such words"
        return
    command, words = _command(inv)
    if command == "train" and words and not words[0].startswith("-"):
        assert words[0].endswith(".toml"), (
            f"{inv}: '{words[0]}' is neither a subcommand ({', '.join(COMMANDS)}) nor a job file")
    flags = _flags_of(COMMANDS[command])
    used = {w.strip("[]").split("=")[0] for w in words if w.strip("[").startswith("--")}
    assert used <= flags, f"{inv}: unknown flag(s) {sorted(used - flags)} of '{command}'"
    overrides = [v for flag, v in zip(words, words[1:]) if flag.strip("[") == "--set"
                 and v.split("=")[0] not in PLACEHOLDER_KEYS]
    if overrides:
        job = words[0] if words and (ROOT / words[0]).is_file() else None
        load_config(str(ROOT / job) if job else None, overrides)   # keys and values


def _schema_keys(obj=None, prefix: str = "") -> set[str]:
    tree = JobConfig().to_dict() if obj is None else obj
    keys = set()
    for name, value in tree.items():
        keys.add(prefix + name)
        if isinstance(value, dict):
            keys |= _schema_keys(value, f"{prefix}{name}.")
    return keys


def test_every_set_key_in_the_docs_exists():
    """``--set KEY=`` in prose, usage lines and sweep files as well as in commands."""
    keys = _schema_keys()
    wrong = []
    for path in DOCS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for key in re.findall(r"--set[= ]+[\"']?([A-Za-z_][\w.]*)=", line):
                if key not in keys and key not in PLACEHOLDER_KEYS:
                    wrong.append(f"{path.relative_to(ROOT)}:{number}: --set {key}=")
    assert not wrong, "keys that are not in mpisgd/config/schema.py:\n" + "\n".join(wrong)
