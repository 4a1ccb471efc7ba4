"""Pure KPI math and the in-memory rollups that make a query cheap (no I/O).

`Rollup` keeps one counter vector (`projection.COUNTERS`) per cell
(local day, district, community, grid, category, channel, level) and *views*: the same
counters summed over fewer dimensions. A case's change is applied as "subtract its old
contribution, add the new one" to every view, so a query sums view rows instead of scanning
cases.

Two things keep a query over a million cases cheap:

- **Packed counters.** Inside the rollups a counter vector is one Python int holding every
  counter in its own 32-bit field (`pack`/`unpack`): adding two vectors is one int addition,
  and an int is no work for the garbage collector. Sums stay exact as long as no counter of
  a row exceeds 2**31 (two billion cases); a field that goes negative still decodes right.
- **Aligned day blocks.** Each view keeps its rows per block of 4**k days (1, 4, 16, 64 and
  256 days, aligned on the day's ordinal), so a window of whole days is the sum of a few
  blocks of each size (for windows up to 400 days: 12 tables on average, 20 at most)
  instead of every day or month in it. A change touches one block per size.

KPI rows follow DESIGN §6 and issue 7: small-count suppression (k = 5) nulls every count and
rate of a row; totals are never suppressed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
# block sizes (2**level days) of the views; the full cells (about one row per case and day)
# keep fewer sizes, so they do not take several times their memory
VIEW_LEVELS = (0, 2, 4, 6, 8)
CELL_LEVELS = (0, 4, 8)

# ---- packed counter vectors ------------------------------------------------------------------

SHIFT = 32
MASK = (1 << SHIFT) - 1
_VEC = struct.Struct(f"<{N}I")
_WIDTH = N * SHIFT // 8
_HIGH = sum(1 << (SHIFT * i + SHIFT - 1) for i in range(N))  # the top bit of every field


def pack(counts: Sequence[int]) -> int:
    """One int for a vector of N counters (each 0 ≤ c < 2**32); sums of packs pack sums."""
    try:
        return int.from_bytes(_VEC.pack(*counts), "little")
    except struct.error:  # a negative (or huge) counter: pack it field by field
        return sum(int(c) << (SHIFT * i) for i, c in enumerate(counts))


def unpack(v: int) -> tuple[int, ...]:
    """The counters of a packed vector (a counter that went negative comes back negative)."""
    if v >= 0 and not v & _HIGH and v.bit_length() <= SHIFT * N:
        return _VEC.unpack(v.to_bytes(_WIDTH, "little"))
    out = []
    for _ in range(N):  # signed 32-bit fields, each borrowing from the next
        f = v & MASK
        if f >> (SHIFT - 1):
            f -= 1 << SHIFT
        out.append(f)
        v = (v - f) >> SHIFT
    return tuple(out)


def received_of(v: int) -> int:
    """The `received` counter of a packed vector (the first field)."""
    f = v & MASK
    return f - (1 << SHIFT) if f >> (SHIFT - 1) else f


# vectors of single cases repeat a lot: share one int object for each
_SINGLES: dict[int, int] = {}


def _shared(v: int) -> int:
    """The shared int for a single case's vector (call it when `v & MASK == 1`)."""
    if len(_SINGLES) < 100_000:
        return _SINGLES.setdefault(v, v)
    return v


# ---- rows -----------------------------------------------------------------------------------


def ratio(num: int, den: int) -> float | None:
    return None if not den else num / den


_NC = len(COUNT_FIELDS)
_RATES = ("response_rate", "resolution_rate", "satisfaction_rate", "in_grid_rate", "in_community_rate", "on_time_rate")
_ROW_KEYS = ("key", *COUNT_FIELDS, *_RATES, "score", "suppressed")
_SUPPRESSED = (None,) * (_NC + len(_RATES) + 1) + (True,)
_W_RESPONSE, _W_RESOLUTION, _W_SATISFACTION = (WEIGHTS[k] for k in _RATES[:3])


def kpi_row(key: dict[str, Any], counts: Sequence[int], *, suppress: bool = True) -> dict[str, Any]:
    """One row of the reply from its counter vector (KPI counts first)."""
    c = tuple(counts[:_NC])
    (received, assigned, responded_on_time, resolved, resolved_on_time, resolved_in_grid,
     resolved_in_community, _escalated, feedback, satisfied, _open, _overdue) = c
    if suppress and received < K_MIN:
        return dict(zip(_ROW_KEYS, (key, *_SUPPRESSED), strict=True))
    response = responded_on_time / assigned if assigned else None
    resolution = resolved / received if received else None
    satisfaction = satisfied / feedback if feedback else None
    if resolved:
        in_grid, in_community, on_time = resolved_in_grid / resolved, resolved_in_community / resolved, resolved_on_time / resolved
    else:
        in_grid = in_community = on_time = None
    score = (
        None
        if response is None or resolution is None or satisfaction is None
        else _W_RESPONSE * response + _W_RESOLUTION * resolution + _W_SATISFACTION * satisfaction
    )
    return dict(zip(_ROW_KEYS, (key, *c, response, resolution, satisfaction, in_grid, in_community, on_time, score, False), strict=True))


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


# ---- day ordinals ----------------------------------------------------------------------------

_ORDINALS: dict[str, int] = {}
_DAYS: dict[int, str] = {}


def ordinal(day: str) -> int:
    o = _ORDINALS.get(day)
    if o is None:
        o = _ORDINALS[day] = date.fromisoformat(day).toordinal()
        _DAYS[o] = day
    return o


def day_of(o: int) -> str:
    d = _DAYS.get(o)
    if d is None:
        d = date.fromordinal(o).isoformat()
        _ORDINALS[d], _DAYS[o] = o, d
    return d


def blocks(lo: int, hi: int, levels: Sequence[int]) -> list[tuple[int, int]]:
    """Cover the day ordinals `[lo, hi)` with aligned blocks `(level, lo >> level)` of the
    given levels (ascending, starting at 0): the largest block that fits, left to right."""
    out = []
    top = levels[::-1]
    while lo < hi:
        for lv in top:
            size = 1 << lv
            if not lo & (size - 1) and lo + size <= hi:
                break
        out.append((lv, lo >> lv))
        lo += size
    return out


# ---- the rollups -------------------------------------------------------------------------

Table = dict[tuple[Any, ...], int]  # view key → packed counters


class View:
    """Counters summed over `dims` (a subset of DIMS), per aligned block of days."""

    def __init__(self, dims: tuple[str, ...], levels: Sequence[int] = VIEW_LEVELS) -> None:
        self.dims = dims
        self.pos = tuple(DIM_POS[d] for d in dims)
        self.full = self.pos == tuple(range(len(DIMS)))
        self.levels = tuple(sorted(set(levels) | {0}))
        # level → block number → rows
        self.blocks: dict[int, dict[int, Table]] = {lv: {} for lv in self.levels}
        self._keys: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # one tuple object per key

    def key(self, dims: tuple[Any, ...]) -> tuple[Any, ...]:
        k = dims if self.full else tuple([dims[p] for p in self.pos])
        return self._keys.setdefault(k, k)

    def add(self, o: int, dims: tuple[Any, ...], packed: int) -> None:
        """Add a (signed) packed delta to the row of `dims` on day ordinal `o`."""
        key = self.key(dims)
        for lv, table in self.blocks.items():
            b = o >> lv
            rows = table.get(b)
            if rows is None:
                rows = table[b] = {}
            v = rows.get(key, 0) + packed
            if v & MASK == 1:
                v = _shared(v)
            if v:
                rows[key] = v
            else:
                del rows[key]
                if not rows:
                    del table[b]

    def build_from(self, source: View) -> None:
        """Fill an empty view from a finer one's day rows, then every level from the one below."""
        mine = self.blocks[0]
        idx = [source.dims.index(d) for d in self.dims]
        keys = self._keys
        for o, rows in source.blocks[0].items():
            out = mine.get(o)
            if out is None:
                out = mine[o] = {}
            get = out.get
            for sk, v in rows.items():
                k = tuple([sk[i] for i in idx])
                k = keys.setdefault(k, k)
                out[k] = get(k, 0) + v
        for rows in mine.values():
            for k, v in rows.items():
                if v & MASK == 1:
                    rows[k] = _shared(v)
        self.build_levels()

    def build_levels(self) -> None:
        prev = 0
        for lv in self.levels[1:]:
            shift = lv - prev
            table: dict[int, Table] = {}
            for b, rows in self.blocks[prev].items():
                out = table.get(b >> shift)
                if out is None:
                    table[b >> shift] = dict(rows)
                    continue
                get = out.get
                for k, v in rows.items():
                    out[k] = get(k, 0) + v
            self.blocks[lv] = table
            prev = lv

    def sum_blocks(self, lo: int, hi: int) -> Table:
        """The rows of the day ordinals `[lo, hi)`, summed per view key."""
        acc: Table | None = None
        for lv, b in blocks(lo, hi, self.levels):
            rows = self.blocks[lv].get(b)
            if not rows:
                continue
            if acc is None:
                acc = dict(rows)
                continue
            get = acc.get
            for k, v in rows.items():
                acc[k] = get(k, 0) + v
        return acc or {}


class Cells(Mapping[tuple[str, tuple[Any, ...]], list[int]]):
    """The full cells `(day, dims) → counters`, read from the full view's day rows."""

    def __init__(self, view: View) -> None:
        self.days = view.blocks[0]

    def __getitem__(self, key: tuple[str, tuple[Any, ...]]) -> list[int]:
        day, dims = key
        rows = self.days.get(ordinal(day))
        if rows is None:
            raise KeyError(key)
        return list(unpack(rows[tuple(dims)]))

    def __iter__(self) -> Iterator[tuple[str, tuple[Any, ...]]]:
        for o, rows in list(self.days.items()):
            day = day_of(o)
            for dims in list(rows):
                yield day, dims

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.days.values())


class Rollup:
    def __init__(self, views: Iterable[tuple[str, ...]] = DEFAULT_VIEWS) -> None:
        views = [tuple(v) for v in views]
        if DIMS not in views:
            views.append(DIMS)
        self.views = sorted(
            (View(v, CELL_LEVELS if v == DIMS else VIEW_LEVELS) for v in views), key=lambda v: len(v.dims)
        )
        self.full = self.views[-1]
        self.cells = Cells(self.full)
        # open / overdue by (level, community): the Prometheus gauges
        self.backlog: dict[tuple[Any, Any], list[int]] = {}
        self.generation = 0  # bumps on every change (cache key for readers)
        self._dims: dict[tuple[Any, ...], tuple[Any, ...]] = {}

    def dims_key(self, dims: Sequence[Any]) -> tuple[Any, ...]:
        """The shared tuple for a cell's dimensions."""
        t = tuple(dims)
        return self._dims.setdefault(t, t)

    def apply(self, day: str, dims: Sequence[Any], delta: Sequence[int], sign: int = 1) -> None:
        dims = self.dims_key(dims)
        packed = pack(delta)
        if sign < 0:
            packed = -packed
        o = ordinal(day)
        for view in self.views:
            view.add(o, dims, packed)
        b = self.backlog.setdefault((dims[5], dims[1]), [0, 0])
        b[0] += sign * delta[IDX["open"]]
        b[1] += sign * delta[IDX["overdue"]]
        self.generation += 1

    def move(self, old: Any, new: Any) -> None:
        """Replace a case's old contribution (or None) by its new one (or None)."""
        if old == new:
            return
        if old is not None:
            self.apply(old[0], old[1], old[2], -1)
        if new is not None:
            self.apply(new[0], new[1], new[2], 1)

    def load_cell(self, day: str, dims: Sequence[Any], counts: Sequence[int]) -> None:
        self.apply(day, dims, counts, 1)

    def load_cells(self, cells: Iterable[tuple[str, Sequence[Any], Sequence[int] | int]]) -> int:
        """Fill an empty rollup from stored cells `(day, dims, counters or packed)` in one go:
        the cells first, then each view from the smallest view already built that holds its
        dimensions (much cheaper than applying cell by cell). Returns how many cells."""
        if self.generation or any(self.full.blocks[0].values()):
            n = 0
            for day, dims, counts in cells:
                self.apply(day, dims, unpack(counts) if isinstance(counts, int) else counts)
                n += 1
            return n
        days = self.full.blocks[0]
        n = 0
        for day, dims, counts in cells:
            v = counts if isinstance(counts, int) else pack(counts)
            if not v:
                continue
            key = self.dims_key(dims)
            rows = days.get(ordinal(day))
            if rows is None:
                rows = days[ordinal(day)] = {}
            v += rows.get(key, 0)
            if v & MASK == 1:
                v = _shared(v)
            if v:
                rows[key] = v
            else:
                del rows[key]
            n += 1
        for o in [o for o, rows in days.items() if not rows]:
            del days[o]
        self.full._keys = dict(self._dims)
        self.full.build_levels()
        built = [self.full]
        for view in sorted(self.views[:-1], key=lambda v: -len(v.dims)):
            source = min((b for b in built if set(view.dims) <= set(b.dims)), key=lambda b: len(b._keys))
            view.build_from(source)
            built.append(view)
        o_open, o_over = IDX["open"], IDX["overdue"]
        for rows in days.values():
            for dims, v in rows.items():
                c = unpack(v)
                b = self.backlog.setdefault((dims[5], dims[1]), [0, 0])
                b[0] += c[o_open]
                b[1] += c[o_over]
        self.generation += 1
        return n

    def view_for(self, needed: set[str]) -> View:
        for view in self.views:
            if needed <= set(view.dims):
                return view
        raise AssertionError("the full view holds every dimension")

    def window_sums(
        self,
        first: str | None,
        last: str | None,
        scope: dict[str, Any],
        group_by: Sequence[str],
        out: dict[tuple[Any, ...], int],
    ) -> None:
        """Add the whole local days `[first, last)` into `out` (packed counters), keyed by
        `group_by` values."""
        if first is None or last is None:
            return
        scope = {k: v for k, v in scope.items() if v is not None}
        gb = [g for g in group_by if g != "day"]
        view = self.view_for(set(gb) | set(scope))
        vpos = {d: i for i, d in enumerate(view.dims)}
        filt = [(vpos[k], v) for k, v in scope.items()]
        gpos = [vpos[g] if g != "day" else -1 for g in group_by]
        lo, hi = ordinal(first), ordinal(last)
        get = out.get
        if "day" in group_by:
            days = view.blocks[0]
            ords = range(lo, hi) if hi - lo <= len(days) else sorted(o for o in days if lo <= o < hi)
            for o in ords:
                rows = days.get(o)
                if not rows:
                    continue
                day = day_of(o)
                for key, v in rows.items():
                    if filt and any(key[p] != want for p, want in filt):
                        continue
                    gk = tuple([day if p < 0 else key[p] for p in gpos])
                    out[gk] = get(gk, 0) + v
            return
        for key, v in view.sum_blocks(lo, hi).items():
            if filt and any(key[p] != want for p, want in filt):
                continue
            gk = tuple([key[p] for p in gpos])
            out[gk] = get(gk, 0) + v

    def sum_window(
        self,
        first: str | None,
        last: str | None,
        scope: dict[str, Any],
        group_by: Sequence[str],
        out: dict[tuple[Any, ...], list[int]],
    ) -> None:
        """Add the whole local days `[first, last)` into `out` (counter lists), keyed by
        `group_by` values."""
        packed: dict[tuple[Any, ...], int] = {}
        self.window_sums(first, last, scope, group_by, packed)
        for gk, v in packed.items():
            acc = out.get(gk)
            if acc is None:
                out[gk] = list(unpack(v))
            else:
                add_into(acc, unpack(v))


def add_partial(
    contribs: Iterable[Any], scope: dict[str, Any], group_by: Sequence[str], out: dict[tuple[Any, ...], int]
) -> None:
    """Add per-case contributions `(day, dims, counters or packed)` (from partial days) into
    `out` (packed counters)."""
    want = [(DIM_POS[k], v) for k, v in scope.items() if v is not None]
    gpos = [-1 if g == "day" else DIM_POS[g] for g in group_by]
    get = out.get
    for day, dims, counts in contribs:
        if want and any(dims[p] != v for p, v in want):
            continue
        gk = tuple([day if p < 0 else dims[p] for p in gpos])
        out[gk] = get(gk, 0) + (counts if isinstance(counts, int) else pack(counts))


def _sort_key(k: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple("" if x is None else str(x) for x in k)


def _sorted_keys(groups: Mapping[tuple[Any, ...], Any]) -> list[tuple[Any, ...]]:
    """Group keys in the order of their values as strings (None as "")."""
    try:
        return sorted(groups)  # all str (or None in the same places): the same order, faster
    except TypeError:
        return sorted(groups, key=_sort_key)


def build_reply(group_by: Sequence[str], groups: Mapping[tuple[Any, ...], Sequence[int] | int]) -> dict[str, Any]:
    """The reply: one row per group with cases received (sorted by key), and the totals."""
    total = 0
    rows = []
    for gk in _sorted_keys(groups):
        v = groups[gk]
        packed = v if isinstance(v, int) else pack(v)
        if received_of(packed) <= 0:
            continue
        total += packed
        rows.append(kpi_row(dict(zip(group_by, gk, strict=True)), unpack(packed)))
    return {"ok": True, "rows": rows, "totals": kpi_row({}, unpack(total), suppress=False)}


def utc(dt: datetime) -> datetime:
    return dt.astimezone(UTC)
