"""The demo (`deposit-watcher devnet`) runs to completion against a real anvil and shows the callbacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from watcher.devnet.demo import run_demo


def test_devnet_demo_runs_to_completion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(rounds=2, data_dir=str(tmp_path)) == 0
    out = capsys.readouterr().out
    for currency in ("BTC", "ETH", "USDT", "USDC"):
        assert out.count(f"not_confirmed {currency}") == 2
        assert out.count(f"confirmed     {currency}") == 2
    assert "all signatures valid: True" in out
