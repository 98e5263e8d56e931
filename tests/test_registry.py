"""The registry parses every shipped entry and rejects malformed files with a message naming file, field and
accepted values; the CLI turns those into one paragraph on stderr and exit status 2, without a traceback."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.registry import load_registry, registry_dir

DEMO = registry_dir() / "grids" / "demo.toml"


def _line(key: str) -> str:
    """The demo grid's first line setting `key`, so the edits below follow the grid's current values."""
    return next(line for line in DEMO.read_text().splitlines() if line.startswith(f"{key} ="))


def test_every_shipped_grid_parses():
    reg = load_registry()
    assert {"demo"} <= set(reg.grid_files)
    for name in reg.grid_files:
        grid = reg.grid(name)
        assert grid.num_heads > 0 and grid.backbones and grid.datasets


def test_demo_entries_are_random_init_and_labelled():
    reg = load_registry()
    demo = reg.grid("demo")
    families = {reg.backbone(b).family for b in demo.backbones}
    assert families == {"mae", "simmim", "dino", "ibot", "ijepa"}
    for name in demo.backbones:
        entry = reg.backbone(name)
        assert entry.random_init and entry.label.endswith("(random-init)") and not entry.published


def _grid(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("edit, field, accepted", [
    (("optimizer = \"sgd\"", "optimizer = \"adam\"", 1), "heads.cls.optimizer", "lars, sgd, adamw"),
    (("[heads.mean]", "[heads.meen]", 1), "heads.meen", "did you mean mean"),
    (("epochs = 10", "epochs = -1", 1), "epochs", "a positive integer"),
    ((_line("seeds"), "seeds = [0, 0]", 1), "seeds", "distinct integers"),
    (("protocol = \"cached\"", "protocol = \"offline\"", 1), "protocol", "cached, online"),
    (("datasets = [\"digits\"]", "datasets = [\"digitz\"]", 1), "datasets", "did you mean digits"),
    (("batch_size = 128", "batch_size = 128\nbatch_sise = 64", 1), "batch_sise", "batch_size"),
    ((_line("lr"), "lr = \"fast\"", 1), "heads.cls.lr", "log-spaced"),
])
def test_malformed_grid_names_file_field_and_accepted_values(tmp_path, edit, field, accepted):
    path = _grid(tmp_path, DEMO.read_text().replace(*edit))
    with pytest.raises(HarnessError) as info:
        load_registry().grid(str(path))
    message = str(info.value)
    assert str(path) in message and f"'{field}'" in message and accepted in message


def test_log_spaced_lr_range(tmp_path):
    text = DEMO.read_text().replace(_line("lr"), "lr = { min = 1e-4, max = 1e-1, num = 4 }", 1)
    path = _grid(tmp_path, text)
    assert load_registry().grid(str(path)).heads[0].lrs == (0.0001, 0.001, 0.01, 0.1)


def test_bad_toml_syntax(tmp_path):
    path = _grid(tmp_path, "epochs = = 3\n")
    with pytest.raises(HarnessError, match="not valid TOML"):
        load_registry().grid(str(path))


def test_malformed_backbone_entry(tmp_path, monkeypatch):
    root = tmp_path / "registry"
    shutil.copytree(registry_dir(), root)
    mae = root / "backbones" / "mae.toml"
    mae.write_text(mae.read_text().replace('family = "mae"', 'family = "mea"', 1))
    with pytest.raises(HarnessError) as info:
        load_registry(root)
    message = str(info.value)
    assert str(mae) in message and ".family'" in message and "mae, simmim, dino, ibot, ijepa" in message


def test_cli_unknown_grid_exits_2_with_one_paragraph(capsys):
    assert main(["sweep", "--grid", "nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "unknown grid 'nonexistent'" in err and "demo" in err and "Traceback" not in err


def test_cli_malformed_grid_file_no_traceback(tmp_path):
    path = _grid(tmp_path, DEMO.read_text().replace('optimizer = "sgd"', 'optimizer = "adam"', 1))
    out = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", "--grid", str(path), "--dry-run"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and str(path) in out.stderr.replace("\n", "") and "adamw" in out.stderr




def test_a_duplicate_dataset_names_the_file_that_defines_the_first(tmp_path):
    root = tmp_path / "registry"
    shutil.copytree(registry_dir(), root)
    (root / "datasets").mkdir(exist_ok=True)
    (root / "datasets" / "again.toml").write_text('[digits]\nsource = "sklearn_digits"\nnum_classes = 10\n')
    with pytest.raises(HarnessError, match=r"dataset 'digits' is already registered in .*datasets\.toml; names"):
        load_registry(root)
