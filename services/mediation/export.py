"""The dossier (卷宗) as a readable Markdown document for the paper file.

Parties appear only as their pseudonymous references (p1, p2 …) and roles: names and phones
never leave intake.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from .domain import Dossier

ROLE = {"applicant": "申请人 applicant", "respondent": "被申请人 respondent"}
LANG = {"zh": "中文 zh", "mn": "蒙古语 mn"}
STATE = {
    "open": "进行中 open",
    "agreed": "已达成协议 agreed",
    "failed": "调解不成 failed",
    "closed": "已结案 closed",
}
REASON = {
    "party_declined": "当事人拒绝调解 party declined",
    "no_agreement": "未达成协议 no agreement",
    "overdue": "超过调解期限 overdue",
    "followed_up": "回访完毕 followed up",
    "case_closed": "案件已办结 case closed",
    "superseded": "案件已转其他层级/方式 superseded",
}


def _t(value: Any, tz: ZoneInfo) -> str:
    if isinstance(value, datetime):
        return value.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")
    return "—" if value is None else str(value)


def _line(text: str) -> str:
    """Free text on one table/list line (Markdown-safe enough for the paper file)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _step(n: int, step: Any, tz: ZoneInfo) -> str:
    d = step.detail
    by = f" — {step.by}" if step.by else ""
    kind = step.kind
    if kind == "opened":
        what = f"立卷 Dossier opened at level {d.get('level')}, due by {_t(d.get('due_by'), tz)}"
    elif kind == "mediator_assigned":
        what = f"指定调解员 Mediator assigned: {d.get('mediator')} ({d.get('basis')})"
    elif kind == "rights_notice":
        what = "告知权利义务 Parties informed of their rights (voluntary mediation, right to refuse)"
    elif kind == "consent":
        what = f"当事人意愿 {d.get('party')}: {'同意调解 consents' if d.get('consented') else '拒绝调解 refuses'}"
    elif kind == "session":
        attendees = ", ".join(d.get("attendees") or [])
        what = (
            f"调解会 Session {d.get('n')} held {_t(d.get('held_at'), tz)} "
            f"(attendees: {attendees}): {_line(d.get('summary', ''))}"
        )
    elif kind == "agreed":
        what = f"达成协议 Agreement: {_line(d.get('terms', ''))}"
    elif kind == "failed":
        what = f"调解终止 Failed: {REASON.get(d.get('reason'), d.get('reason'))}"
    elif kind == "followed_up":
        what = f"回访 Follow-up: {'协议已履行 fulfilled' if d.get('fulfilled') else '协议未履行 not fulfilled'}"
    elif kind == "closed":
        what = f"结案 Closed: {REASON.get(d.get('reason'), d.get('reason'))}"
    else:
        what = kind
    return f"{n}. {_t(step.at, tz)} — {what}{by}"


def render(d: Dossier, tz: ZoneInfo | str = "Asia/Shanghai") -> str:
    tz = ZoneInfo(tz) if isinstance(tz, str) else tz
    out = [
        f"# 人民调解卷宗 Mediation dossier {d.mediation_id}",
        "",
        "| | |",
        "|---|---|",
        f"| 案件 Case | {d.case_id} |",
        f"| 层级 Level | {d.level} |",
        f"| 社区 Community | {d.community or '—'} |",
        f"| 类别 Category | {d.category or '—'} |",
        f"| 调解员 Mediator | {d.mediator or '未指定 not assigned'} |",
        f"| 状态 State | {STATE.get(str(d.state), d.state)} |",
        f"| 立卷 Opened | {_t(d.opened_at, tz)} |",
        f"| 期限 Due by | {_t(d.due_by, tz)} |",
        "",
        "## 当事人 Parties",
        "",
    ]
    if not d.parties:
        out.append("未知 not known yet" if not d.parties_known else "none recorded")
    for p in d.parties:
        consent = d.consents.get(p["ref"])
        said = "—" if consent is None else ("同意 consented" if consent.consented else "拒绝 refused")
        role = ROLE.get(p.get("role") or "", p.get("role") or "—")
        lang = LANG.get(p.get("language") or "", "—")
        out.append(f"- {p['ref']}: {role}; language {lang}; consent {said}")
    out += ["", "## 权利义务告知 Rights notice", ""]
    if d.rights_notice:
        out.append(f"Given {_t(d.rights_notice.get('at'), tz)} by {d.rights_notice.get('by')}.")
    else:
        out.append("Not yet given.")
    out += ["", "## 调解记录 Record of steps", ""]
    out += [_step(i, step, tz) for i, step in enumerate(d.steps, 1)]
    out += ["", "## 调解协议 Agreement", ""]
    out.append(_line(d.agreement["terms"]) if d.agreement else "None.")
    if d.failure:
        out += ["", "## 调解终止 Failure", "", REASON.get(d.failure["reason"], d.failure["reason"])]
    out += ["", "## 回访 Follow-up", ""]
    if d.follow_up:
        out.append(
            f"{_t(d.follow_up['at'], tz)}: "
            + ("协议已履行 the agreement was carried out" if d.follow_up["fulfilled"] else "协议未履行 the agreement was not carried out")
        )
    else:
        out.append("None yet.")
    return "\n".join(out) + "\n"
