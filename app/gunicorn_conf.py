"""gunicorn settings used by `rpm serve`: the worker, JSON logs, no control socket, Prometheus multiprocess
bookkeeping."""

import logging
import os

# gthread, with the errors gunicorn answers itself (414, 400, 431, ...) in RPM's JSON shape (SPEC §5)
worker_class = "app.gunicorn_worker.JsonErrorThreadWorker"


def _json_logger() -> type:
    """gunicorn's logger (its ``logger_class``: a callable that returns the class), with gunicorn's own lines
    ("Booting worker", "Listening at", a worker's timeout...) as JSON lines, RPM's shape. Everything else is
    gunicorn's: the level (--log-level), where they go (--error-logfile, stderr by default), the reopening of
    files on USR1, the setup again on HUP. gunicorn's access log stays off (no --access-logfile: RPM writes
    its own access lines, app/observability.py); given one, its lines would be JSON too (the request line as
    ``event``). A syslog handler keeps gunicorn's format. (gunicorn's ``logconfig_dict`` would turn its
    access log on, its lines built for every request, to be thrown away.)"""
    from gunicorn.glogging import Logger

    from app.logformat import JsonFormatter

    class JsonLogger(Logger):
        def setup(self, cfg):
            super().setup(cfg)
            for log in (self.error_log, self.access_log):
                for handler in log.handlers:
                    if isinstance(handler, logging.StreamHandler):  # (a FileHandler is one too)
                        handler.setFormatter(JsonFormatter())  # (app/logformat.py imports nothing of RPM's)

    return JsonLogger


logger_class = _json_logger

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
# what `rpm serve` prints once the port is bound (where it listens, the database, how to make a key)
BANNER = "RPM_BANNER"


def when_ready(server):
    """Listening, no worker yet: `rpm serve`'s banner printed (only now: it says where RPM listens), and the workers
    given a fresh folder for their shared counters (prometheus-client multiprocess mode) unless one is given. Made
    here, not before gunicorn starts, so that a start that fails (the port taken) leaves no folder behind."""
    banner = os.environ.pop(BANNER, None)  # (the workers, forked next, have no use for it)
    if banner:
        print(banner, flush=True)
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
    """Once the worker has loaded the app: its background threads started (checkpoints; webhooks, delivered by one
    process of the deployment at a time), the event streams told to end when the worker is told to stop, and
    every object alive now (modules, the app, the pools) moved out of the cyclic collector's reach, so its full
    collections, which otherwise walk all of them with the GIL held (75-100 ms here, every request of the process
    and the portfolio lock it may hold waiting meanwhile), only walk what was created since."""
    import gc

    worker.wsgi.extensions["rpm_anchor"].start()
    if worker.wsgi.config["RPM_SETTINGS"].webhooks_deliver:
        worker.wsgi.extensions["rpm_deliverer"].start()
    _end_streams_on_stop()
    gc.collect()
    gc.freeze()


def _end_streams_on_stop() -> None:
    """A stream (GET /events) holds its thread until it ends: on the signals that stop a worker (TERM: gracefully;
    INT, QUIT: at once), the streams end first, so that a graceful stop does not wait out its timeout for them
    (clients reconnect elsewhere with their Last-Event-ID). gunicorn's own handlers still run."""
    import signal

    from app.api.events import CLOSING

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        previous = signal.getsignal(signum)

        def handler(number, frame, previous=previous):
            CLOSING.set()
            if callable(previous):
                previous(number, frame)

        signal.signal(signum, handler)
