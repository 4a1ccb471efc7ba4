// gridcase operations dashboard: plain JS, no external resources. Refreshes every few seconds.
"use strict";

const REFRESH_MS = 5000;
const PERIODS = { today: "今日 Today", week: "本周 This week", month: "本月 This month" };
const LEVELS = { building: "楼栋 building", grid: "网格 grid", community: "社区 community", street: "街道 street", unassigned: "未分派 unassigned" };
const REASONS = {
  respond_overdue: "响应超时 respond overdue", resolve_overdue: "办结超时 resolve overdue",
  requested: "申请上报 requested", mediation_failed: "调解失败 mediation failed",
  dispatch_unfilled: "无人接单 dispatch unfilled", dissatisfied: "回访不满意 dissatisfied",
};
const COLUMNS = [
  ["received", "受理 received", "n"], ["response_rate", "响应率 response", "r"],
  ["resolution_rate", "解决率 resolution", "r"], ["satisfaction_rate", "满意率 satisfaction", "r"],
  ["in_grid_rate", "不出网格 in grid", "r"], ["in_community_rate", "不出社区 in community", "r"],
  ["open", "在办 open", "n"], ["overdue", "超期 overdue", "n"], ["score", "得分 score", "r"],
];

let directory = { communities: {}, grids: {} };
// Times are shown in the city's time zone (the one the KPI days are cut in), whatever the
// browser's own: an operator or integrator elsewhere sees the same day and hour as the city.
let timeZone = "Asia/Shanghai";

function localTime(d, timeOnly = false) {
  const opts = { hour12: false, timeZone };
  return timeOnly ? d.toLocaleTimeString("zh-CN", opts) : d.toLocaleString("zh-CN", opts);
}
function tick() { document.getElementById("clock").textContent = localTime(new Date()) + " (" + timeZone + ")"; }

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function pct(v) { return v === null || v === undefined ? "—" : (Math.round(v * 1000) / 10).toFixed(1) + "%"; }
function num(v) { return v === null || v === undefined ? "—" : String(v); }
function fmt(v, kind) { return kind === "r" ? pct(v) : num(v); }
function rateClass(v) { return v === null || v === undefined ? "" : v >= 0.9 ? "good" : v >= 0.7 ? "warn" : "bad"; }
// a case nobody could place (no community, or no grid): triaged above the grids, not a unit of its own
function communityName(code) {
  if (code === null || code === undefined) return "未定位 unlocated";
  const n = directory.communities[code]; return n ? `${n} ${code}` : String(code);
}
function gridName(code) {
  if (code === null || code === undefined) return "网格外 not in a grid";
  const g = directory.grids[code]; return g ? `${g[0]} ${code}` : String(code);
}

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(url + " → " + r.status);
  return r.json();
}
function kpis(period, groupBy) {
  const q = new URLSearchParams({ from: period[0], to: period[1], group_by: groupBy });
  return getJSON("/api/kpis?" + q.toString());
}

function kpiTable(table, caption, rows, nameOf, dim) {
  table.replaceChildren();
  if (caption) table.append(el("caption", {}, caption));
  const head = el("tr");
  head.append(el("th", {}, dim === "grid" ? "网格 grid" : "社区 community"));
  for (const [, label] of COLUMNS) head.append(el("th", {}, label));
  table.append(head);
  for (const row of rows) {
    const tr = el("tr", { "data-key": String(row.key[dim]) });
    tr.append(el("td", {}, nameOf(row.key[dim])));
    for (const [field, , kind] of COLUMNS) {
      const td = el("td", { "data-field": field }, fmt(row[field], kind));
      if (row.suppressed) td.className = "suppressed";
      else if (kind === "r") td.className = rateClass(row[field]);
      tr.append(td);
    }
    table.append(tr);
  }
  if (!rows.length) {
    const tr = el("tr"); tr.append(el("td", { colspan: String(COLUMNS.length + 1) }, "暂无数据 no data")); table.append(tr);
  }
}

function renderSummary(totals) {
  const box = document.getElementById("summary");
  box.replaceChildren();
  const tiles = [
    ["received", "受理量 received", "n"], ["response_rate", "响应率 response rate", "r"],
    ["resolution_rate", "解决率 resolution rate", "r"], ["satisfaction_rate", "满意率 satisfaction rate", "r"],
    ["in_grid_rate", "小事不出网格 in-grid share", "r"], ["in_community_rate", "大事不出社区 in-community share", "r"],
  ];
  for (const [field, label, kind] of tiles) {
    const t = el("div", { class: "tile", "data-field": field });
    t.append(el("div", { class: "label" }, label));
    const v = el("div", { class: "value" }, fmt(totals[field], kind));
    if (kind === "r") v.classList.add(rateClass(totals[field]) || "x");
    t.append(v);
    box.append(t);
  }
}

function renderRanking(rows) {
  const ol = document.getElementById("ranking");
  ol.replaceChildren();
  const ranked = rows.filter(r => r.key.grid !== null && !r.suppressed && r.score !== null).sort((a, b) => b.score - a.score);
  for (const r of ranked) {
    const li = el("li", { "data-key": String(r.key.grid) });
    li.append(el("span", {}, gridName(r.key.grid)));
    li.append(el("span", { class: "score " + rateClass(r.score) }, (Math.round(r.score * 1000) / 10).toFixed(1)));
    ol.append(li);
  }
  if (!ranked.length) ol.append(el("li", {}, "暂无数据 no data (≥5 cases needed)"));
}

function renderBacklog(backlog) {
  const t = document.getElementById("backlog");
  t.replaceChildren();
  const head = el("tr");
  for (const h of ["层级 level", "在办 open", "超期 overdue"]) head.append(el("th", {}, h));
  t.append(head);
  for (const level of ["building", "grid", "community", "street", "unassigned"]) {
    const b = backlog[level]; if (!b) continue;
    const tr = el("tr", { "data-key": level });
    tr.append(el("td", {}, LEVELS[level]));
    tr.append(el("td", { "data-field": "open" }, String(b.open)));
    tr.append(el("td", { "data-field": "overdue", class: b.overdue ? "bad" : "" }, String(b.overdue)));
    t.append(tr);
  }
}

function renderEscalations(esc) {
  const t = document.getElementById("escalations");
  t.replaceChildren();
  const head = el("tr");
  for (const h of ["原因 reason", "次数 count"]) head.append(el("th", {}, h));
  t.append(head);
  for (const [reason, label] of Object.entries(REASONS)) {
    const tr = el("tr", { "data-key": reason });
    tr.append(el("td", {}, label));
    tr.append(el("td", { "data-field": "count" }, String(esc[reason] || 0)));
    t.append(tr);
  }
}

function renderRecent(events) {
  const t = document.getElementById("recent");
  t.replaceChildren();
  const head = el("tr");
  for (const h of ["时间 time", "事件 event", "案件 case", "类别 category", "社区 community", "网格 grid", "层级 level"]) head.append(el("th", {}, h));
  t.append(head);
  for (const e of events.slice(0, 25)) {
    const tr = el("tr");
    for (const v of [localTime(new Date(e.at)), e.type, e.case_id, e.category,
      e.community || "—", e.grid || "—", e.level ? LEVELS[e.level] : "—"]) tr.append(el("td", {}, v));
    t.append(tr);
  }
}

async function refresh() {
  const overview = await getJSON("/api/overview");
  directory = overview.directory;
  timeZone = overview.timezone;
  tick();
  const chosen = document.getElementById("period").value;
  const label = PERIODS[chosen];
  for (const id of ["grid-period-label", "rank-period-label", "esc-period-label"]) document.getElementById(id).textContent = label;

  const byCommunity = await Promise.all(Object.keys(PERIODS).map(p => kpis(overview.periods[p], "community")));
  const box = document.getElementById("community-tables");
  box.replaceChildren();
  Object.keys(PERIODS).forEach((p, i) => {
    const table = el("table", { class: "kpi", id: "community-" + p });
    kpiTable(table, PERIODS[p], byCommunity[i].rows, communityName, "community");
    box.append(table);
  });
  const idx = Object.keys(PERIODS).indexOf(chosen);
  renderSummary(byCommunity[idx].totals);

  const byGrid = await kpis(overview.periods[chosen], "grid");
  kpiTable(document.getElementById("grid-table"), "", byGrid.rows, gridName, "grid");
  renderRanking(byGrid.rows);
  renderBacklog(overview.backlog);
  renderEscalations(overview.escalations[chosen]);
  renderRecent((await getJSON("/api/recent")).events);
  document.getElementById("updated").textContent = localTime(new Date(), true);
  document.body.dataset.loaded = "1";
}

async function loop() {
  try { await refresh(); } catch (err) { document.getElementById("updated").textContent = "error: " + err.message; }
  setTimeout(loop, REFRESH_MS);
}
setInterval(tick, 1000);
document.getElementById("period").addEventListener("change", refresh);
loop();
