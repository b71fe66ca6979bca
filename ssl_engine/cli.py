"""The ``sslx`` command line.

Answering ``sslx --help``, an option error or an unknown name needs neither torch nor any plugin: the commands are
defined in torch-free modules (``cli_pretrain``, ``cli_plugins``, ``cli_runs``) that import the heavy parts when
their work starts, and the commands defined elsewhere (``embed``, ``shard``, ``new-plugin``) are imported only when
run (:class:`SslxGroup`).
"""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any

import click

from ssl_engine import __version__
from ssl_engine.cli_common import debugging, os_error_line
from ssl_engine.cli_plugins import plugins
from ssl_engine.cli_pretrain import pretrain
from ssl_engine.cli_runs import bench, evaluate, export, plot, show
from ssl_engine.names import closest

LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module:attribute, the first paragraph of its help, for `sslx --help` without importing the module)
    "new-plugin": (
        "ssl_engine.scaffold:new_plugin",
        "Scaffold sslx-NAME/, a pretext-task plugin package ready for `pip install -e`.",
    ),
    "embed": (
        "ssl_engine.embed:embed",
        "Write a run's features of every image of a folder (or data set split), with names and labels.",
    ),
    "shard": (
        "ssl_engine.shard:shard",
        "Write a folder of images as WebDataset tar shards (labels kept), for sharded streaming.",
    ),
}


class SslxGroup(click.Group):
    """The ``sslx`` group.

    It loads the commands of :data:`LAZY_COMMANDS` on first use (their modules import torch), suggests the closest
    command for a mistyped one, and turns an error in a plugin's code, or an I/O error no command expected, into
    one line naming the plugin (or the path) and exit 1, instead of a traceback.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            module, _, attribute = LAZY_COMMANDS[cmd_name][0].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help``, with the lazy commands' help read from :data:`LAZY_COMMANDS`."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        rows = []
        for name in names:
            command = self.commands.get(name)
            if command is not None:
                if not command.hidden:
                    rows.append((name, command.get_short_help_str(limit)))
            else:
                stand_in = click.Command(
                    name, help=LAZY_COMMANDS[name][1]
                )  # shortened exactly as the real one would be
                rows.append((name, stand_in.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and not ctx.resilient_parsing and self.get_command(ctx, name) is None:
            guess = closest(name, self.list_commands(ctx))
            hint = f" (did you mean {guess!r}?)" if guess else ""
            ctx.fail(f"no such command {name!r}{hint}; commands: {', '.join(self.list_commands(ctx))}")
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        from ssl_engine.plugin_failure import PluginCodeError

        try:
            return super().invoke(ctx)
        except PluginCodeError as error:
            if debugging():
                raise
            click.echo(f"Error: {error}\n(the plugin's traceback: sslx --debug ... or SSLX_DEBUG=1)", err=True)
            sys.exit(1)
        except OSError as error:
            if debugging():
                raise
            click.echo(f"Error: {os_error_line(error)}", err=True)
            sys.exit(1)


@click.group(cls=SslxGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="sslx")
@click.option("--debug", is_flag=True, help="Show full tracebacks of errors raised in plugins' code.")
def main(debug: bool) -> None:
    """sslx: self-supervised pretraining for images, with pretext tasks as plugins.

    \b
    Examples:
      sslx plugins                               # what is installed
      sslx plugins jigsaw                        # a task's settings (--set jigsaw.KEY=VALUE)
      sslx pretrain --task jigsaw                # pretrain on the embedded data, then linear probe
      sslx pretrain --task rotation --steps 200 --out runs/rot
      sslx evaluate runs/rot --protocol linear --json
    """
    warnings.showwarning = show_warning


def show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """Warnings as one plain line on stderr (no source lines)."""
    click.echo(f"warning: {message}", err=True)


for _command in (plugins, pretrain, evaluate, export, bench, plot, show):
    main.add_command(_command)

if __name__ == "__main__":
    main()
