"""The `recap` command. Each area (data, train, bridge, serve, ...) registers its sub-command group
under the `recap.cli` entry-point group, so this root imports none of them by name."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

import typer

app = typer.Typer(
    name="recap",
    help="Record robot episodes, train value functions and advantage-conditioned policies on them, "
         "and deploy the result back to the robots (RECAP). Run `recap GROUP --help` for each area.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.DEBUG if verbose else logging.WARNING)


def _register_groups() -> None:
    for ep in sorted(entry_points(group="recap.cli"), key=lambda e: e.name):
        sub = ep.load()
        app.add_typer(sub, name=ep.name)


_register_groups()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
