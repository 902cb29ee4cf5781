"""``ms07 run``: the delivery engine."""

from __future__ import annotations

import typer

from ms07.cli import common


def run(
    ctx: typer.Context,
    config: str = typer.Option(
        None, "--config", "-c", help="YAML config file (same as ms07 --config F run) \\[env: MS07_CONFIG]"
    ),
    concurrency: int = typer.Option(
        None, "--concurrency",
        help="Deliveries in flight (service.concurrency) \\[env: MS07_CONCURRENCY or MS07_SERVICE__CONCURRENCY]"
    ),
    http_port: int = typer.Option(
        None, "--http-port",
        help="Port of the health/metrics/API server (service.http_port) "
        "\\[env: MS07_HTTP_PORT or MS07_SERVICE__HTTP_PORT]"
    ),
    workers: int = typer.Option(
        1, "--workers",
        help="Engine processes under one supervisor, sharing the HTTP port (1: no supervisor; "
        "in Kubernetes keep 1 and scale the pods)"
    ),
    log_format: str = typer.Option(
        None, "--log-format", help="auto (console at a terminal, else json), json or console \\[env: MS07_LOG_FORMAT]"
    ),
    apply_config: bool = typer.Option(
        False, "--apply-config",
        help="Apply the config's destinations: list to the database at start (service.apply_config); "
        "without it the database's destinations win \\[env: MS07_SERVICE__APPLY_CONFIG]"
    ),
) -> None:
    """Run the delivery engine until SIGTERM/SIGINT (uses the embedded servers when no URLs are set)."""
    import dataclasses

    from ms07.config import validate
    from ms07.engine.daemon import run_engine

    st = common.state(ctx)
    if config:
        st.config = config
    settings = st.settings
    service = settings.service
    if concurrency is not None:  # 0 too: validate() refuses it rather than ignoring it
        service = dataclasses.replace(service, concurrency=concurrency)
    if http_port is not None:
        service = dataclasses.replace(service, http_port=http_port)
    if apply_config:
        service = dataclasses.replace(service, apply_config=True)
    settings = dataclasses.replace(settings, service=service)
    if log_format:
        settings = dataclasses.replace(settings, log_format=log_format)
    validate(settings, "command line")
    if not 1 <= workers <= 256:
        from ms07.errors import UsageError

        raise UsageError(f"--workers must be between 1 and 256, got {workers}")
    raise typer.Exit(run_engine(settings, workers))
