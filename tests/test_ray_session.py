"""The local Ray of a search runs its trials' workers at the driver's CPU priority (search/ray_session.py)."""

from __future__ import annotations

import os

from search.ray_session import ray_session


def test_local_workers_run_at_the_drivers_priority() -> None:
    import ray

    @ray.remote(num_cpus=1)
    def niceness() -> int:
        return os.nice(0)

    with ray_session(None, num_cpus=1):
        # Ray's default is 15: a trial then got less CPU than the same training in the driver
        assert ray.get(niceness.remote()) == os.nice(0)
