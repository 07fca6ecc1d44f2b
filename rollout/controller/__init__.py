"""`rollout controller`: one process carries every rollout it is responsible for, from
one timer queue, so a rollout goes on after the CLI that started it has gone. ``local``
holds the timer queue, its /metrics and /healthz, and the state-home controller with its
lock-file leadership; ``kubernetes`` runs the same queue for a namespace, led by a Lease."""

from rollout.controller.local import (
    Controller,
    leader,
    metrics_registry,
    run_local_controller,
    serve_http,
    start_daemon,
    stop_daemon,
)

__all__ = ["Controller", "leader", "metrics_registry", "run_local_controller", "serve_http", "start_daemon",
           "stop_daemon"]
