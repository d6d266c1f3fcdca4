"""Every code block of README.md and docs/*.md runs, or has its commands checked, so that none rots.

A block runs as it is (bash in a fresh folder, python in a fresh namespace there), with `world-out` in that folder
being the tests' 20-person world (what the README's `unstar world --output-dir world-out --people 20` makes). The
line before a fence may mark the block:
- `<!-- not run: REASON -->`: too slow for the suite (a bench, a training run, a GPU). Each command is parsed the
  way its program parses it, without running: every flag must exist and every recipe and repository file it names
  must be there; a python block must compile and its imports must resolve.
- `<!-- needs TOFU -->`: runs with `tofu` being the TOFU folder (`../shared/data/tofu`); skipped without it.
Commands written inline in the text (`unstar ...`, `python benchmarks/...`) have their flags and files checked.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from conftest import SHARED_DATA


ROOT = Path(__file__).resolve().parents[1]
TOFU = SHARED_DATA / "tofu"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 150
LANGUAGES = ("bash", "python", "text")
MARKER = re.compile(r"^<!-- (not run: \S.*|needs TOFU) -->$")
FENCE = re.compile(r"^```(\w*)\s*$")
SETUP_PROGRAMS = ("git", "cd", ".", "source", "export")
"""Shell set-up a newcomer types (clone, enter, activate): nothing of ours to check."""


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, from 1
    language: str
    code: str
    marker: str | None

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def read_blocks(page: Path) -> list[Block]:
    blocks, lines = [], page.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = next((k for k in range(index + 1, len(lines)) if lines[k].strip() == "```"), None)
        assert end is not None, f"{page.name}:{index + 1}: a code block that is never closed"
        before = next((line.strip() for line in reversed(lines[:index]) if line.strip()), "")
        marker = MARKER.match(before)
        blocks.append(Block(page, index + 1, opening.group(1), "\n".join(lines[index + 1:end]),
                            marker.group(1) if marker else None))
        index = end + 1
    return blocks


BLOCKS = [block for page in PAGES for block in read_blocks(page)]


def kind(block: Block) -> str:
    """"run", "tofu" (runs where the TOFU files are) or "check" (not run: parsed and checked)."""
    return {None: "run", "needs TOFU": "tofu"}.get(block.marker, "check")


def blocks_of(language: str, *kinds: str) -> list:
    return [pytest.param(block, id=block.name) for block in BLOCKS
            if block.language == language and kind(block) in kinds]


# ---- the pages ---------------------------------------------------------------------------------------------------


def test_every_block_has_a_language_this_test_knows():
    unknown = [f"{block.name} ```{block.language}" for block in BLOCKS if block.language not in LANGUAGES]
    assert not unknown, f"blocks this test would not run or check: {unknown}"
    assert any(block.marker is None for block in BLOCKS if block.page.name == "README.md")


def test_the_readme_is_a_front_page_that_links_each_doc_once():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert readme.count(f"](docs/{doc.name})") == 1, f"README should link docs/{doc.name} once"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_links_lead_somewhere(page):
    text = page.read_text()
    for target in re.findall(r"\]\((?!https?://)([^)#\s]*)(?:#([\w-]+))?\)", text):
        path, anchor = target
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: link to {path}, which does not exist"
        if anchor:
            assert anchor in anchors(linked), f"{page.name}: link to {path}#{anchor}, no such heading"


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


# ---- blocks that run ---------------------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path, request, monkeypatch):
    """A fresh working folder; `world-out` in it is the tests' world when the block names it."""
    block = request.node.callspec.params["block"]
    if "world-out" in block.code:
        (tmp_path / "world-out").symlink_to(request.getfixturevalue("world_dir"), target_is_directory=True)
    if block.marker == "needs TOFU":
        if not TOFU.is_dir():
            pytest.skip(f"TOFU data not found at {TOFU}")
        (tmp_path / "tofu").symlink_to(TOFU, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("block", blocks_of("bash", "run", "tofu"))
def test_bash_block_runs(block, folder):
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=folder, env=environment,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{block.name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("block", blocks_of("python", "run", "tofu"))
def test_python_block_runs(block, folder, capsys):
    exec(compile(block.code, block.name, "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out.strip(), f"{block.name} printed nothing: it should show what it made"


# ---- blocks that are only checked --------------------------------------------------------------------------------


@pytest.mark.parametrize("block", blocks_of("bash", "check"))
def test_not_run_bash_block_parses(block):
    commands = shell_commands(block.code)
    assert commands, f"{block.name}: no command"
    for argv in commands:
        check_command(argv, block.name)


@pytest.mark.parametrize("block", blocks_of("python", "check"))
def test_not_run_python_block_compiles_and_imports(block):
    tree = ast.parse(block.code, block.name)
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    exec(compile(ast.Module(imports, type_ignores=[]), block.name, "exec"), {})


@pytest.mark.parametrize("block", blocks_of("text", "run"))
def test_text_block_names_files_that_exist(block):
    """A tree of the code (docs/layout.md): every file and folder it names is in the repository."""
    files = re.findall(r"[\w*]+\.py\b", block.code)
    folders = re.findall(r"(?<![\w/])([\w/]+)/(?=\s)", block.code)
    assert files and folders, f"{block.name}: names no file or folder"
    for name in files:
        assert next(ROOT.glob(f"unstar_trl/**/{name}"), None), f"{block.name}: no file {name} under unstar_trl/"
    for name in folders:
        found = (ROOT / name).is_dir() or next((p for p in ROOT.glob(f"unstar_trl/**/{name}") if p.is_dir()), None)
        assert found, f"{block.name}: no folder {name}/"


INLINE = re.compile(r"`((?:unstar|python benchmarks/\w+\.py) [^`]+)`")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_inline_commands_parse(page):
    """`unstar ...` and `python benchmarks/...` in the text: written with `[optional parts]` and `...`, so only
    their flags and files are checked."""
    for command in INLINE.findall(re.sub(r"\s*\n\s*", " ", page.read_text())):
        argv = shlex.split(command)
        where = f"{page.name}: `{command}`"
        if argv[0] == "unstar":
            subcommand = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else None
            known = unstar_flags(subcommand, method_of(argv))
        else:
            assert (ROOT / argv[1]).is_file(), f"{where}: no {argv[1]}"
            known = script_flags(ROOT / argv[1])
        unknown = [flag for flag in FLAG.findall(command) if flag not in known]
        assert not unknown, f"{where}: unknown flags {unknown}"
        for path in re.findall(r"(?:recipes|benchmarks|tests)/[\w./-]+\.(?:yaml|py)", command):
            assert (ROOT / path).is_file(), f"{where}: no {path}"


# ---- parsing commands as their programs do -----------------------------------------------------------------------


def shell_commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block: continuations joined, comments dropped, split at `&&`, `;` and `|`,
    `$(...)` taken as one word."""
    code = re.sub(r"\$\([^)]*\)", "SUBSTITUTED", code.replace("\\\n", " "))
    commands = []
    for line in code.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        current = []
        for token in lexer:
            if token in ("&&", ";", "|", "||"):
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [argv for argv in commands if argv]


def check_command(argv: list[str], where: str) -> None:
    program, args = argv[0], argv[1:]
    where = f"{where}: `{shlex.join(argv)}`"
    if program in SETUP_PROGRAMS or argv[:3] == ["python3", "-m", "venv"]:
        return
    if program == "unstar":
        parse_unstar(args, where)
    elif program == "pip" and args[:1] == ["install"]:
        check_pip_install(args[1:], where)
    elif program in ("python", "python3") and args[:2] == ["-m", "pytest"]:
        check_pytest_flags(args[2:], where)
    elif program in ("python", "python3") and args and args[0].startswith("benchmarks/"):
        parse_script(ROOT / args[0], args[1:], where)
    elif program == "lm_eval":
        parse_lm_eval(args, where)
    elif program == "accelerate" and args[:1] == ["launch"]:
        from accelerate.commands.launch import launch_command_parser

        parsed = parse_with(launch_command_parser(), args[1:], where)
        assert parsed.config_file and (ROOT / parsed.config_file).is_file(), f"{where}: no {parsed.config_file}"
        check_module(parsed.training_script, parsed.training_script_args, where)
    elif program == "torchrun":
        from torch.distributed.run import get_args_parser

        parsed = parse_with(get_args_parser(), args, where)
        check_module(parsed.training_script, parsed.training_script_args, where)
    else:
        pytest.fail(f"{where}: this test does not know how to check {program!r}")


def check_module(module: str, args: list[str], where: str) -> None:
    assert module == "unstar_trl.cli", f"{where}: launches {module}, not unstar_trl.cli"
    parse_unstar(args, where)


def parse_with(parser: argparse.ArgumentParser, args: list[str], where: str):
    """parser.parse_args(args), with argparse's complaint (it exits) as the failure."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: {last_line(errors)}")


def parse_unstar(args: list[str], where: str) -> None:
    import torch

    from unstar_trl.cli import build_parser
    from unstar_trl.commands import unlearn

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parsed, rest = build_parser().parse_known_args(args)
    except SystemExit:
        pytest.fail(f"{where}: {last_line(errors)}")
    if parsed.command == "unlearn":  # every flag a field, the recipe found and read; a GPU recipe as on a CPU
        unlearn.parse(rest if torch.cuda.is_available() else [*rest, "--bf16", "false"])
    else:
        assert not rest, f"{where}: unknown arguments {rest}"


def check_pip_install(args: list[str], where: str) -> None:
    """`-e '.[extras]'`: extras the project has; `name==version`: a dependency of the project."""
    from importlib.metadata import metadata, requires

    extras = set(metadata("unstar-trl").get_all("Provides-Extra") or [])
    dependencies = {re.split(r"[<>=!~\[ ;]", item)[0].lower() for item in requires("unstar-trl")
                    if "extra ==" not in item}
    for item in args:
        if item.startswith((".[", "-e")):
            for extra in ",".join(re.findall(r"\[([\w,]+)\]", item)).split(","):
                assert not extra or extra in extras, f"{where}: the project has no extra {extra!r}"
        elif not item.startswith("-"):
            assert re.split(r"[<>=!~]", item)[0].lower() in dependencies, f"{where}: {item} is not a dependency"


def check_pytest_flags(args: list[str], where: str) -> None:
    text = pytest_help()
    for flag in [item.split("=")[0] for item in args if item.startswith("-")]:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}[\s,=]", text), f"{where}: pytest has no {flag}"


@cache
def pytest_help() -> str:
    return subprocess.run([sys.executable, "-m", "pytest", "--help"], capture_output=True, text=True,
                          cwd=ROOT).stdout


def parse_lm_eval(args: list[str], where: str) -> None:
    from lm_eval._cli import HarnessCLI

    cli = HarnessCLI()
    if args and args[0] not in cli._subparsers.choices:
        args = ["run", *args]  # lm_eval's own shorthand
    parse_with(cli._parser, args, where)


def last_line(stream: io.StringIO) -> str:
    """argparse's complaint: the last line of what it printed."""
    return (stream.getvalue().strip().splitlines() or ["(nothing said)"])[-1]


class _Parsed(Exception):
    pass


def parse_script(script: Path, args: list[str], where: str) -> None:
    """Run the script's `main()` up to its `parse_args` and stop there."""
    assert script.is_file(), f"{where}: no {script.relative_to(ROOT)}"
    module = load_script(script)
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, *_args, **_kwargs):
        original(parser, args)
        raise _Parsed

    errors = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(errors):
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        try:
            module.main()
        except _Parsed:
            return
        except SystemExit:
            pytest.fail(f"{where}: {last_line(errors)}")
    pytest.fail(f"{where}: main() ran without parsing arguments")


@cache
def load_script(script: Path):
    """The script as a module, its folder on sys.path as when Python runs it (for the modules beside it)."""
    import importlib.util

    if str(script.parent) not in sys.path:
        sys.path.append(str(script.parent))
    spec = importlib.util.spec_from_file_location(f"docs_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def script_flags(script: Path) -> frozenset[str]:
    """The flags a benchmark script's parser takes, read from its source."""
    tree = ast.parse(script.read_text())
    return frozenset(arg.value for node in ast.walk(tree) if isinstance(node, ast.Call)
                     and getattr(node.func, "attr", None) == "add_argument"
                     for arg in node.args if isinstance(arg, ast.Constant) and str(arg.value).startswith("-"))


def method_of(argv: list[str]) -> str | None:
    from unstar_trl.recipes import find_recipe, read_recipe

    if "--method" in argv:
        return argv[argv.index("--method") + 1]
    if "--config" in argv:
        return read_recipe(find_recipe(argv[argv.index("--config") + 1])).get("method")
    return None


@cache
def unstar_flags(subcommand: str | None, method: str | None) -> frozenset[str]:
    """Every flag of `unstar [subcommand]`; for unlearn, every field of its arguments, the method's config and
    ModelConfig."""
    import dataclasses

    from trl import ModelConfig

    from unstar_trl.cli import build_parser
    from unstar_trl.commands.unlearn import DEFAULT_METHOD, UnlearnArguments, _config_class

    parser = build_parser()
    if subcommand == "unlearn":
        classes = (UnlearnArguments, _config_class(method or DEFAULT_METHOD), ModelConfig)
        return frozenset({"--config", "--method", "--help-all"} |
                         {f"--{field.name}" for kind in classes for field in dataclasses.fields(kind)})
    if subcommand is not None:
        parser = next(action for action in parser._actions
                      if isinstance(action, argparse._SubParsersAction)).choices[subcommand]
    return frozenset(flag for action in parser._actions for flag in action.option_strings)
