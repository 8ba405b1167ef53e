"""Every-second schedules fired by three real controller processes on PostgreSQL: one of them
is SIGKILLed and restarted midway, then all of them are down for 10 s. Each fire time makes
exactly one run, none is missing, and after the outage each catch-up policy does what it says.
"""

from __future__ import annotations

import os
import signal
import statistics
import time

import pytest
import sqlalchemy as sa

import tests.handlers  # noqa: F401 - registers the handlers the definitions name
from tests.conftest import wait_for

pytestmark = pytest.mark.slow
ECHO = {"name": "every-second", "tasks": [{"name": "A", "handler": "echo", "params": {"x": 1}}]}
GRACE_S = 3.0
OUTAGE_S = 10.0


def fires(kiln, schedule_id):
    return kiln.read(
        lambda c: c.execute(
            sa.text(
                "SELECT fire_time, fired_at, outcome, workflow_id FROM schedule_fires "
                "WHERE schedule_id = :s ORDER BY fire_time"
            ),
            {"s": schedule_id},
        ).all()
    )


def runs_per_schedule(kiln):
    return dict(
        kiln.read(
            lambda c: c.execute(
                sa.text("SELECT schedule_id, count(*) FROM workflows GROUP BY schedule_id")
            ).all()
        )
    )


def seconds(fs):
    return [round(f.fire_time.timestamp()) for f in fs]


def late(fs):
    return [f for f in fs if (f.fired_at - f.fire_time).total_seconds() > GRACE_S]


def test_three_controllers_fire_each_second_once_through_a_kill_and_an_outage(cluster, pg_kiln):
    cluster.worker(threads=4)
    controllers = [cluster.controller() for _ in range(3)]
    wait_for(
        lambda: len(pg_kiln.monitor.live_processes("controller", stale_after_s=5)) == 3,
        timeout=30,
        what="three controllers up",
    )
    ids = {
        policy: pg_kiln.schedules.create(
            {"name": f"every-second-{policy}", "cron": "* * * * * *", "workflow": ECHO,
             "overlap": "allow", "catch_up": policy, "grace_s": GRACE_S}
        )["id"]
        for policy in ("all", "latest", "none")
    }  # fmt: skip
    wait_for(lambda: len(fires(pg_kiln, ids["all"])) >= 3, timeout=30, what="the first fires")

    time.sleep(6)  # the controllers run for a while: this test is about what happens in time
    os.kill(controllers[0].pid, signal.SIGKILL)
    controllers[0].wait()
    time.sleep(5)
    controllers[0] = cluster.controller()
    time.sleep(8)

    before_outage = time.time()
    for proc in controllers:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(OUTAGE_S)
    back = time.time()
    controllers = [cluster.controller() for _ in range(3)]
    wait_for(
        lambda: any(f.fire_time.timestamp() > back + 3 for f in fires(pg_kiln, ids["none"])),
        timeout=60,
        what="fires after the outage",
    )
    time.sleep(5)
    for policy in ids:
        pg_kiln.schedules.pause(ids[policy])
    total_s = time.time() - before_outage + 19

    by_policy = {p: fires(pg_kiln, i) for p, i in ids.items()}
    runs = runs_per_schedule(pg_kiln)
    lateness = [(f.fired_at - f.fire_time).total_seconds() for f in by_policy["all"]
                if f.fired_at.timestamp() < before_outage]  # fmt: skip
    print(
        f"\n{len(by_policy['all'])} fire times over ~{total_s:.0f} s; lateness before the outage p50 "
        f"{statistics.median(lateness) * 1000:.0f} ms, max {max(lateness) * 1000:.0f} ms"
    )
    for policy, fs in by_policy.items():
        # exactly one run per fire time: every fire started one, and no run without a fire
        assert all(f.outcome == "started" and f.workflow_id for f in fs), policy
        assert len({f.workflow_id for f in fs}) == len(fs) == runs[ids[policy]], policy
        assert len(set(seconds(fs))) == len(fs), policy

    secs = seconds(by_policy["all"])
    assert secs == list(range(secs[0], secs[-1] + 1)), "catch_up=all lost a second"
    assert len(secs) >= 35
    in_outage = lambda fs: [s for s in seconds(fs) if before_outage + 1 < s < back - GRACE_S]  # noqa: E731
    assert len(in_outage(by_policy["all"])) >= OUTAGE_S - GRACE_S - 2
    assert len(late(by_policy["latest"])) == 1 and len(in_outage(by_policy["latest"])) <= 1
    assert late(by_policy["none"]) == [] and in_outage(by_policy["none"]) == []
    # before the outage (one controller killed and back), no policy missed a second
    for policy in ("latest", "none"):
        early = [s for s in seconds(by_policy[policy]) if s < before_outage - 1]
        assert early == list(range(early[0], early[-1] + 1)), policy
