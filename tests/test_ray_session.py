"""The local Ray of a search (search/ray_session.py) runs its trials' workers at the driver's CPU priority, and one
that fails to start leaves no temp folder."""

from __future__ import annotations

import os
import tempfile

import pytest

from search.ray_session import ray_session


def test_local_workers_run_at_the_drivers_priority() -> None:
    import ray

    @ray.remote(num_cpus=1)
    def niceness() -> int:
        return os.nice(0)

    with ray_session(None, num_cpus=1):
        # Ray's default is 15: a trial then got less CPU than the same training in the driver
        assert ray.get(niceness.remote()) == os.nice(0)


def test_a_local_ray_that_fails_to_start_leaves_no_temp_folder(tmp_path, monkeypatch, restored_environ) -> None:
    import ray

    def fail(**kwargs):
        assert kwargs["_temp_dir"].startswith(str(tmp_path))  # the folder the session made for this Ray
        raise RuntimeError("Ray could not start")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(ray, "init", fail)
    with pytest.raises(RuntimeError, match="could not start"), ray_session(num_cpus=1):
        pass
    assert list(tmp_path.iterdir()) == []


def test_an_address_that_accepts_nothing_is_refused_within_the_timeout():
    """A listener whose backlog is full never completes a connection (as an address behind a firewall
    that drops packets): the check gives up after its timeout, where Ray keeps dialling for minutes."""
    import socket
    import time

    from search.ray_session import check_address

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        check_address(f"127.0.0.1:{address[1]}", timeout=2)  # a listener answers: passes
        fillers = []
        try:
            while True:  # fill the backlog: the first connection that times out means it is full
                try:
                    fillers.append(socket.create_connection(address, timeout=0.5))
                except TimeoutError:
                    break
                assert len(fillers) < 256, "the backlog never filled"
            start = time.monotonic()
            with pytest.raises(ValueError, match=f"--ray-address 127.0.0.1:{address[1]}: no Ray cluster answers "
                                                 r"there \(timed out; waited up to 1s\)"):
                check_address(f"127.0.0.1:{address[1]}", timeout=1)
            assert time.monotonic() - start < 5
        finally:
            for filler in fillers:
                filler.close()
