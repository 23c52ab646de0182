"""Every command shown in README.md (and docker/README.md, pipelines/README.md) is checked here.

Commands are the lines of ```bash blocks (continuations joined) and inline code spans that
start with a known program. Each is matched to a checker; a command no checker knows fails the
test, so a new command in the README needs a check. Checks: ``wsi-mil`` subcommands exist and
accept every option shown (their ``--help``), study configs named validate with the ``--set``
overrides shown, ``make`` targets exist, ``docker`` commands name files, volumes and configs
that exist, the cluster recipes run (``--dry-run``). The demo itself is run by
``tests/test_pipeline_demo.py``.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from wsi_mil.cli import main

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "README.md", ROOT / "docker" / "README.md", ROOT / "pipelines" / "README.md"]
PROGRAMS = ("wsi-mil", "make", "docker", "python", "sbatch", "dask")


def _bash_blocks(text: str) -> list[str]:
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        block = re.sub(r"\\\n\s*", " ", block)
        out += [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return out


def _inline(text: str) -> list[str]:
    spans = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text)
    return [s.strip() for s in spans if s.split(" ")[0] in PROGRAMS and " " in s.strip()]


def readme_commands(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return list(dict.fromkeys(_bash_blocks(text) + _inline(text)))


def all_commands() -> list[tuple[str, str]]:
    return [(p.relative_to(ROOT).as_posix(), c) for p in READMES for c in readme_commands(p)]


def test_readme_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert lines[:4] == ["```bash", "make demo", "make test", "```"]


@pytest.mark.parametrize("path", READMES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_point_at_files(path: Path) -> None:
    for target in re.findall(r"\]\(([^)#]+)\)", path.read_text(encoding="utf-8")):
        if not target.startswith(("http://", "https://")):
            assert (path.parent / target).exists(), f"{path.name}: link to missing {target}"


def test_makefile_targets() -> None:
    make = (ROOT / "Makefile").read_text()
    demo = re.search(r"^demo:.*\n((?:\t.*\n)+)", make, re.M)
    test = re.search(r"^test:.*\n((?:\t.*\n)+)", make, re.M)
    assert demo and "wsi-mil demo -o" in demo.group(1)
    assert test and "pytest" in test.group(1)


def test_commands_were_found() -> None:
    cmds = [c for _, c in all_commands()]
    assert sum(c.startswith("wsi-mil ") for c in cmds) >= 10
    assert any(c.startswith("docker run") for c in cmds) and any(c.startswith("python pipelines/") for c in cmds)


# -- checkers -------------------------------------------------------------------------------------
_HELP: dict[str, str] = {}


def _help(sub: str, capsys: pytest.CaptureFixture) -> str:
    if sub not in _HELP:
        import os

        capsys.readouterr()
        os.environ["COLUMNS"] = "300"  # rich wraps and truncates option names in narrow terminals
        try:
            code = main([sub, "--help"])
        finally:
            os.environ.pop("COLUMNS", None)
        out = capsys.readouterr().out
        assert code == 0, f"wsi-mil {sub} --help failed"
        _HELP[sub] = re.sub(r"\x1b\[[0-9;]*m", "", out)
    return _HELP[sub]


def _placeholder(word: str) -> bool:
    return bool(re.fullmatch(r"[A-Z_.]+(/[A-Z_]+)*(\.\.\.)?|SLIDE_OR_DIR\.\.\.|STUDY\.yaml", word))


def check_wsi_mil(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    sub = argv[1]
    text = _help(sub, capsys)
    for word in argv[2:]:
        if word.startswith("--"):
            opt = word.split("=")[0]
            assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text), f"wsi-mil {sub}: no option {opt}"
    if sub == "run":
        _check_run(argv[2:])


def _check_run(args: list[str]) -> None:
    """`wsi-mil run CONFIG [--set ...]`: the config validates with the overrides shown."""
    from wsi_mil.study import load_study

    if not args:
        return
    config = args[0]
    if _placeholder(config) or not config.endswith(".yaml"):
        return
    path = ROOT / config.replace("/opt/wsi_mil/", "")
    assert path.is_file(), f"{config}: no such config in the repository"
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    load_study(path, sets)


def check_make(argv: list[str]) -> None:
    make = (ROOT / "Makefile").read_text()
    for target in argv[1:]:
        assert re.search(rf"^{re.escape(target)}:", make, re.M), f"make {target}: no such target"


def _docker_volumes() -> set[str]:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    m = re.search(r"^VOLUME (\[.*\])", text, re.M)
    import json

    return set(json.loads(m.group(1)))


def check_docker(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    if argv[1] == "build":
        assert argv[argv.index("-f") + 1] == "docker/Dockerfile" and argv[-1] == "."
        return
    if argv[1] in ("save", "load"):
        return
    assert argv[1] == "run", argv
    mounts = [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]
    volumes = _docker_volumes()
    for m in mounts:
        inside = m.split(":")[1]
        assert inside in volumes or inside == "/configs", f"docker run -v {m}: {inside} is not a volume of the image"
    image = next(i for i, a in enumerate(argv) if a.startswith("wsi-mil:"))
    assert "ENTRYPOINT [\"wsi-mil\"]" in text
    check_wsi_mil(["wsi-mil", *argv[image + 1:]], capsys)


def check_python(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    """`python pipelines/X.py ... --dry-run` runs (in this process: same code, no interpreter start-up);
    other invocations and benchmarks: their --help accepts every option shown."""
    import runpy

    script = argv[1]
    assert script.startswith(("pipelines/", "benchmarks/")), f"python {script}: not a repository script"
    path = ROOT / script
    assert path.is_file(), f"{script} is missing"
    args = argv[2:] if "--dry-run" in argv and script.startswith("pipelines/") else ["--help"]
    sys.path.insert(0, str(path.parent))
    old_argv = sys.argv
    sys.argv = [str(path), *args]
    capsys.readouterr()
    try:
        runpy.run_path(str(path), run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = old_argv
        sys.path.remove(str(path.parent))
    out = capsys.readouterr().out
    assert code == 0, f"python {script} {' '.join(args)} exited {code}"
    if args == ["--help"]:
        for word in argv[2:]:
            if word.startswith("--"):
                assert word.split("=")[0] in out, f"{script}: no option {word}"


def check_sbatch(argv: list[str]) -> None:
    script = ROOT / argv[1]
    assert script.is_file() and subprocess.run(["bash", "-n", str(script)]).returncode == 0


_DASK_HELP: dict[str, str] = {}


def check_dask(argv: list[str]) -> None:
    """`dask scheduler|worker ...`: the options shown exist (their click command's --help, in process)."""
    if argv[1] not in _DASK_HELP:
        from click.testing import CliRunner

        module = {"scheduler": "distributed.cli.dask_scheduler", "worker": "distributed.cli.dask_worker"}[argv[1]]
        import importlib

        res = CliRunner().invoke(importlib.import_module(module).main, ["--help"])
        assert res.exit_code == 0, res.output
        _DASK_HELP[argv[1]] = res.output
    for word in argv[2:]:
        if word.startswith("--"):
            assert word in _DASK_HELP[argv[1]], f"dask {argv[1]}: no option {word}"


@pytest.mark.parametrize("where,command", all_commands(), ids=[f"{w}:{c[:60]}" for w, c in all_commands()])
def test_command(where: str, command: str, capsys: pytest.CaptureFixture) -> None:
    argv = shlex.split(command.rstrip("&").strip())
    prog = argv[0]
    if prog == "wsi-mil":
        if len(argv) > 1 and not argv[1].startswith("-") and not argv[1].isupper():
            check_wsi_mil(argv, capsys)
        else:
            assert main(["--help"]) == 0
    elif prog == "make":
        check_make(argv)
    elif prog == "docker":
        check_docker(argv, capsys)
    elif prog == "python":
        check_python(argv, capsys)
    elif prog == "sbatch":
        check_sbatch(argv)
    elif prog == "dask":
        check_dask(argv)
    else:  # pragma: no cover - a new kind of command needs a checker
        pytest.fail(f"{where}: no check for command: {command}")
