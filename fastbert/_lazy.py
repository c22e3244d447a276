"""Package names that load on first use, so importing a package imports neither torch nor transformers."""

import importlib


def lazy_exports(package: str, exports: dict, namespace: dict):
    """``(__getattr__, __dir__)`` for ``package``'s module: ``exports`` maps each name to the module it comes
    from; a name is imported on first access and kept in ``namespace`` (the package's ``globals()``)."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = namespace[name] = getattr(importlib.import_module(exports[name]), name)
        return value

    def __dir__():
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
