"""One exception tree per package: every exception class lives in the package's errors module,
under its root, and the module's docstring draws all of them (httpx's ``_exceptions`` shape)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import proxy
import saga_runner
from proxy.errors import SidecarError
from saga_runner.errors import SagaError
from yamlconfig.errors import ConfigError

TREES = [(proxy, "proxy.errors", SidecarError), (saga_runner, "saga_runner.errors", SagaError)]


def exception_classes(package: ModuleType) -> list[type[BaseException]]:
    """Public exception classes defined (not imported) in any module of ``package``."""
    found = []
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        if info.name.endswith(".__main__"):  # running it is the CLI
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and not name.startswith("_")
            ):
                found.append(value)
    return found


@pytest.mark.parametrize(("package", "home", "root"), TREES)
def test_every_exception_of_a_package_lives_in_its_errors_module_under_its_root(
    package: ModuleType, home: str, root: type[Exception]
) -> None:
    classes = exception_classes(package)
    assert {cls.__qualname__ for cls in classes if cls.__module__ != home} == set()
    assert [cls.__name__ for cls in classes if not issubclass(cls, root)] == []
    docstring = importlib.import_module(home).__doc__ or ""
    assert [cls.__name__ for cls in classes if cls.__name__ not in docstring] == []


def test_a_bad_config_file_is_neither_packages_error() -> None:
    assert not issubclass(ConfigError, SagaError | SidecarError)
