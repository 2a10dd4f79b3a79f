import pytest

from co2sam.app.paths import UnsafePathError, ensure_inside, inside, short_path


def test_inside_accepts_plain_names_below_the_root(tmp_path):
    (tmp_path / "a").mkdir()
    assert inside(tmp_path, "a", "b.png") == (tmp_path / "a" / "b.png").resolve()
    assert inside(tmp_path, "a/b.png") == (tmp_path / "a" / "b.png").resolve()


@pytest.mark.parametrize(
    "name", ["../secret", "a/../../secret", "/etc/passwd", "", "a\x00b", "..", "a/.."]
)
def test_inside_refuses_traversal_absolute_and_odd_names(tmp_path, name):
    with pytest.raises(UnsafePathError, match="refused"):
        inside(tmp_path, name)


def test_inside_refuses_a_symbolic_link_that_leads_out(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (elsewhere / "secret.txt").write_text("no")
    (root / "link").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError, match="leads outside"):
        inside(root, "link", "secret.txt")


def test_ensure_inside_checks_any_of_the_roots(tmp_path):
    data, labels = tmp_path / "data", tmp_path / "labels"
    assert ensure_inside(data / "x.jpg", [labels, data]) == (data / "x.jpg").resolve()
    with pytest.raises(UnsafePathError, match="not inside"):
        ensure_inside(tmp_path / "data" / ".." / "other.jpg", [data, labels])


def test_short_path_keeps_the_last_parts():
    assert short_path("/home/me/runs/voc/best") == "…/runs/voc/best"
    assert short_path("/home/me/runs/voc/best", 1) == "…/best"
    assert short_path("runs/best") == "runs/best"
