"""Fixtures of the service benchmarks: child processes (the harness server, client processes)."""
import pytest

from harness import Spawner


@pytest.fixture()
def spawn(tmp_path):
    """spawn(module, function, *args) starts a child process; spawn.server(**options) the harness server."""
    spawner = Spawner(tmp_path)
    yield spawner
    spawner.close()
