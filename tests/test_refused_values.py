"""Every bad value is refused where it is typed, on the driver, before anything runs: one paragraph naming the
file (or flag), the field and what is accepted, exit status 2, no traceback."""

import shutil
import subprocess
import sys

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.registry import load_registry, registry_dir

DEMO = (registry_dir() / "grids" / "demo.toml").read_text()
LRS = DEMO.split("[heads.cls]")[1].split("lr = ")[1].split("\n")[0]


@pytest.mark.parametrize("edit, field, accepted", [
    (("claim_margin", "max_retries = -1\nclaim_margin"), "max_retries", "0 to 100"),
    (("claim_margin", "checkpoint_minutes = -1\nclaim_margin"), "checkpoint_minutes", "minutes >= 0"),
    (("claim_margin", "checkpoint_minutes = nan\nclaim_margin"), "checkpoint_minutes", "minutes >= 0"),
    ((f"lr = {LRS}", "lr = [0.0, 0.1]"), "heads.cls.lr", "positive"),
    ((f"lr = {LRS}", "lr = { min = 0.01, max = 1.0, num = 100000000 }"), "heads.cls.lr.num", "at most 1000"),
    ((f"lr = {LRS}", "lr = [0.1, 0.1, 0.3]"), "heads.cls.lr", "distinct"),
    (("seeds = [0, 1, 2, 3, 4]", "seeds = [0, 100000000000000000000]"), "", ""),  # TOML itself refuses 10^20
    (("seeds = [0, 1, 2, 3, 4]", "seeds = [0, 9000000000000000000]"), "seeds", "0 <= seed < 2**32"),
    (('datasets = ["digits"]', 'datasets = ["digits", "digits"]'), "datasets", "distinct"),
    (('backbones = ["demo-mae-tiny",', 'backbones = ["demo-mae-tiny", "demo-mae-tiny",'), "backbones", "distinct"),
    (("[heads.cls]\n", "[heads.cls]\noptions = { heads = 4 }\n"), "heads.cls.options", "unknown option"),
])
def test_bad_grid_values_are_refused_with_file_field_and_accepted(tmp_path, edit, field, accepted):
    path = tmp_path / "bad.toml"
    assert edit[0] in DEMO
    path.write_text(DEMO.replace(*edit, 1))
    with pytest.raises(HarnessError) as info:
        load_registry().grid(str(path))
    message = str(info.value)
    assert str(path) in message and f"'{field}'" * bool(field) in message and accepted in message


@pytest.mark.parametrize("flag, value, accepted", [
    ("--max-retries", "-1", "0 to 100"),
    ("--cpus-per-trial", "-1", "a number > 0"),
    ("--gpus-per-trial", "-1", "a number >= 0"),
    ("--cpus-per-trial", "nan", "a number > 0"),
    ("--checkpoint-minutes", "-1", "a number >= 0"),
])
def test_bad_flags_are_refused_before_ray(flag, value, accepted):
    out = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", "--grid", "demo", flag, value, "--dry-run"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and accepted in out.stderr and "Traceback" not in out.stderr


def test_duplicate_names_on_the_command_line_are_refused(capsys):
    assert main(["sweep", "--grid", "demo", "--backbones", "demo-mae-tiny,demo-mae-tiny", "--dry-run"]) == 2
    assert "distinct" in capsys.readouterr().err


def test_weights_for_a_random_init_entry_are_refused_on_the_driver(tmp_path, capsys):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    assert main(["sweep", "--grid", "demo", "--weights", f"demo-mae-tiny={weights}", "--dry-run"]) == 2
    assert "random-init" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["grid", "registry", "config"])
def test_files_that_are_not_utf8_are_one_paragraph(tmp_path, monkeypatch, where):
    bad = b'description = "caf\xe9"\n'
    if where == "grid":
        path = tmp_path / "latin1.toml"
        path.write_bytes(bad + DEMO.split("\n", 1)[1].encode())
        with pytest.raises(HarnessError, match=f"{path}.*UTF-8"):
            load_registry().grid(str(path))
    elif where == "registry":
        root = tmp_path / "registry"
        shutil.copytree(registry_dir(), root)
        path = root / "datasets-extra.toml"
        path.write_bytes(b'[extra]\nsource = "sklearn_digits"\nnum_classes = 10\n' + bad)
        with pytest.raises(HarnessError, match=f"{path}.*UTF-8"):
            load_registry(root)
    else:
        from harness.config import setting

        path = tmp_path / "harness.toml"
        path.write_bytes(b"[paths]\n" + bad.replace(b"description", b"results_dir"))
        monkeypatch.setenv("HARNESS_CONFIG", str(path))
        monkeypatch.delenv("HARNESS_RESULTS_DIR", raising=False)
        with pytest.raises(HarnessError, match=f"{path}.*UTF-8"):
            setting("results_dir")


def test_paths_that_is_not_a_table_is_one_paragraph(tmp_path, monkeypatch):
    from harness.config import setting

    path = tmp_path / "harness.toml"
    path.write_text("paths = 3\n")
    monkeypatch.setenv("HARNESS_CONFIG", str(path))
    monkeypatch.delenv("HARNESS_RESULTS_DIR", raising=False)
    with pytest.raises(HarnessError, match=f"{path}.*'paths'.*a table"):
        setting("results_dir")
