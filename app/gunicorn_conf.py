"""gunicorn settings used by `rpm serve`: Prometheus multiprocess bookkeeping."""


def child_exit(server, worker):  # noqa: ARG001  (gunicorn's hook signature)
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):  # noqa: ARG001  (gunicorn's hook signature)
    """Once the worker has loaded the app: move every object alive now (modules, the app, the
    pools) out of the cyclic collector's reach, so its full collections, which otherwise walk all of
    them with the GIL held (75-100 ms here, every request of the process and the portfolio lock it
    may hold waiting meanwhile), only walk what was created since."""
    import gc

    gc.collect()
    gc.freeze()
