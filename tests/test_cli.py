"""`ctrt`: help works without torch; user errors are one line and exit code 2."""

import subprocess
import sys


def ctrt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compressive_rt.cli.main", *args],
                          capture_output=True, text=True, timeout=120)


def test_help_lists_the_subcommands():
    result = ctrt("--help")
    assert result.returncode == 0
    assert all(name in result.stdout for name in ("train", "eval", "demo"))


def test_train_help_describes_its_options():
    result = ctrt("train", "--help")
    assert result.returncode == 0
    assert "--minutes" in result.stdout and "memory restarts empty" in result.stdout


def test_building_the_cli_does_not_import_torch():
    code = ("import sys; from compressive_rt.cli.main import build_parser; build_parser(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_bad_checkpoint_path_is_exit_2_and_one_error_line(tmp_path):
    result = ctrt("eval", str(tmp_path / "no_such_checkpoint"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: checkpoint directory")
    assert "Traceback" not in result.stderr


def test_bad_config_json_is_exit_2_and_one_error_line(tmp_path):
    result = ctrt("train", "--config", '{"n_heads": 5}', "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: d_model (512) must be divisible by n_heads (5)")
    assert "Traceback" not in result.stderr


def test_version_names_the_package_the_contract_the_snapshots_and_sampling():
    from importlib.metadata import version

    result = ctrt("--version")
    assert result.returncode == 0
    assert result.stdout == (f"ctrt {version('compressive-rt')} (engine contract v3, snapshot "
                             f"format 3, sampling version 2)\n")
