"""The `cowproxy` command line."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from cowproxy import __version__, logs

UPSTREAM_HELP = "Upstream (production) database DSN, e.g. postgresql://user:pw@db:5432/app. Env: COWPROXY_UPSTREAM."


def _hostport(value: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}")
    return (host.strip("[]") or default_host), int(port)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cowproxy")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]), help="Structured (JSON lines) log level.")
def main(log_level: str) -> None:
    """cowproxy: copy-on-write branches of a PostgreSQL database.

    Point an application's connection string at the proxy; the database name picks
    the branch. Reads of rows a branch never changed come from production, live;
    writes land in the branch's overlay.

    \b
    Quick start:
      cowproxy demo                      # embedded PostgreSQL + sample data + proxy
      cowproxy serve --upstream postgresql://app@db/app
    """
    logs.configure(log_level)


@main.command()
@click.option("--upstream", envvar="COWPROXY_UPSTREAM", required=True, help=UPSTREAM_HELP)
@click.option("--listen", default="127.0.0.1:6543", show_default=True, help="HOST:PORT to accept clients on.")
@click.option("--metrics", "metrics", default=None, help="HOST:PORT to serve Prometheus /metrics on.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="PEM certificate: clients may use TLS.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="PEM private key for --tls-cert.")
@click.option("--max-message-size", default=64 * 1024 * 1024, show_default=True,
              help="Largest client message accepted, in bytes; larger ones get 08P01 and the connection closes.")
@click.option("--drain-timeout", default=30.0, show_default=True,
              help="Seconds SIGTERM waits for open transactions before cutting them.")
@click.option("--startup-timeout", default=60.0, show_default=True,
              help="Seconds a client has to finish startup and authentication, like PostgreSQL's "
                   "authentication_timeout.")
@click.option("--overlay-stats-interval", default=30.0, show_default=True,
              help="Seconds between refreshes of the cowproxy_overlay_rows/_bytes metrics.")
@click.option("--passthrough", is_flag=True,
              help="No branches: relay the production database as the client's own user, writes included. "
                   "For benchmarking the proxy core; production is NOT protected in this mode. Sessions "
                   "between frames relay on a native thread (COWPROXY_NATIVE_RELAY=0: the Python relay only; "
                   "without this flag branch and production sessions do too while they only execute prepared "
                   "statements).")
def serve(upstream: str, listen: str, metrics: str | None, tls_cert: str | None, tls_key: str | None,
          max_message_size: int, drain_timeout: float, startup_timeout: float, overlay_stats_interval: float,
          passthrough: bool) -> None:
    """Run the proxy in the foreground until SIGTERM or SIGINT, then drain and exit.

    \b
    Example:
      cowproxy serve --upstream postgresql://postgres@127.0.0.1:5432/app \\
                     --listen 127.0.0.1:6543 --metrics 127.0.0.1:9187
      psql postgresql://postgres@127.0.0.1:6543/app
    """
    from cowproxy.proxy.server import ProxyConfig, ProxyServer, install_uvloop

    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    host, port = _hostport(listen)
    mhost, mport = _hostport(metrics) if metrics else (None, None)
    config = ProxyConfig(upstream=upstream, listen_host=host, listen_port=port, metrics_host=mhost,
                         metrics_port=mport, tls_cert=tls_cert, tls_key=tls_key,
                         max_message_size=max_message_size, drain_timeout=drain_timeout,
                         passthrough=passthrough, overlay_stats_interval=overlay_stats_interval,
                         startup_timeout=startup_timeout)
    install_uvloop()
    asyncio.run(ProxyServer(config).serve_until_signalled())


@main.command()
@click.option("--listen", default="127.0.0.1:6543", show_default=True, help="HOST:PORT for the proxy.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="PostgreSQL data directory, kept and reused next time. Default: a temporary one, removed on exit.")
@click.option("--metrics", "metrics", default=None, help="HOST:PORT to serve Prometheus /metrics on.")
@click.pass_context
def demo(ctx: click.Context, listen: str, data_dir: Path | None, metrics: str | None) -> None:
    """Embedded PostgreSQL + a sample shop database + the proxy + branch "demo", until Ctrl-C.

    Prints ready-to-paste psql commands; Ctrl-C stops everything it started.
    """
    from cowproxy.demo import DemoOptions, run_demo

    if ctx.parent is not None and ctx.parent.get_parameter_source("log_level") is click.core.ParameterSource.DEFAULT:
        logs.configure("warning")  # JSON event lines would bury the demo's own output
    host, port = _hostport(listen)
    mhost, mport = _hostport(metrics) if metrics else (None, None)
    ctx.exit(run_demo(DemoOptions(listen_host=host, listen_port=port, data_dir=data_dir,
                                  metrics_host=mhost, metrics_port=mport)))


from cowproxy.branch.cli import branch as _branch  # noqa: E402  (cowproxy branch ...)

main.add_command(_branch)


def run() -> None:  # pragma: no cover
    sys.exit(main())
if __name__ == "__main__":
    main()
