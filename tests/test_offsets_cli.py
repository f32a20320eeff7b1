"""`worker offsets show | reset` (docs/contract.md §1) against a real broker and PostgreSQL.

Every test starts from the same layout: records in two waves a second apart around a moment
MARK, each wave in one producer batch per partition (the embedded broker's ListOffsets then
under-reports the log end, which the tool must see through), and a few stored offsets:

    partition   proctoring: before / after MARK, stored   interview: before / after, stored
    0           3 / 3, 4                                  1 / 1, -
    1           3 / 0, 3                                  0 / 0, -
    2           0 / 0, -                                  2 / 3, 1
    3           0 / 1, -                                  0 / 0, -

The records carry the producer's clock: the embedded broker answers offsets-by-timestamp by
the time it appended a record, not by the record's own timestamp, so a test cannot stamp
records in the past and look them up.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from dataclasses import dataclass

import asyncpg
import pytest
from aiokafka import TopicPartition
from support.e2e import settings_for
from support.infra import Topics
from support.offsets import CliResult, offset_rows, produce_to, run_offsets_cli

from worker import offsets
from worker.config import Settings
from worker.migrate import migrate_url

pytestmark = pytest.mark.integration

WAVES = {
    "proctoring": {0: (3, 3), 1: (3, 0), 2: (0, 0), 3: (0, 1)},
    "interview": {0: (1, 1), 1: (0, 0), 2: (2, 3), 3: (0, 0)},
}
RECORDS = {role: {p: a + b for p, (a, b) in waves.items()} for role, waves in WAVES.items()}
STORED = {("proctoring", 0): 4, ("proctoring", 1): 3, ("interview", 2): 1}
PARTITIONS = [(t, p) for t in ("proctoring", "interview") for p in range(4)]
# Between a wave's acknowledgement and MARK, and between MARK and the next wave: clock
# resolution and the broker's append delay stay well inside it.
MARGIN_S = 0.6

Offsets = dict[tuple[str, int], int | None]  # (topic role, partition) -> stored next offset


@dataclass(frozen=True)
class Layout:
    settings: Settings
    mark: dt.datetime


def _topic(topics: Topics, role: str) -> str:
    return topics.proctoring if role == "proctoring" else topics.interview


async def _stored(settings: Settings, topics: Topics) -> Offsets:
    rows = await offset_rows(settings.database_url, settings.group_id)
    by_name = {topics.proctoring: "proctoring", topics.interview: "interview"}
    found: Offsets = {(by_name[t], p): row["next_offset"] for (t, p), row in rows.items()}
    return {key: found.get(key) for key in PARTITIONS}


async def _wave(kafka_bootstrap: str, topics: Topics, wave: int) -> None:
    for role, waves in WAVES.items():
        counts = {p: n[wave] for p, n in waves.items() if n[wave]}
        await produce_to(
            kafka_bootstrap,
            _topic(topics, role),
            {p: [(None, b"%d-%d" % (wave, i), None) for i in range(n)] for p, n in counts.items()},
        )


@pytest.fixture
async def layout(kafka_bootstrap: str, database_url: str, topics: Topics) -> Layout:
    settings = settings_for(kafka_bootstrap, database_url, topics)
    await _wave(kafka_bootstrap, topics, 0)
    await asyncio.sleep(MARGIN_S)
    mark = dt.datetime.now(dt.UTC)
    await asyncio.sleep(MARGIN_S)
    await _wave(kafka_bootstrap, topics, 1)
    await migrate_url(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        moves = {
            TopicPartition(_topic(topics, role), p): (None, n) for (role, p), n in STORED.items()
        }
        assert await offsets.advance(conn, topics.group_id, moves) == set(moves)
    finally:
        await conn.close()
    return Layout(settings, mark)


# -- show -------------------------------------------------------------------------------------


async def test_show_prints_stored_offset_log_bounds_and_lag(layout: Layout, topics: Topics) -> None:
    as_json = await run_offsets_cli(layout.settings, "show", "--json")
    assert as_json.code == 0, as_json
    shown = {(r["topic"], r["partition"]): r for r in json.loads(as_json.out)}
    expected: dict[tuple[str, int], tuple[int | None, int, int, int]] = {}
    for role, p in PARTITIONS:
        end = RECORDS[role][p]
        stored = STORED.get((role, p))
        expected[(_topic(topics, role), p)] = (stored, 0, end, end - (stored or 0))
    assert {
        key: (r["stored_offset"], r["log_start"], r["log_end"], r["lag"])
        for key, r in shown.items()
    } == expected

    table = await run_offsets_cli(layout.settings, "show")
    assert table.code == 0, table
    lines = table.out.splitlines()
    assert lines[0].split()[:6] == ["TOPIC", "PARTITION", "STORED", "LOG-START", "LOG-END", "LAG"]
    rows = {(f[0], int(f[1])): tuple(f[2:6]) for f in (line.split() for line in lines[1:])}
    assert rows == {
        key: ("-" if s is None else str(s), str(a), str(b), str(lag))
        for key, (s, a, b, lag) in expected.items()
    }, table


# -- reset ------------------------------------------------------------------------------------

# (arguments, final stored offsets of the partitions the reset touches; others stay as they
# are). `{mark}` and `{mark_plus2}` are MARK in UTC and at +02:00, `{proctoring}` and
# `{interview}` the topics.
RESETS: dict[str, tuple[list[str], Offsets]] = {
    "earliest": (["--to-earliest"], {key: 0 for key in PARTITIONS}),
    "latest-one-topic": (
        ["--to-latest", "--topic", "{proctoring}"],
        {("proctoring", p): n for p, n in RECORDS["proctoring"].items()},
    ),
    "offset-one-partition": (
        ["--to-offset", "2", "--topic", "{interview}", "--partition", "2"],
        {("interview", 2): 2},
    ),
    "offset-past-end-is-clamped": (
        ["--to-offset", "99", "--topic", "{proctoring}", "--partition", "0", "--partition", "1"],
        {("proctoring", 0): 6, ("proctoring", 1): 3},
    ),
    "datetime-one-topic": (
        ["--to-datetime", "{mark}", "--topic", "{proctoring}"],
        {("proctoring", p): before for p, (before, _) in WAVES["proctoring"].items()},
    ),
    "datetime-with-an-offset": (
        ["--to-datetime", "{mark_plus2}"],
        {(role, p): before for role, waves in WAVES.items() for p, (before, _) in waves.items()},
    ),
    "datetime-past-log-end": (
        ["--to-datetime", "2100-01-01T00:00:00Z"],
        {(role, p): n for role, counts in RECORDS.items() for p, n in counts.items()},
    ),
    "datetime-before-log-start-one-partition-number": (
        ["--to-datetime", "2000-01-01 00:00:00", "--partition", "0"],
        {("proctoring", 0): 0, ("interview", 0): 0},
    ),
}


def _plan(result: CliResult, topics: Topics) -> dict[tuple[str, int], tuple[str, str]]:
    """The plan table's rows: (topic role, partition) -> (stored, new)."""
    lines = result.out.splitlines()
    assert lines and lines[0].split()[:4] == ["TOPIC", "PARTITION", "STORED", "NEW"], result
    by_name = {topics.proctoring: "proctoring", topics.interview: "interview"}
    plan = {}
    for line in lines[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[0] not in by_name:
            break  # the plan ends where the summary starts
        plan[(by_name[fields[0]], int(fields[1]))] = (fields[2], fields[3])
    return plan


def _shown(offset: int | None) -> str:
    return "-" if offset is None else str(offset)


@pytest.mark.parametrize("case", list(RESETS))
async def test_reset_plans_then_executes_exactly_the_plan(
    case: str, layout: Layout, topics: Topics
) -> None:
    template, targets = RESETS[case]
    names = {
        "proctoring": topics.proctoring,
        "interview": topics.interview,
        "mark": layout.mark.isoformat(),
        "mark_plus2": layout.mark.astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat(),
    }
    args = [a.format(**names) for a in template]
    settings = layout.settings
    before_rows = await offset_rows(settings.database_url, settings.group_id)
    before = await _stored(settings, topics)

    dry = await run_offsets_cli(settings, "reset", *args)
    assert dry.code == 0, dry
    assert _plan(dry, topics) == {
        key: (_shown(before[key]), str(new)) for key, new in targets.items()
    }, dry
    assert "dry run" in dry.out, dry
    assert await offset_rows(settings.database_url, settings.group_id) == before_rows, "dry run"

    done = await run_offsets_cli(settings, "reset", *args, "--execute")
    assert done.code == 0, done
    assert _plan(done, topics) == _plan(dry, topics), done
    after = await _stored(settings, topics)
    assert after == {**before, **targets}, done
    # One line per partition that changed, and only those rows were written.
    changed = {key for key, new in targets.items() if before[key] != new}
    moved = [line for line in done.out.splitlines() if line.startswith("reset ")]
    assert len(moved) == len(changed), done
    for role, p in changed:
        line = f"reset {_topic(topics, role)}[{p}]: {_shown(before[(role, p)])} -> "
        assert any(m.startswith(line) for m in moved), done
    after_rows = await offset_rows(settings.database_url, settings.group_id)
    by_name = {topics.proctoring: "proctoring", topics.interview: "interview"}
    rewritten = {
        (by_name[t], p) for (t, p), row in after_rows.items() if before_rows.get((t, p)) != row
    }
    assert rewritten == changed, done


# -- errors -----------------------------------------------------------------------------------

BAD_ARGUMENTS: list[list[str]] = [
    [],
    ["reset"],
    ["reset", "--to-earliest", "--to-latest"],
    ["reset", "--to-offset", "-1"],
    ["reset", "--to-offset", "ten"],
    ["reset", "--to-datetime", "yesterday"],
    ["reset", "--to-earliest", "--topic", "no-such-topic"],
    ["reset", "--to-earliest", "--partition", "-1"],
    ["reset", "--to-earliest", "--partition", "4"],
    ["reset", "--to-earliest", "--bogus"],
    ["show", "--bogus"],
]


@pytest.mark.parametrize("argv", BAD_ARGUMENTS, ids=lambda a: " ".join(a) or "nothing")
async def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], layout: Layout, topics: Topics
) -> None:
    settings = layout.settings
    before = await offset_rows(settings.database_url, settings.group_id)
    result = await run_offsets_cli(settings, *argv)
    assert result.code == 2, result
    assert result.out == "", result
    assert len(result.err.strip().splitlines()) == 1, result
    assert await offset_rows(settings.database_url, settings.group_id) == before


async def test_database_failure_exits_1_without_the_password(
    kafka_bootstrap: str, topics: Topics
) -> None:
    settings = settings_for(
        kafka_bootstrap, "postgresql://app:s3cr3t-pw@127.0.0.1:1/nowhere", topics
    )
    for argv in (["show"], ["reset", "--to-earliest", "--execute"]):
        result = await run_offsets_cli(settings, *argv)
        assert result.code == 1, result
        assert "s3cr3t-pw" not in result.out + result.err, result
        assert len(result.err.strip().splitlines()) == 1, result


async def test_bad_configuration_exits_2(layout: Layout) -> None:
    result = await run_offsets_cli(
        layout.settings, "show", extra_env={"DATABASE_URL": "mysql://x/y"}
    )
    assert result.code == 2, result
    assert len(result.err.strip().splitlines()) == 1, result
