"""A dataset's `num_classes` is checked where it is typed whenever its source knows the count without the data
(torchvision's datasets, scikit-learn's digits): a wrong one is refused by the registry with the file, the field and
the accepted count, before Ray starts; image folders keep their driver preflight (the count is in the files)."""

import pytest

from harness.cli import main
from harness.data.sources import source_kinds
from harness.errors import HarnessError
from harness.registry import load_registry

WRONG = {  # name -> (the entry's TOML body, with num_classes = 12, the count its source implies)
    "cifar10-wrong": ('source = "torchvision"\noptions = { class = "CIFAR10", train = [{ train = true }], '
                      'test = { train = false } }', 10),
    "digits-wrong": ('source = "sklearn_digits"\noptions = { test_fraction = 0.25 }', 10),
    "aircraft-family": ('source = "torchvision"\noptions = { class = "FGVCAircraft", kwargs = { annotation_level = '
                        '"family" }, train = [{ split = "trainval" }], test = { split = "test" } }', 70),
    "pets-binary": ('source = "torchvision"\noptions = { class = "OxfordIIITPet", train = [{ split = "trainval", '
                    'target_types = "binary-category" }], test = { split = "test", target_types = '
                    '"binary-category" } }', 2),
}


def _user_dataset(tmp_path, monkeypatch, name: str, body: str, num_classes: int = 12):
    (tmp_path / "user").mkdir(exist_ok=True)
    path = tmp_path / "user" / "datasets.toml"
    path.write_text(f"[{name}]\n{body}\nnum_classes = {num_classes}\n")
    monkeypatch.setenv("HARNESS_USER_REGISTRY", str(tmp_path / "user"))
    return path


@pytest.mark.parametrize("name", sorted(WRONG))
def test_a_wrong_num_classes_is_refused_by_the_registry(tmp_path, monkeypatch, name):
    body, count = WRONG[name]
    path = _user_dataset(tmp_path, monkeypatch, name, body)
    with pytest.raises(HarnessError) as info:
        load_registry()
    message = str(info.value)
    assert str(path) in message and f"'{name}.num_classes' is 12" in message and f"accepted: {count}" in message


@pytest.mark.parametrize("name", sorted(WRONG))
def test_the_count_the_source_implies_is_accepted(tmp_path, monkeypatch, name):
    body, count = WRONG[name]
    _user_dataset(tmp_path, monkeypatch, name, body, count)
    assert load_registry().dataset(name).num_classes == count


def test_a_wrong_num_classes_stops_a_sweep_before_ray(tmp_path, monkeypatch, capsys):
    import harness.run.sweep as sweep

    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: pytest.fail("Ray was started"))
    _user_dataset(tmp_path, monkeypatch, "digits-wrong", WRONG["digits-wrong"][0])
    code = main(["sweep", "--grid", "demo", "--backbones", "demo-mae-tiny", "--datasets", "digits-wrong",
                 "--results-dir", str(tmp_path / "results"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "'digits-wrong.num_classes' is 12" in err and "Traceback" not in err


def test_every_registered_torchvision_and_digits_dataset_has_a_known_count():
    """So the check covers the shipped entries (a class missing from the table would skip it silently)."""
    for entry in load_registry().datasets.values():
        known = source_kinds()[entry.source].num_classes
        if entry.source in ("torchvision", "sklearn_digits"):
            assert known is not None and known(entry) is not None, entry.name
            assert known(entry)[0] == entry.num_classes


def test_the_torch_free_counts_agree_with_torchvisions_class_lists():
    """Where torchvision lists a dataset's classes on the class itself, the declared count is that list's length."""
    import torchvision.datasets

    from harness.data.sources.torchvision import CLASS_COUNTS

    listed = {n: len(c.classes) for n in CLASS_COUNTS if isinstance((c := getattr(torchvision.datasets, n)).__dict__
                                                                     .get("classes"), list)}
    assert listed and {n: CLASS_COUNTS[n] for n in listed} == listed
    assert all(isinstance(getattr(torchvision.datasets, n, None), type) for n in CLASS_COUNTS)


def test_image_folders_keep_the_driver_preflight(tmp_path, monkeypatch):
    from harness.data.sources import check_source

    assert source_kinds()["imagefolder"].num_classes is None
    (tmp_path / "data" / "mine" / "train" / "a").mkdir(parents=True)
    (tmp_path / "data" / "mine" / "val" / "a").mkdir(parents=True)
    _user_dataset(tmp_path, monkeypatch, "mine", 'source = "imagefolder"\noptions = { folder = "mine" }', 3)
    with pytest.raises(HarnessError, match="has 1 class folders, but the entry says num_classes = 3"):
        check_source(load_registry().dataset("mine"), download=False, root=tmp_path / "data")


@pytest.mark.parametrize("labels, num_classes", [([0, 1, 2, 3], 6), ([0, 1, 5], 3)])
def test_labels_that_do_not_fill_num_classes_are_refused_where_the_data_is_read(labels, num_classes):
    """A source without a count of its own (a user's torchvision class): its labels must be exactly
    0..num_classes-1, or every head gets outputs no image has (too many) or an image no output (too few)."""
    import dataclasses

    import numpy as np

    from harness.data.images import Source
    from harness.data.splits import _check_counts

    entry = dataclasses.replace(load_registry().dataset("digits"), num_classes=num_classes)
    source = Source(None, np.array(labels), None, np.array(labels[:2]), "/data/user-set")
    with pytest.raises(HarnessError, match=rf"labels in 0\.\.{max(labels)}.*'num_classes' is {num_classes}"):
        _check_counts(entry, source)
