"""The `margo-lite` command line.

Exit codes: 0 success (or every deployment converged), 1 some deployment failed,
2 usage or configuration error. A user's mistake is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from margo_lite import __version__, config, logs, proxy, statestore, statusview, writable
from margo_lite.errors import ConfigError, MargoLiteError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

log = logs.get(__name__)


class _Formatter(argparse.HelpFormatter):
    """argparse's help at the terminal's width, found without shutil: argparse imports it
    for that, and shutil loads bz2 and lzma into every command, `run` included."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        kwargs.setdefault("width", _terminal_columns() - 2)  # as argparse sizes it
        super().__init__(prog, **kwargs)


def _terminal_columns() -> int:
    """$COLUMNS, else the width of the terminal on stdout, else 80 (shutil's rule)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so every usage error goes one way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

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
    caps = commands.add_parser("capabilities", help="print this device's capabilities")
    caps.add_argument("--send", action="store_true", help="and send them to the WOS")
    onboard = commands.add_parser(
        "onboard", help="onboard with a WOS: trust its CA, get credentials, configure"
    )
    onboard.add_argument("--wos-url", required=True, metavar="URL", help="the WOS root URL")
    onboard.add_argument(
        "--ca-fingerprint",
        metavar="SHA256",
        help="expected SHA-256 fingerprint of the WOS root CA (else asked interactively)",
    )
    onboard.add_argument("--device-id", help="this device's id (default: from the configuration)")
    demo = commands.add_parser(
        "demo", help="run the whole job end to end on this machine (local WOS, Git, engine)"
    )
    demo.add_argument("--keep", action="store_true", help="keep the demo's files afterwards")
    demo.add_argument(
        "--api",
        choices=("draft", "v1"),
        default="draft",
        help="draft: a WOS with Git; v1: a Margo 1.0 WFM over mTLS and an OCI registry",
    )
    return parser


def _load(args: argparse.Namespace) -> config.Config:
    path = args.config or config.default_path()
    cfg = config.load_config(path)
    config.check_files(cfg)
    return cfg


def _check_writable(cfg: config.Config, *, predict_service: bool = False) -> None:
    """The folders the agent writes: refused here (exit 2) rather than at the first write.
    `run` and `once` ask their own file system (inside the service, the sandbox is in force);
    `check-config` predicts the service's from the unit's sandbox (`systemctl show`)."""
    folders = {"device.state_dir": cfg.state_dir, "device.runtime_dir": cfg.device.runtime_dir}
    sandbox = writable.service_sandbox() if predict_service else None
    writable.check(folders, sandbox, source=str(cfg.source))


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args)
    _check_writable(cfg, predict_service=True)
    proxies = _proxies(cfg)  # the environment's proxy variables are checked too
    identity = _check_svid(cfg)
    print(f"configuration OK: {cfg.source}")
    print(f"  device {cfg.device.id}, state in {cfg.device.state_dir}")
    if cfg.git is not None and cfg.desired.source == "git":
        print(f"  desired state from {logs.sanitize_url(cfg.git.url)} branch {cfg.git.branch}")
    else:
        print(f"  desired state from the WOS (wos.api: {cfg.wos.api})")
    print(f"  reports to {logs.sanitize_url(cfg.wos.url)} (wos.api: {cfg.wos.api})")
    print(f"  network: {proxies.describe()}")
    if identity:
        print(f"  identity {identity[0]}, expects the WFM {identity[1]}")
    return EXIT_OK


def _check_svid(cfg: config.Config) -> tuple[str, str] | None:
    """The client certificate and key load and match; in v1 the certificate is an SVID and
    the WFM's expected SPIFFE ID is known. (own id, WFM id) in v1; raises ConfigError."""
    if not cfg.wos.client_cert:
        return None
    from margo_lite import svid

    files = svid.Files(cfg.wos.client_cert, cfg.wos.client_key)
    if getattr(cfg.wos, "api", "draft") != "v1":
        svid.load_context(files, source=cfg.source)
        return None
    own, _context = svid.load_identity(files, source=cfg.source)
    if svid.key_is_loose(files):
        log.warning("%s is readable by others: make it mode 0600", files.key or files.cert)
    return own, svid.expected_server(own, getattr(cfg.wos, "server_id", None), source=cfg.source)


def _proxies(cfg: config.Config) -> proxy.Settings:
    """The site proxy in force; raises ConfigError for a bad environment or password file."""
    from margo_lite import pools  # late: urllib3 is not cheap, and most commands need none

    return pools.settings_from(cfg.network, os.environ, source=cfg.source)


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _load(args)
    report = statusview.collect(cfg)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(statusview.format_table(report))
    return EXIT_OK


def cmd_capabilities(args: argparse.Namespace) -> int:
    from margo_lite import capabilities, cycle

    cfg = _load(args)
    body = capabilities.discover_for(cfg)
    print(json.dumps(body, indent=2, sort_keys=True))
    if args.send:
        with cycle.report_client(cfg, _proxies(cfg)) as client:
            client.send_capabilities(body, force=True)
        print(f"sent to {logs.sanitize_url(cfg.wos.url)}", file=sys.stderr)
    return EXIT_OK


def _ask_fingerprint(fingerprint: str) -> bool:
    print(f"WOS root CA fingerprint (SHA-256):\n  {fingerprint}")
    try:
        answer = input("Trust this certificate? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def cmd_onboard(args: argparse.Namespace) -> int:
    from pathlib import Path

    from margo_lite import onboarding

    result = onboarding.onboard(
        Path(args.config or config.default_path()),
        args.wos_url,
        device_id=args.device_id,
        ca_fingerprint=args.ca_fingerprint,
        confirm=_ask_fingerprint,
    )
    print(f"onboarded; WOS root CA SHA-256 {result.fingerprint}")
    print(f"configuration written to {result.config_path}; capabilities sent")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from margo_lite import agent, daemon

    cfg = _load(args)
    _check_writable(cfg)
    with statestore.exclusive(cfg.state_dir):
        return daemon.Daemon(
            args.config or config.default_path(),
            cfg,
            lambda cfg, **hooks: agent.Agent(
                cfg,
                kill_at=os.environ.get(agent.KILL_AT_ENV),
                raise_at=os.environ.get(agent.RAISE_AT_ENV),
                **hooks,
            ),
        ).run()


def cmd_once(args: argparse.Namespace) -> int:
    from margo_lite import agent

    cfg = _load(args)
    _check_writable(cfg)
    with statestore.exclusive(cfg.state_dir):
        runner = agent.Agent(
            cfg,
            kill_at=os.environ.get(agent.KILL_AT_ENV),
            raise_at=os.environ.get(agent.RAISE_AT_ENV),
        )
        runner.start()
        try:
            result = runner.once()
        finally:
            runner.stop()
    for deployment_id in result.failed:
        print(f"failed: {deployment_id}")
    for deployment_id in result.pending:
        print(f"not converged: {deployment_id}")
    if result.poll_error:
        print(f"poll failed: {logs.redact(result.poll_error)}")
    return EXIT_OK if result.converged else EXIT_FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    if args.api == "v1":
        from margo_lite.devkit import demov1

        return demov1.run(keep=args.keep)
    from margo_lite.devkit import demo

    return demo.run(keep=args.keep)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "once": cmd_once,
    "demo": cmd_demo,
    "status": cmd_status,
    "check-config": cmd_check_config,
    "capabilities": cmd_capabilities,
    "onboard": cmd_onboard,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"margo-lite: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    del parser  # every subcommand's parser, held for nothing while `run` runs for months
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
