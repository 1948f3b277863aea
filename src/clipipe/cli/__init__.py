"""The `clipipe` command: parse arguments, call the library, render results, choose the exit code."""
from __future__ import annotations

import os
import sys
import traceback

import click

from clipipe import __version__
from clipipe.errors import ClipipeError, InternalError

EXIT_INTERRUPTED = 130


#: subcommand -> (module, attribute): imported only when used, so `clipipe run` pays for `run` alone.
_COMMANDS = {
    "run": ("clipipe.cli.run", "run"),
    "validate": ("clipipe.cli.inspect", "validate"),
    "graph": ("clipipe.cli.inspect", "graph"),
    "explain": ("clipipe.cli.inspect", "explain"),
    "ops": ("clipipe.cli.ops", "ops"),
    "context": ("clipipe.cli.context", "context"),
    "transfer": ("clipipe.cli.transfer", "transfer"),
    "test": ("clipipe.cli.testcmd", "test"),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use (start-up time matters for fleets)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every subcommand name, sorted."""
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Import and return one subcommand."""
        if cmd_name not in _COMMANDS:
            return None
        import importlib

        module, attr = _COMMANDS[cmd_name]
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="clipipe")
@click.option("--debug", is_flag=True, envvar="CLIPIPE_DEBUG", help="Show tracebacks for errors.")
@click.option("--contexts", "contexts_path", metavar="FILE", envvar="CLIPIPE_CONTEXTS",
              help="contexts.yaml to use (default: ./contexts.yaml, ./config/contexts.yaml, "
                   "~/.config/clipipe/contexts.yaml).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, contexts_path: str | None) -> None:
    """Run YAML pipelines of shell and record steps locally, over SSH and in Kubernetes pods.

    \b
    Examples:
      clipipe run examples/backup.yaml --source=/srv
      clipipe run "df -h" -c prod-server
      clipipe graph examples/backup.yaml --format mermaid
      clipipe ops list
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["contexts_path"] = contexts_path


def print_error(exc: ClipipeError) -> None:
    """One line for the error, one for its hint."""
    click.secho(f"error: {exc}", fg="red", err=True)
    if exc.hint:
        click.echo(f"hint: {exc.hint}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn errors into messages and exit codes (no tracebacks)."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("CLIPIPE_DEBUG") == "1"
    try:
        rv = cli.main(args=args, prog_name="clipipe", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except ClipipeError as exc:
        if debug:
            traceback.print_exc()
        print_error(exc)
        return exc.exit_code
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        if debug:
            traceback.print_exc()
        err = InternalError(f"internal error: {type(exc).__name__}: {exc}",
                            hint="this is a bug in clipipe; run again with --debug and report the traceback")
        print_error(err)
        return err.exit_code


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
