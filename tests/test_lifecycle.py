"""One daemon lifecycle (exporter/lifecycle.py): parts start in order and stop in reverse, also when a
later part fails to start or the body raises."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
import requests

from exporter import state
from exporter.config import load_config
from exporter.lifecycle import ONE_SHOT, SERVE, Daemon

from fakes import FakeTarget, write_config


def _config(tmp_path: Path, target: FakeTarget, port: int) -> str:
    return write_config(str(tmp_path / "fleet.yaml"), {"h100": [{"vllm": target.url, "name": "a"}]},
                        extra=f"listen: 127.0.0.1:{port}\nstate_dir: {tmp_path / 'state'}\ninterval: 5s")


def test_a_part_that_fails_to_start_stops_the_parts_before_it(tmp_path: Path) -> None:
    """The HTTP port is taken: starting fails, and the state_dir lock taken before it is released."""
    target = FakeTarget(['vllm:num_requests_running{model_name="m"} 1\n'])
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        cfg = load_config(_config(tmp_path, target, taken.getsockname()[1]))
        daemon = Daemon(cfg, SERVE)
        with pytest.raises(OSError):
            daemon.__enter__()
        assert daemon.scraper is not None and daemon.scraper.closed
        state.lock(str(tmp_path / "state"), "the next daemon").release()  # not StateLocked: it was let go
    finally:
        taken.close()
        target.close()


def test_leaving_the_block_stops_every_part_in_reverse_and_keeps_the_state(tmp_path: Path) -> None:
    target = FakeTarget(['vllm:num_requests_running{model_name="m"} 1\n'])
    try:
        cfg = load_config(_config(tmp_path, target, 0))
        with pytest.raises(RuntimeError), Daemon(cfg, SERVE) as daemon:
            assert daemon.server is not None
            url = f"http://127.0.0.1:{daemon.server.port}/healthz"
            assert requests.get(url, timeout=5).status_code == 200
            with pytest.raises(state.StateLocked):
                state.lock(str(tmp_path / "state"), "a second daemon")
            daemon.pipeline.cycle()
            raise RuntimeError("the body fails")
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=5)
        assert daemon.scraper is not None and daemon.scraper.closed
        assert list((tmp_path / "state").iterdir()), "the state was written at shutdown"
        state.lock(str(tmp_path / "state"), "the next daemon").release()
    finally:
        target.close()


def test_a_one_shot_daemon_serves_nothing_and_locks_nothing(tmp_path: Path) -> None:
    target = FakeTarget(['vllm:num_requests_running{model_name="m"} 1\n'])
    try:
        cfg = load_config(_config(tmp_path, target, 0))
        with Daemon(cfg, ONE_SHOT) as daemon:
            assert daemon.server is None and daemon.notifier is None
            state.lock(str(tmp_path / "state"), "serve, beside a check").release()
            report = daemon.pipeline.cycle()
        assert report.tiers["h100"].instances_up == 1
        assert daemon.scraper is not None and daemon.scraper.closed
    finally:
        target.close()
