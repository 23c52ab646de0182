"""The command line's contract: user errors exit 2 with one message, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wsi_mil.cli import COMMAND_MODULES, main


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["tile", "x.svs", "-o", "j", "--target-mpp", "abc"]) == 2
    err = capsys.readouterr().err
    assert "Invalid value for '--target-mpp'" in err and "Traceback" not in err
    assert main(["no-such-command"]) == 2


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture) -> None:
    assert set(COMMAND_MODULES) >= {"tile", "synth", "extract", "pretrain", "train", "predict", "heatmap"}
    for module in COMMAND_MODULES:
        name = module.replace("_", "-")  # the command of module import_features is import-features
        assert main([name, "--help"]) == 0, name
        assert "Usage" in capsys.readouterr().out


def test_console_script_and_module_entry_points(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    out = subprocess.run([str(bin_dir / "wsi-mil"), "tile", str(tmp_path / "none.svs"), "-o", str(tmp_path / "j"),
                          "--workers", "0"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().startswith("error:") and "none.svs" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    out = subprocess.run([sys.executable, "-m", "wsi_mil", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "tile" in out.stdout
