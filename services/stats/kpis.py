"""Pure KPI math and the in-memory rollups that make a query cheap (no I/O).

`Rollup` keeps one counter vector (`projection.COUNTERS`) per cell
(local day, district, community, grid, category, channel, level) and *views*: the same
counters summed over fewer dimensions, per day and per month. A case's change is applied as
"subtract its old contribution, add the new one" to the cells and every view, so a query sums
a few hundred view rows instead of scanning cases.

KPI rows follow DESIGN §6 and issue 7: small-count suppression (k = 5) nulls every count and
rate of a row; totals are never suppressed.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from .projection import COUNT_FIELDS, COUNTERS, DIMS, IDX, N

K_MIN = 5
WEIGHTS = {"response_rate": 0.30, "resolution_rate": 0.35, "satisfaction_rate": 0.35}
DIM_POS = {d: i for i, d in enumerate(DIMS)}

# views kept besides the full cells: geography, with one or two more dimensions (a query
# reads the smallest view holding its group_by and scope dimensions)
DEFAULT_VIEWS: tuple[tuple[str, ...], ...] = (
    ("district",),
    ("district", "community"),
    ("district", "community", "level"),
    ("district", "community", "category"),
    ("district", "community", "channel"),
    ("district", "community", "category", "channel"),
    ("district", "community", "category", "level"),
    ("district", "community", "channel", "level"),
    ("district", "community", "grid"),
    ("district", "community", "grid", "level"),
    ("district", "community", "grid", "category"),
    ("district", "community", "grid", "channel"),
    DIMS,
)


def ratio(num: int, den: int) -> float | None:
    return None if not den else num / den


def kpi_row(key: dict[str, Any], counts: Sequence[int], *, suppress: bool = True) -> dict[str, Any]:
    """One row of the reply from its counter vector (KPI counts first)."""
    row: dict[str, Any] = {"key": key}
    c = dict(zip(COUNT_FIELDS, counts[: len(COUNT_FIELDS)], strict=True))
    rates = {
        "response_rate": ratio(c["responded_on_time"], c["assigned"]),
        "resolution_rate": ratio(c["resolved"], c["received"]),
        "satisfaction_rate": ratio(c["satisfied"], c["feedback"]),
        "in_grid_rate": ratio(c["resolved_in_grid"], c["resolved"]),
        "in_community_rate": ratio(c["resolved_in_community"], c["resolved"]),
        "on_time_rate": ratio(c["resolved_on_time"], c["resolved"]),
    }
    parts = [rates[k] for k in WEIGHTS]
    rates["score"] = (
        None if any(p is None for p in parts) else sum(WEIGHTS[k] * rates[k] for k in WEIGHTS)  # type: ignore[operator]
    )
    if suppress and c["received"] < K_MIN:
        row.update({k: None for k in c})
        row.update({k: None for k in rates})
        row["suppressed"] = True
        return row
    row.update(c)
    row.update(rates)
    row["suppressed"] = False
    return row


def escalations_by_reason(counts: Sequence[int]) -> dict[str, int]:
    return {name[4:]: counts[i] for i, name in enumerate(COUNTERS) if name.startswith("esc_")}


def add_into(target: list[int], delta: Sequence[int], sign: int = 1) -> None:
    for i in range(N):
        target[i] += sign * delta[i]


# ---- time window planning ----------------------------------------------------------------


def local_midnight(d: date, tz: tzinfo) -> datetime:
    return datetime.combine(d, time(0), tz)


def plan_window(start: datetime, end: datetime, tz: tzinfo) -> tuple[str | None, str | None, list[tuple[str, float, float]]]:
    """Split `[start, end)` into whole local days `[first, last)` (ISO dates, None if empty)
    and partial day fragments `(day, from_epoch, to_epoch)` that need per-case data."""
    ls, le = start.astimezone(tz), end.astimezone(tz)
    d0 = ls.date() if local_midnight(ls.date(), tz) == ls else ls.date() + timedelta(days=1)
    d1 = le.date()
    partial: list[tuple[str, float, float]] = []
    if d0 > d1:  # the whole window lies inside one local day
        return None, None, [(ls.date().isoformat(), start.timestamp(), end.timestamp())]
    if local_midnight(ls.date(), tz) != ls:
        partial.append((ls.date().isoformat(), start.timestamp(), local_midnight(d0, tz).timestamp()))
    if local_midnight(d1, tz) != le:
        partial.append((d1.isoformat(), local_midnight(d1, tz).timestamp(), end.timestamp()))
    if d0 >= d1:
        return None, None, partial
    return d0.isoformat(), d1.isoformat(), partial


# ---- the rollups -------------------------------------------------------------------------


class View:
    """Counters summed over `dims` (a subset of DIMS), per local day and per month."""

    def __init__(self, dims: tuple[str, ...]) -> None:
        self.dims = dims
        self.pos = tuple(DIM_POS[d] for d in dims)
        self.days: dict[str, dict[tuple[Any, ...], list[int]]] = {}
        self.months: dict[str, dict[tuple[Any, ...], list[int]]] = {}
        self.day_list: list[str] = []
        self.month_list: list[str] = []

    def add(self, day: str, dims: tuple[Any, ...], delta: Sequence[int], sign: int) -> None:
        key = tuple(dims[p] for p in self.pos)
        for bucket, table, order in ((day, self.days, self.day_list), (day[:7], self.months, self.month_list)):
            rows = table.get(bucket)
            if rows is None:
                rows = table[bucket] = {}
                bisect.insort(order, bucket)
            row = rows.get(key)
            if row is None:
                row = rows[key] = [0] * N
            add_into(row, delta, sign)


class Rollup:
    def __init__(self, views: Iterable[tuple[str, ...]] = DEFAULT_VIEWS) -> None:
        self.views = sorted((View(tuple(v)) for v in views), key=lambda v: len(v.dims))
        self.cells: dict[tuple[str, tuple[Any, ...]], list[int]] = {}
        # open / overdue by (level, community): the Prometheus gauges
        self.backlog: dict[tuple[Any, Any], list[int]] = {}
        self.generation = 0  # bumps on every change (cache key for readers)

    def apply(self, day: str, dims: tuple[Any, ...], delta: Sequence[int], sign: int = 1) -> None:
        cell = self.cells.get((day, dims))
        if cell is None:
            cell = self.cells[(day, dims)] = [0] * N
        add_into(cell, delta, sign)
        for view in self.views:
            view.add(day, dims, delta, sign)
        b = self.backlog.setdefault((dims[5], dims[1]), [0, 0])
        b[0] += sign * delta[IDX["open"]]
        b[1] += sign * delta[IDX["overdue"]]
        self.generation += 1

    def move(self, old: Any, new: Any) -> None:
        """Replace a case's old contribution (or None) by its new one (or None)."""
        if old == new:
            return
        if old is not None:
            self.apply(old[0], tuple(old[1]), old[2], -1)
        if new is not None:
            self.apply(new[0], tuple(new[1]), new[2], 1)

    def load_cell(self, day: str, dims: tuple[Any, ...], counts: Sequence[int]) -> None:
        self.apply(day, dims, counts, 1)

    def view_for(self, needed: set[str]) -> View:
        for view in self.views:
            if needed <= set(view.dims):
                return view
        raise AssertionError("the full view holds every dimension")

    def sum_window(
        self,
        first: str | None,
        last: str | None,
        scope: dict[str, Any],
        group_by: Sequence[str],
        out: dict[tuple[Any, ...], list[int]],
    ) -> None:
        """Add the whole local days `[first, last)` into `out`, keyed by `group_by` values."""
        if first is None or last is None:
            return
        scope = {k: v for k, v in scope.items() if v is not None}
        gb = [g for g in group_by if g != "day"]
        view = self.view_for(set(gb) | set(scope))
        vpos = {d: i for i, d in enumerate(view.dims)}
        filt = [(vpos[k], v) for k, v in scope.items()]
        by_day = "day" in group_by
        gpos = [vpos[g] if g != "day" else -1 for g in group_by]

        def take(rows: dict[tuple[Any, ...], list[int]], bucket: str) -> None:
            for key, counts in rows.items():
                if filt and any(key[p] != v for p, v in filt):
                    continue
                gk = tuple(bucket if p < 0 else key[p] for p in gpos)
                acc = out.get(gk)
                if acc is None:
                    out[gk] = list(counts)
                else:
                    for i in range(N):
                        acc[i] += counts[i]

        lo = bisect.bisect_left(view.day_list, first)
        hi = bisect.bisect_left(view.day_list, last)
        days = view.day_list[lo:hi]
        if by_day or not days:
            for d in days:
                take(view.days[d], d)
            return
        # whole months inside the window from the month table, the rest day by day
        for d in days:
            if not _month_inside(d[:7], first, last):
                take(view.days[d], d)
        mlo = bisect.bisect_left(view.month_list, first[:7])
        mhi = bisect.bisect_right(view.month_list, last[:7])
        for m in view.month_list[mlo:mhi]:
            if _month_inside(m, first, last):
                take(view.months[m], m)


def _month_inside(month: str, first: str, last: str) -> bool:
    """Is every day of `month` (YYYY-MM) inside `[first, last)`?"""
    y, m = int(month[:4]), int(month[5:7])
    start = date(y, m, 1)
    nxt = date(y + (m == 12), 1 if m == 12 else m + 1, 1)
    return start.isoformat() >= first and nxt.isoformat() <= last


def add_partial(
    contribs: Iterable[Any], scope: dict[str, Any], group_by: Sequence[str], out: dict[tuple[Any, ...], list[int]]
) -> None:
    """Add per-case contributions (from partial days) into `out`."""
    scope = {k: v for k, v in scope.items() if v is not None}
    for day, dims, counts in contribs:
        if any(dims[DIM_POS[k]] != v for k, v in scope.items()):
            continue
        gk = tuple(day if g == "day" else dims[DIM_POS[g]] for g in group_by)
        acc = out.setdefault(gk, [0] * N)
        add_into(acc, counts)


def build_reply(group_by: Sequence[str], groups: dict[tuple[Any, ...], list[int]]) -> dict[str, Any]:
    total = [0] * N
    rows = []
    for gk in sorted(groups, key=lambda k: tuple("" if x is None else str(x) for x in k)):
        counts = groups[gk]
        if counts[0] <= 0:
            continue
        add_into(total, counts)
        rows.append(kpi_row(dict(zip(group_by, gk, strict=True)), counts))
    return {"ok": True, "rows": rows, "totals": kpi_row({}, total, suppress=False)}


def utc(dt: datetime) -> datetime:
    return dt.astimezone(UTC)
