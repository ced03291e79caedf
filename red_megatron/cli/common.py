"""What the entry points share: the parser's common flags, override parsing, and where things are.

Every entry point takes ``section.field=value`` arguments with the same parser
(``red_megatron.overrides``) on the same ``RunConfig``: red-train, red-launch, red-study, red-export and
red-eval (its evaluation reads the eval, data, rollout and reward sections).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from red_megatron.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]  # the clone (editable install) the package lives in
SHARED_DATA_ENV = "RED_SHARED_DATA"


def shared_data_dir() -> Path:
    """The evaluation data: $RED_SHARED_DATA, default ``../shared/data`` beside the clone."""
    env = os.environ.get(SHARED_DATA_ENV)
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


class Parser(argparse.ArgumentParser):
    """argparse whose errors are refusals (one line through run_cli) and whose options may sit anywhere
    among the ``section.field=value`` overrides (``parse_args`` parses intermixed)."""

    def error(self, message):
        raise UserError(f"{message} in the command line of {self.prog}: expected the options of {self.prog} --help")

    def parse_args(self, args=None, namespace=None):
        return self.parse_intermixed_args(args, namespace)


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    ap = Parser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    from red_megatron import __version__

    ap.add_argument("--debug", action="store_true",
                    help="print the traceback of a refusal too (also: RED_DEBUG=1)")
    ap.add_argument("--version", action="version", version=f"{prog} (red-megatron) {__version__}")
    return ap


def add_overrides(ap: argparse.ArgumentParser, what: str = "the recipe") -> None:
    ap.add_argument("overrides", nargs="*", metavar="section.field=value",
                    help=f"overrides of {what}, e.g. policy.tp=2 algo.preset=grpo steps=20 (any order)")


DEFAULT_RECIPE = "tiny_cpu"


def add_recipe_args(ap: argparse.ArgumentParser) -> None:
    """--recipe and --config, the two layers under the command line's overrides."""
    from configs import RECIPES

    ap.add_argument("--recipe", default=None,
                    help=f"one of {sorted(RECIPES)}, or FILE.py[:function] (a recipe of your own; function "
                         f"default 'recipe'); default: the config file's 'recipe' key, else {DEFAULT_RECIPE}")
    ap.add_argument("--config", default=None, metavar="FILE",
                    help="a YAML or JSON file of section.field values (nested or dotted; an optional 'recipe' "
                         "key), applied on the recipe and under the command line's overrides; a run dir's "
                         "run_config.json replays that run")


def resolve_run_config(recipe: str | None, config_file: str | None, overrides: list):
    """recipe -> config file -> command-line overrides, validated once (a run_config.json without --recipe
    is the whole config by itself)."""
    from configs import get_recipe
    from red_megatron.config import RunConfig
    from red_megatron.overrides import apply_overrides, config_from_dict, flatten_config, read_config_file

    if config_file is None:
        return apply_overrides(get_recipe(recipe or DEFAULT_RECIPE), list(overrides))
    data, whole = read_config_file(config_file)
    data = dict(data)
    file_recipe = data.pop("recipe", None)
    if file_recipe is not None and not isinstance(file_recipe, str):
        raise UserError(f"bad recipe {file_recipe!r} in {config_file}: expected a recipe name or FILE.py[:function]")
    name = recipe or file_recipe
    if name is None and whole:
        return apply_overrides(config_from_dict(RunConfig, data), list(overrides))
    base = get_recipe(name or DEFAULT_RECIPE)
    return apply_overrides(base, flatten_config(data, base, label=config_file) + list(overrides))


def world_size(flag: int | None) -> int:
    if flag is not None:
        if flag < 1:
            raise UserError(f"bad world size in --world-size={flag}: expected an int >= 1")
        return flag
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        n = int(raw)
    except ValueError:
        raise UserError(f"bad world size in WORLD_SIZE={raw!r}: expected an int >= 1") from None
    if n < 1:
        raise UserError(f"bad world size in WORLD_SIZE={raw!r}: expected an int >= 1")
    return n
