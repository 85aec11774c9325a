"""mvcustom_core.files: user-named paths stay inside their folder; atomic writes that may refuse to replace."""

from __future__ import annotations

import os

import pytest

from mvcustom_core.files import atomic_write, atomic_write_bytes, is_inside, plain_file_name, resolve_inside


@pytest.fixture
def tree(tmp_path):
    """``root/`` with a file, a subfolder, links in and out; ``secret.txt`` beside the root."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "sub" / "b.txt").write_text("b")
    (tmp_path / "secret.txt").write_text("s")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "c.txt").write_text("c")
    (root / "link_out.txt").symlink_to(tmp_path / "secret.txt")
    (root / "link_in.txt").symlink_to(root / "a.txt")
    (root / "dir_out").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "model").mkdir()
    (root / "model" / "cameras.txt").write_text("x")
    (root / "leaky").mkdir()
    (root / "leaky" / "cameras.txt").symlink_to(tmp_path / "secret.txt")
    return root


def test_relative_names_inside_resolve(tree):
    assert resolve_inside("a.txt", [tree]) == tree / "a.txt"
    assert resolve_inside("sub/b.txt", [tree]) == tree / "sub" / "b.txt"
    assert resolve_inside("sub\\b.txt", [tree]) == tree / "sub" / "b.txt"  # Windows separators
    assert resolve_inside("./sub//b.txt", [tree]) == tree / "sub" / "b.txt"
    assert resolve_inside("link_in.txt", [tree]) == tree / "link_in.txt"  # a link that stays inside
    assert resolve_inside("model", [tree], kind="dir") == tree / "model"
    assert resolve_inside("model", [tree], kind="any") == tree / "model"


@pytest.mark.parametrize("name", [
    "{tmp}/secret.txt",           # absolute, and the file exists
    "../secret.txt",              # climbs out, and the file exists
    "sub/../../secret.txt",
    "..\\secret.txt",
    "a.txt\0.png",                # NUL
    "a\n.txt",                    # control character
    "C:\\Windows\\win.ini",        # Windows drive
    "\\\\server\\share\\x.txt",     # UNC
    "link_out.txt",               # a link inside that leads outside
    "dir_out/c.txt",              # through a linked folder that leads outside
    "missing.txt",
    "sub",                        # a folder where a file is wanted
    "",
    "   ",
])
def test_every_other_name_resolves_to_nothing(tree, name):
    name = name.replace("{tmp}", str(tree.parent))
    assert resolve_inside(name, [tree]) is None
    if name != "sub":
        assert resolve_inside(name, [tree], kind="any") is None


def test_folder_with_a_member_linking_out_is_refused(tree):
    assert resolve_inside("leaky", [tree], kind="dir") is None


def test_first_root_holding_the_name_wins_and_a_linked_root_is_its_target(tree, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("other")
    (other / "only.txt").write_text("o")
    assert resolve_inside("a.txt", [tree, other]) == tree / "a.txt"
    assert resolve_inside("only.txt", [tree, other]) == other / "only.txt"
    linked = tmp_path / "linked_root"
    linked.symlink_to(other, target_is_directory=True)  # e.g. models/checkpoints -> /mnt/big/checkpoints
    assert resolve_inside("only.txt", [linked]) == linked / "only.txt"
    assert is_inside(linked / "only.txt", linked)


@pytest.mark.parametrize("name, ok", [
    ("my_subject", True), ("Teddy bear 2", True), ("über-toy", True),
    ("../x", False), ("a/b", False), ("a\\b", False), ("x\0", False), (".hidden", False), ("trail.", False),
    ("trail ", False), ("", False), ("..", False), ("/abs", False), ("C:x", False), ("x" * 201, False), (3, False),
    # Windows (where most ComfyUI installs run): 'a:b' writes an NTFS stream of 'a', '?' and '*' are wildcards,
    # and device names are devices in every folder, whatever the suffix ('CON.safetensors' too).
    ("subject:v2", False), ("what?", False), ("a*b", False), ('say "hi"', False), ("a<b>", False), ("a|b", False),
    ("CON", False), ("nul", False), ("Com1", False), ("lpt9", False), ("aux.v2", False), ("Nul .x", False), ("console", True),
    ("com10", True), ("my_nul", True),
])
def test_plain_file_name(name, ok):
    assert (plain_file_name(name) == name) is ok
    if not ok:
        assert plain_file_name(name) is None


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_write_may_refuse_to_replace(tmp_path):
    target = tmp_path / "precious.bin"
    target.write_bytes(b"user data")
    with pytest.raises(FileExistsError):
        atomic_write(target, lambda tmp: tmp.write_bytes(b"new"), replace=False)
    asked = []
    with pytest.raises(FileExistsError):
        atomic_write(target, lambda tmp: tmp.write_bytes(b"new"), replace=lambda p: asked.append(p) or False)
    assert asked == [target] and target.read_bytes() == b"user data" and _leftovers(tmp_path) == []
    atomic_write(target, lambda tmp: tmp.write_bytes(b"ours"), replace=lambda p: True)
    assert target.read_bytes() == b"ours"
    fresh = tmp_path / "fresh.bin"
    atomic_write(fresh, lambda tmp: tmp.write_bytes(b"1"), replace=False)  # nothing there: written
    assert fresh.read_bytes() == b"1" and _leftovers(tmp_path) == []


def test_refused_replace_never_follows_a_link(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    link = tmp_path / "link.txt"
    link.symlink_to(outside)
    with pytest.raises(FileExistsError):
        atomic_write_bytes(link, b"x", replace=False)
    assert outside.read_text() == "keep" and os.path.islink(link)
