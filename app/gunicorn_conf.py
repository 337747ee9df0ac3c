"""gunicorn settings used by `rpm serve`: Prometheus multiprocess bookkeeping."""


def child_exit(server, worker):  # noqa: ARG001  (gunicorn's hook signature)
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
