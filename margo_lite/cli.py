"""The `margo-lite` command line.

Exit codes: 0 success (or every deployment converged), 1 some deployment failed,
2 usage or configuration error. A user's mistake is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from margo_lite import __version__, config, logs, statusview
from margo_lite.errors import ConfigError, MargoLiteError, UsageError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

log = logs.get(__name__)


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so every usage error goes one way."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="margo-lite",
        description="Margo device management client: applies the desired state a WOS "
        "keeps in Git and reports deployment status back.",
    )
    parser.add_argument("--version", action="version", version=f"margo-lite {__version__}")
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help=f"configuration file (default: ${config.ENV_VAR} or {config.DEFAULT_PATH})",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log detail (default: INFO)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    commands.add_parser("run", help="run the agent until stopped")
    commands.add_parser("once", help="one full cycle (fetch, apply, report), then exit")
    status = commands.add_parser("status", help="deployments and agent health")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    commands.add_parser("check-config", help="check the configuration file and exit")
    return parser


def _load(args: argparse.Namespace) -> config.Config:
    path = args.config or config.default_path()
    cfg = config.load_config(path)
    config.check_files(cfg)
    return cfg


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args)
    print(f"configuration OK: {cfg.source}")
    print(f"  device {cfg.device.id}, state in {cfg.device.state_dir}")
    print(f"  desired state from {logs.sanitize_url(cfg.git.url)} branch {cfg.git.branch}")
    print(f"  reports to {logs.sanitize_url(cfg.wos.url)}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _load(args)
    report = statusview.collect(cfg)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(statusview.format_table(report))
    return EXIT_OK


def _not_yet(name: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        _load(args)
        raise UsageError(f"'{name}' is not available yet in margo-lite {__version__}")

    return command


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _not_yet("run"),
    "once": _not_yet("once"),
    "status": cmd_status,
    "check-config": cmd_check_config,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"margo-lite: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    logs.setup(args.log_level)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, UsageError) as exc:
        print(f"margo-lite: {logs.redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except MargoLiteError as exc:
        print(f"margo-lite: {logs.redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except Exception:  # a bug: keep the traceback for the report, masked like every log line
        log.exception("internal error in margo-lite %s (please report it)", __version__)
        return EXIT_FAILED
