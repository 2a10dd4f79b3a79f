import pytest

from co2sam.data.exclude import exclude_ids, read_id_list
from co2sam.data.image_io import DatasetError


class Split:
    split = "train"

    def __init__(self, ids):
        self.ids = list(ids)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        return self.ids[index]


def test_read_id_list_skips_comments_blanks_and_repeats(tmp_path):
    path = tmp_path / "flagged.txt"
    path.write_text("# flagged in the Review tab\na\n\n  b  \na\n")
    assert read_id_list(path) == ["a", "b"]


def test_read_id_list_names_a_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="missing.txt"):
        read_id_list(tmp_path / "missing.txt")


def test_exclude_ids_keeps_order_and_reports_unknown_ids():
    subset, exclusion = exclude_ids(Split(["a", "b", "c", "d"]), ["c", "a.jpg", "zz"])
    assert subset.ids == ["b", "d"]
    assert [subset[i] for i in range(len(subset))] == ["b", "d"]
    assert exclusion.excluded == ["a", "c"] and exclusion.unknown == ["zz"]
    assert "left out 2 image(s) of split 'train'; 1 listed id(s)" in exclusion.summary("f", "train")


def test_exclude_nothing_listed_returns_the_split_itself():
    split = Split(["a"])
    assert exclude_ids(split, ["zz"])[0] is split


def test_excluding_every_image_is_an_error():
    with pytest.raises(DatasetError, match="nothing is left"):
        exclude_ids(Split(["a", "b"]), ["a", "b"])
