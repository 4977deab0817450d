"""The package's import rules (issue 19): dependencies point down. An `ast` walk of every module under invideo_jax/."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "invideo_jax"
CLI_MODULES = ("main", "extract", "zero_shot_cli", "precompute_targets", "aot", "stages")
COMMANDS = ("main", "extract", "zero_shot_cli", "precompute_targets", "aot", "registry",
            "convert.cli")  # no module imports these
# The converter's command line builds a model from a training config through its task (`--model=PATH.py`), as the
# run that restores the checkpoint builds it; the converters' library (convert/api.py) takes a built model.
TRAIN_IMPORT_ALLOWED = {"invideo_jax.convert.cli": {"invideo_jax.train.tasks", "invideo_jax.train.tasks.get_task"}}


def _modules() -> dict:
    """{dotted module name: parsed tree} for every .py file of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = ast.parse(path.read_text(), str(path))
    return out


def imported(tree) -> set:
    """Dotted names a module imports anywhere (function-level imports included): `import a.b` gives 'a.b',
    `from a import b` gives 'a.b' (b may be a module)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def models_and_converters_never_import_train(modules) -> list:
    return [f"{m} imports {n}" for m, tree in modules.items()
            if _under(m, "invideo_jax.models") or _under(m, "invideo_jax.convert")
            for n in imported(tree) if _under(n, "invideo_jax.train") and n not in TRAIN_IMPORT_ALLOWED.get(m, ())]


def data_and_models_never_import_cli(modules) -> list:
    clis = [f"invideo_jax.{c}" for c in CLI_MODULES]
    return [f"{m} imports {n}" for m, tree in modules.items()
            if _under(m, "invideo_jax.models") or _under(m, "invideo_jax.data")
            for n in imported(tree) if any(_under(n, c) for c in clis)]


def no_module_imports_a_command(modules) -> list:
    commands = [f"invideo_jax.{c}" for c in COMMANDS]
    return [f"{m} imports {n}" for m, tree in modules.items() for n in imported(tree)
            if any(_under(n, c) for c in commands) and not _under(m, n)]


INFERENCE_MODULES = ("invideo_jax.presets", "invideo_jax.inference", "invideo_jax.registry")


def inference_knows_no_model(modules) -> list:
    """The presets, the loader and their command line reach models only through the task table (`get_task`) and
    the tasks' inference interface: importing a model or task module would be the start of a switch on the kind."""
    return [f"{m} imports {n}" for m, tree in modules.items() if m in INFERENCE_MODULES for n in imported(tree)
            if _under(n, "invideo_jax.models") or (_under(n, "invideo_jax.train.tasks")
                                                   and n not in ("invideo_jax.train.tasks",
                                                                 "invideo_jax.train.tasks.get_task"))]


def no_top_level_configs(modules) -> list:
    return [f"{m} imports {n}" for m, tree in modules.items() for n in imported(tree) if _under(n, "configs")]


def no_sys_path_edits(modules) -> list:
    return [f"{m} changes sys.path" for m, tree in modules.items() for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
            and node.value.id == "sys"]


RULES = (models_and_converters_never_import_train, data_and_models_never_import_cli, no_module_imports_a_command,
         inference_knows_no_model, no_top_level_configs, no_sys_path_edits)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_package_import_rule(rule):
    assert rule(_modules()) == []


def test_rules_catch_a_breaking_import():
    """Each rule reports a module that breaks it (the walk sees function-level imports too)."""
    broken = {
        "invideo_jax.models.bad": ast.parse("def f():\n    from invideo_jax.train import checkpoint"),
        "invideo_jax.data.bad": ast.parse("import invideo_jax.main"),
        "invideo_jax.convert.bad": ast.parse("from configs import common\nimport sys\nsys.path.insert(0, '.')"),
        "invideo_jax.precompute_bad": ast.parse("from invideo_jax import main as entry"),
        "invideo_jax.inference": ast.parse("from invideo_jax.models.vit import VisionTransformer\n"
                                           "from invideo_jax.train.tasks import align, get_task"),
    }
    assert sorted(models_and_converters_never_import_train(broken)) == [
        "invideo_jax.models.bad imports invideo_jax.train",
        "invideo_jax.models.bad imports invideo_jax.train.checkpoint"]
    assert data_and_models_never_import_cli(broken) == ["invideo_jax.data.bad imports invideo_jax.main"]
    assert no_module_imports_a_command(broken) == ["invideo_jax.data.bad imports invideo_jax.main",
                                                   "invideo_jax.precompute_bad imports invideo_jax.main"]
    assert sorted(no_top_level_configs(broken)) == ["invideo_jax.convert.bad imports configs",
                                                    "invideo_jax.convert.bad imports configs.common"]
    assert no_sys_path_edits(broken) == ["invideo_jax.convert.bad changes sys.path"]
    assert sorted(inference_knows_no_model(broken)) == [
        "invideo_jax.inference imports invideo_jax.models.vit",
        "invideo_jax.inference imports invideo_jax.models.vit.VisionTransformer",
        "invideo_jax.inference imports invideo_jax.train.tasks.align"]
