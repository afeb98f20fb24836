"""The public API is exactly what walkit/__init__.py lists in __all__."""

import importlib
import pkgutil

import walkit


def test_all_names_exist() -> None:
    for name in walkit.__all__:
        assert getattr(walkit, name) is not None, name


def test_no_public_name_outside_all() -> None:
    public = {n for n in vars(walkit) if not n.startswith("_")}
    modules = {m.name for m in pkgutil.iter_modules(walkit.__path__)}
    # Submodules appear as attributes once imported; they are not API unless listed.
    assert public - modules - {"annotations", "TYPE_CHECKING"} <= set(walkit.__all__)


def test_every_module_imports() -> None:
    for info in pkgutil.walk_packages(walkit.__path__, "walkit."):
        if info.name == "walkit.__main__":
            continue
        importlib.import_module(info.name)


def test_sandbox_is_reachable_from_the_package() -> None:
    assert walkit.sandbox.start is not None
