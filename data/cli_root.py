"""The `recap` command. Each area (data, train, bridge, serve, ...) registers its sub-command group
under the `recap.cli` entry-point group, so this root imports none of them by name. Invariants:

- A group is imported only when it is invoked: `recap --help` lists the groups with their short help
  read from the `typer.Typer(help=...)` in each group's source, without importing it (torch, ROS and
  the server stack stay unloaded).
- Help is plain text (no rich markup), so bracketed text such as `[default: ...]` or `[a|b]` shows.
- Errors end as `data.cli_errors` says: one line, status 2 for user errors; `--verbose` shows
  tracebacks and debug logs.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from importlib.metadata import PackageNotFoundError, entry_points, version

import typer
from typer import _click as click
from typer.core import TyperGroup

from data import cli_errors
from data.logs import setup_logging



def _short_help_in_source(value: str) -> str:
    """The help text of `<attr> = typer.Typer(help=...)` in the entry point's module, read from its
    source (importing the module would load what the group needs)."""
    module, _, attr = value.partition(":")
    try:
        spec = importlib.util.find_spec(module)
        tree = ast.parse(open(spec.origin, encoding="utf-8").read())
    except (ImportError, OSError, SyntaxError, TypeError, AttributeError):
        return ""
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == attr for t in node.targets)
                and isinstance(node.value, ast.Call)):
            for kw in node.value.keywords:
                if kw.arg == "help" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                    return kw.value.value
    return ""


def _plain_help(cmd: click.Command) -> click.Command:
    """Plain-text help for a command and everything under it; no shell-completion options on groups."""
    if hasattr(cmd, "rich_markup_mode"):
        cmd.rich_markup_mode = None
    cmd.params = [p for p in cmd.params if p.name not in ("install_completion", "show_completion")]
    for sub in getattr(cmd, "commands", {}).values():
        _plain_help(sub)
    return cmd


def click_command(app: typer.Typer | click.Command) -> click.Command:
    """A group's typer app as the click command `recap` runs (also for `python -m <group module>`)."""
    return _plain_help(app if isinstance(app, click.Command) else typer.main.get_command(app))


class EntryPointGroups(TyperGroup):
    """The root group: sub-groups come from the `recap.cli` entry points and load on first use
    (click's "lazily loading subcommands" pattern)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._entry_points = {ep.name: ep for ep in entry_points(group="recap.cli")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._entry_points)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in self._entry_points:
            cmd = click_command(self._entry_points[name].load())
            cmd.name = name
            self.commands[name] = cmd
        return self.commands.get(name)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self._entry_points and not args[0].startswith("-"):
            raise click.exceptions.UsageError(f"no command group {args[0]!r}; groups: {', '.join(self.list_commands(ctx))}",
                                   ctx=ctx)
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from typer._click.utils import make_default_short_help

        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names), default=0)
        rows = [(n, make_default_short_help(_short_help_in_source(self._entry_points[n].value), limit)) for n in names]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"recap {version('recap')}")
        except PackageNotFoundError:
            typer.echo("recap (not installed: no version metadata)")
        raise typer.Exit()


app = typer.Typer(
    name="recap", cls=EntryPointGroups,
    help="Record robot episodes, train value functions and advantage-conditioned policies on them, "
         "and deploy the result back to the robots (RECAP). Run `recap GROUP --help` for each area. "
         "State lives under RECAP_HOME (default ./recap_home): the episode store in $RECAP_HOME/store, "
         "training runs in $RECAP_HOME/runs.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging; tracebacks on errors."),
          show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                            help="Print the version and exit.")) -> None:
    cli_errors.set_verbose(verbose)
    setup_logging(verbose)  # libraries that speak per request: with --verbose only


def main() -> None:
    cli_errors.run(typer.main.get_command(app), prog_name="recap")


if __name__ == "__main__":
    main()
