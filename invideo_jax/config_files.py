"""Config files `PATH.py[:ARG]` -> ConfigDict, from any current directory.

PATH is looked up relative to the current directory first, then to the repository root next to the package (so
`configs/demo.py` works anywhere for a source checkout or an editable install). The recipes in configs/ import
their neighbours (`from configs import common`); without a `configs` package on the import path, the one next to
the package is registered by its path (sys.path is not changed).
"""
import importlib.util
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def find(path: str) -> str:
    """The config file `path` (absolute, or relative to the cwd, else to the repository root), absolute."""
    for candidate in (os.path.abspath(os.path.expanduser(path)), os.path.join(REPO_ROOT, path)):
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"config file {path!r} not found in {os.getcwd()} or {REPO_ROOT}")


def register_configs_package() -> None:
    """Makes `import configs` find the repository's configs/ when the import path does not."""
    directory = os.path.join(REPO_ROOT, "configs")
    if "configs" in sys.modules or importlib.util.find_spec("configs") or not os.path.isdir(directory):
        return
    spec = importlib.util.spec_from_file_location("configs", os.path.join(directory, "__init__.py"),
                                                  submodule_search_locations=[directory])
    module = importlib.util.module_from_spec(spec)
    sys.modules["configs"] = module
    spec.loader.exec_module(module)


def load(spec: str):
    """'path/to/config.py[:arg]' -> the ConfigDict its get_config returns."""
    path, _, arg = spec.partition(":")
    register_configs_package()
    module_spec = importlib.util.spec_from_file_location("config_file", find(path))
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def resolve_flag(argv: list, flag: str = "--config") -> list:
    """`argv` with the file of `--config=PATH[:ARG]` (or `--config PATH[:ARG]`) found by `find`, for config_flags,
    which reads PATH relative to the current directory only; the `configs` package is registered too."""
    register_configs_package()
    out = list(argv)
    for i, item in enumerate(out):
        if item.startswith(flag + "="):
            path, sep, arg = item[len(flag) + 1:].partition(":")
            out[i] = f"{flag}={_found(path)}{sep}{arg}"
        elif item == flag and i + 1 < len(out):
            path, sep, arg = out[i + 1].partition(":")
            out[i + 1] = f"{_found(path)}{sep}{arg}"
    return out


def _found(path: str) -> str:
    """`find(path)`, or `path` unchanged when it is not found (config_flags then reports it)."""
    try:
        return find(path)
    except FileNotFoundError:
        return path
