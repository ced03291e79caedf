"""What the entry points share: the parser's common flags, override parsing, and where things are.

Every entry point takes ``section.field=value`` arguments with the same parser
(``red_megatron.overrides``): red-train, red-launch, red-study and red-export override the run's
``RunConfig``; red-eval overrides its own options, grouped as sections (``protocol.temperature=0.6``
is ``--temperature 0.6``).
"""
from __future__ import annotations

import argparse
import dataclasses
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


def _group_fields(ap: argparse.ArgumentParser, sections: tuple[str, ...]) -> dict[str, list[argparse.Action]]:
    out: dict[str, list[argparse.Action]] = {}
    for g in ap._action_groups:  # noqa: SLF001 - argparse offers no public view of its groups
        if g.title in sections:
            out[g.title] = [a for a in g._group_actions if a.dest != "help"]  # noqa: SLF001
    return out


def apply_namespace_overrides(ap: argparse.ArgumentParser, args: argparse.Namespace, overrides: list[str],
                              sections: tuple[str, ...]) -> argparse.Namespace:
    """``section.field=value`` onto a flat argparse namespace, through the one override parser.

    Each argument group named in ``sections`` becomes a dataclass whose fields are its options
    (typed by the option's ``type``); an unknown field lists the valid ones, as for a recipe.
    """
    from red_megatron.overrides import apply_overrides

    if not overrides:
        return args
    groups = _group_fields(ap, sections)
    made = {}
    for title, actions in groups.items():
        fields = []
        for a in actions:
            tp = bool if isinstance(a.const, bool) and a.nargs == 0 else (a.type or str)
            tp = tp if isinstance(tp, type) else str
            if a.default is None and tp is not bool:
                tp = tp | None
            fields.append((a.dest, tp, dataclasses.field(default_factory=lambda v=getattr(args, a.dest): v)))
        made[title] = dataclasses.make_dataclass(title, fields, kw_only=True)()
    root = dataclasses.make_dataclass(
        "options", [(t, type(v), dataclasses.field(default_factory=lambda v=v: v)) for t, v in made.items()],
        kw_only=True)()
    new = apply_overrides(root, overrides)
    for title, actions in groups.items():
        sec = getattr(new, title)
        for a in actions:
            value = getattr(sec, a.dest)
            if a.choices is not None and value is not None and value not in a.choices:
                raise UserError(f"bad value {value!r} in {title}.{a.dest}: expected one of {list(a.choices)}")
            setattr(args, a.dest, value)
    return args
