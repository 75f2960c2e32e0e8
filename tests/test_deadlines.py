"""Deadlines are config fields scaled with the data, and a stall names the rank that went quiet."""
from __future__ import annotations

import os
import time

import pytest

from distgnn.config import config_from_dict
from distgnn.errors import RayCallError
from launch.job import _fit_with_watchdog, deadlines


def manifest(users: int, items: int, interactions: int) -> dict:
    return {"num_nodes": {"user": users, "item": items}, "num_interactions": interactions}


def test_default_deadlines_grow_with_the_data_and_config_values_win():
    cfg = config_from_dict({"data": {"partitions": "p"}}, "t")
    small = deadlines(cfg, manifest(30_000, 40_000, 800_000), 2)
    assert small["barrier"] == 1800 and small["stall"] == 1800 and small["call"] == 300
    big = deadlines(cfg, manifest(3_333_334, 4_737_834, 76_452_359), 2)
    assert big["barrier"] > 3 * 1800 and big["stall"] == big["barrier"]  # every user ranked: slow
    cfg.eval.max_users = 10_000
    sampled = deadlines(cfg, manifest(3_333_334, 4_737_834, 76_452_359), 2)
    assert 1800 <= sampled["barrier"] < big["barrier"]
    cfg.runtime.barrier_timeout_s, cfg.runtime.stall_timeout_s, cfg.runtime.call_timeout_s = 50, 70, 9
    assert deadlines(cfg, manifest(3_333_334, 4_737_834, 76_452_359), 2) | {"estimated_validation_s": 0} == \
        {"call": 9, "barrier": 50, "stall": 70, "estimated_validation_s": 0}


def test_a_stall_names_the_rank_that_went_quiet_first(tmp_path):
    from distgnn.metrics import append, rank_path

    append(tmp_path, 1, {"type": "train", "epoch": 0, "step": 40, "rank": 1})
    old = time.time() - 100
    os.utime(rank_path(tmp_path, 1), (old, old))

    class Fit:  # rank 0 keeps writing for a moment, then everything stops
        def fit(self):
            append(tmp_path, 0, {"type": "train", "epoch": 0, "step": 50, "rank": 0})
            time.sleep(30)

    with pytest.raises(RayCallError) as err:
        _fit_with_watchdog(Fit(), tmp_path, epochs=1, stall_timeout_s=2)
    msg = str(err.value)
    assert "no progress for 2s" in msg and "rank 1 went quiet first" in msg
    assert "train record of epoch 0 step 40" in msg and "runtime.stall_timeout_s" in msg
