"""The gunicorn hooks `rpm serve` installs."""

import gc

from app import gunicorn_conf


def test_a_worker_freezes_what_it_loaded_so_full_collections_skip_it():
    before = gc.get_freeze_count()
    try:
        gunicorn_conf.post_worker_init(None)
        assert gc.get_freeze_count() > before
        assert gc.get_count()[2] == 0  # collected first: the garbage of the start is not kept frozen
    finally:
        gc.unfreeze()
