"""User-given file names stay inside their folder."""

import os

import pytest

from nodegraph.paths import UnsafePath, confine, list_files


def test_confine_resolves_names_inside_the_folder(tmp_path):
    assert confine(tmp_path, "a.png") == tmp_path.resolve() / "a.png"
    assert confine(tmp_path, "sub/dir/a.png") == tmp_path.resolve() / "sub" / "dir" / "a.png"


@pytest.mark.parametrize("name", ["../a.png", "sub/../../a.png", "/etc/passwd", "a\0.png", "..\\a.png", "C:/a.png",
                                  "", ".", "sub/.."])
def test_confine_refuses_names_that_leave_the_folder_or_name_none(tmp_path, name):
    with pytest.raises(UnsafePath):
        confine(tmp_path, name)


def test_confine_refuses_symlinks_that_lead_outside(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"x")
    os.symlink(outside / "secret.png", root / "link.png")
    os.symlink(outside, root / "linkdir")
    with pytest.raises(UnsafePath):
        confine(root, "link.png")
    with pytest.raises(UnsafePath):
        confine(root, "linkdir/secret.png")


def test_confine_allows_symlinks_within_the_folder(tmp_path):
    (tmp_path / "real.png").write_bytes(b"x")
    os.symlink(tmp_path / "real.png", tmp_path / "alias.png")
    assert confine(tmp_path, "alias.png") == (tmp_path / "real.png").resolve()


def test_list_files_lists_matching_files_but_not_hidden_ones_or_escaping_links(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    outside.mkdir()
    for path in (root / "b.safetensors", root / "sub" / "a.safetensors", root / "c.ckpt",
                 root / ".hidden" / "d.safetensors", outside / "e.safetensors"):
        path.write_bytes(b"")
    os.symlink(outside / "e.safetensors", root / "e.safetensors")
    assert list_files(root, (".safetensors",)) == ["b.safetensors", "sub/a.safetensors"]


def test_list_files_of_a_missing_folder_is_empty(tmp_path):
    assert list_files(tmp_path / "missing", (".png",)) == []
