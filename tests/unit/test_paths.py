from pathlib import Path

from daemon.paths import bundle_root, resource_path, user_dirs, workflows_dir


def test_luna_home_moves_every_user_dir_under_it(luna_home):
    dirs = user_dirs()
    for path in (dirs.config, dirs.data, dirs.logs, dirs.cache):
        assert Path(path).is_relative_to(luna_home.resolve())
    assert len({dirs.config, dirs.data, dirs.logs, dirs.cache}) == 4


def test_without_luna_home_platformdirs_decides(monkeypatch):
    monkeypatch.delenv("LUNA_HOME")
    dirs = user_dirs()
    assert "LunaNarrates" in str(dirs.config)


def test_ensure_creates_the_directories(luna_home):
    dirs = user_dirs().ensure()
    assert dirs.logs.is_dir() and dirs.cache.is_dir()


def test_bundled_resources_are_found_in_a_checkout():
    assert (bundle_root() / "pyproject.toml").is_file()
    assert resource_path().is_dir()
    assert workflows_dir().is_dir()
