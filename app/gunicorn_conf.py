"""gunicorn settings used by `rpm serve`: the worker, no control socket, Prometheus multiprocess bookkeeping."""

import os

# gthread, with the errors gunicorn answers itself (414, 400, 431, ...) in RPM's JSON shape (SPEC §5)
worker_class = "app.gunicorn_worker.JsonErrorThreadWorker"

# No control socket. gunicorn's default path is one per user ($XDG_RUNTIME_DIR/gunicorn.ctl or
# ~/.gunicorn/gunicorn.ctl), so every instance shares it: each start takes it over, each stop deletes it
# under the others. RPM has no use for it: an instance is stopped, reloaded or resized by signals to its
# own master's pid (TERM, HUP, TTIN/TTOU); the socket's commands (reload, add or kill workers) would be
# one more way to change a running risk gate outside its authenticated API; and gunicorn stops and
# restarts the socket's thread around every fork of a worker. A socket per instance would need a name
# unique among the instances sharing an instance folder, and a fallback for paths too long for a socket.
control_socket_disable = True

# the data folder of the embedded PostgreSQL that `rpm serve` started for this instance: stopped at exit
EMBEDDED_DATA = "RPM_EMBEDDED_DATA"
PROMETHEUS_DIR = "PROMETHEUS_MULTIPROC_DIR"
# the folder this instance created for the counters, and so removes when it stops
CREATED_PROMETHEUS_DIR = "RPM_CREATED_PROMETHEUS_DIR"


def when_ready(server):
    """Listening, no worker yet: give the workers a fresh folder for their shared counters
    (prometheus-client multiprocess mode) unless one is given. Made here, not before gunicorn starts,
    so that a start that fails (the port taken) leaves no folder behind."""
    if server.master_pid:
        return  # a master re-executed by USR2: the old master's folder, and its mark, came in its environment
    if os.environ.get(PROMETHEUS_DIR):
        os.environ.pop(CREATED_PROMETHEUS_DIR, None)  # the user's folder, or another RPM's it inherited: kept
        return
    import tempfile

    os.environ[PROMETHEUS_DIR] = os.environ[CREATED_PROMETHEUS_DIR] = tempfile.mkdtemp(prefix="rpm-prometheus-")


def on_exit(server):
    """Remove the counters' folder this instance created (never one it was given), and stop the embedded
    PostgreSQL it started. With a USR2 re-exec under way, old and new masters share both: the one that
    stays keeps them."""
    if server.reexec_pid or server.master_pid:
        return
    folder = os.environ.get(CREATED_PROMETHEUS_DIR)
    if folder:
        import shutil

        try:
            shutil.rmtree(folder)
        except OSError as exc:
            server.log.warning("could not remove %s: %s", folder, exc)
    data = os.environ.get(EMBEDDED_DATA)
    if data:
        from app.store.embedded import EmbeddedPostgres

        try:
            EmbeddedPostgres(data).stop()
        except (OSError, RuntimeError) as exc:
            server.log.warning("could not stop the embedded PostgreSQL of %s: %s", data, exc)


def child_exit(server, worker):  # noqa: ARG001  (gunicorn's hook signature)
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    """Once the worker has loaded the app: move every object alive now (modules, the app, the
    pools) out of the cyclic collector's reach, so its full collections, which otherwise walk all of
    them with the GIL held (75-100 ms here, every request of the process and the portfolio lock it
    may hold waiting meanwhile), only walk what was created since."""
    import gc

    worker.wsgi.extensions["rpm_anchor"].start()  # checkpoints in the background (one process at a time)
    if worker.wsgi.config["RPM_SETTINGS"].webhooks_deliver:  # webhooks (one process of the deployment at a time)
        worker.wsgi.extensions["rpm_deliverer"].start()
    gc.collect()
    gc.freeze()
