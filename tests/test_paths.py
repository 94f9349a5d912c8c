"""User-given file names stay inside their folder; model folders follow the operator's symlinks."""

import os

import pytest

from nodegraph.paths import UnsafePath, confine, file_fingerprint, list_files, path_under


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


# --- model folders: the operator's symlinks are followed, names stay checked -----------------------------------------


def test_path_under_keeps_the_name_inside_but_follows_the_operators_links(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "model.safetensors").write_bytes(b"weights")
    os.symlink(outside, root / "shared")
    assert path_under(root, "shared/model.safetensors").read_bytes() == b"weights"


@pytest.mark.parametrize("name", ["../a.safetensors", "sub/../../a.safetensors", "/etc/passwd", "a\0.safetensors",
                                  "..\\a.safetensors", "C:/a.safetensors", "", ".", "sub/.."])
def test_path_under_refuses_names_that_leave_the_folder_or_name_none(tmp_path, name):
    with pytest.raises(UnsafePath):
        path_under(tmp_path, name)


def test_list_files_following_links_lists_linked_files_and_folders_once_each(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "own").mkdir(parents=True)
    (outside / "deep").mkdir(parents=True)
    for path in (root / "own" / "a.safetensors", outside / "b.safetensors", outside / "deep" / "c.safetensors"):
        path.write_bytes(b"")
    os.symlink(outside / "b.safetensors", root / "b.safetensors")
    os.symlink(outside, root / "linked")
    os.symlink(root, root / "own" / "back")  # a loop: not entered again
    os.symlink(tmp_path / "gone.safetensors", root / "broken.safetensors")
    assert list_files(root, (".safetensors",), follow_links=True) == [
        "b.safetensors", "linked/b.safetensors", "linked/deep/c.safetensors", "own/a.safetensors"]
    assert list_files(root, (".safetensors",)) == ["own/a.safetensors"]  # the input folder's rule


def test_a_fingerprint_changes_when_a_link_is_pointed_at_another_file(tmp_path):
    first, second, link = tmp_path / "first", tmp_path / "second", tmp_path / "link"
    first.write_bytes(b"same")
    second.write_bytes(b"same")
    os.utime(second, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns))
    os.symlink(first, link)
    before = file_fingerprint(link)
    link.unlink()
    os.symlink(second, link)
    assert file_fingerprint(link) != before
