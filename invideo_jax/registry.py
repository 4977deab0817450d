"""The named models' command line: the presets (invideo_jax/presets.py) with parameter counts and formats.

  python -m invideo_jax.registry list [PATTERN ...]    names, parameter counts (from shapes, no weights), formats

A PATTERN is a glob of preset names or a config file PATH.py[:ARG]. Loading a model: invideo_jax/inference.py.
"""
import argparse
import fnmatch
import sys

from invideo_jax import inference, presets


def format_count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def match(patterns=()) -> list:
    """Preset names matching any of the glob `patterns` (all without patterns), then the config files among them;
    none matching is an error."""
    chosen = [n for n in presets.names() if not patterns or any(fnmatch.fnmatch(n, p) for p in patterns)]
    chosen += [p for p in patterns if presets.is_config_file(p)]
    if not chosen:
        raise ValueError(f"no model matches {' '.join(patterns)}; known: {', '.join(presets.names())}")
    return chosen


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m invideo_jax.registry", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="presets with parameter counts (from shapes) and checkpoint formats")
    listing.add_argument("patterns", nargs="*", help="glob patterns of names or config files (default: all presets)")
    args = parser.parse_args(argv)
    try:
        chosen = match(args.patterns)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = {n: presets.get(n) for n in chosen}
    configs = {n: p.config + (f" [{p.stage}]" if p.stage else "") for n, p in rows.items()}
    widths = (max(map(len, chosen)), 8, max(map(len, presets.FORMATS)), max(map(len, configs.values())))
    row = lambda *values: "  ".join(str(v).ljust(w) for v, w in zip(values, widths + (0,))).rstrip()
    print(row("name", "params", "format", "config", "description"))
    for name, preset in rows.items():  # a row as soon as its count is known: each model is traced (about a second)
        print(row(name, format_count(inference.count_params(name)), preset.format, configs[name], preset.description),
              flush=True)
    print("\nformat: 'ours' = an Orbax checkpoint directory (from training or invideo_jax.convert.cli); others = "
          "PyTorch weights read by that converter (a converted directory of ours works for every model)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
