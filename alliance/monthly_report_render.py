"""Rendering of the monthly report (SPEC §11): CSV (the per-member table) and
one self-contained, printable HTML file (inline CSS and SVG, nothing fetched).

Every number the HTML shows is the JSON's, formatted by the rules below
(docs/disclosure.md), and carries its source: ``data-path`` (where it is in
the JSON: dotted keys; a list is indexed by its items' `member_id` or
`month`), ``data-value`` (the JSON value: an integer or `null`) and
``data-format``. Charts carry the same attributes on every bar and point.

Formatting rules:
- ``count``: integer with thousands separators: 12,345
- ``fen``: yuan, two decimals, thousands separators: ¥1,234.56
- ``bp``: percent with two decimals (basis points / 100): 12.34%
- ``dcount``, ``dfen``: a change, always signed: +12 / -3, +¥1.00 / -¥0.50, 0 / ¥0.00 for none
- ``dbp``: a change of a rate in percentage points: +0.25 pp / -1.00 pp / 0.00 pp
- null, whatever the format: — (em dash)"""
from __future__ import annotations

import csv
import io
from html import escape
from typing import Any

from alliance import disclosure

LABELS = {
    "cumulative_loans": "Cumulative loans", "cumulative_amount_fen": "Cumulative amount",
    "new_loans": "New loans in the month", "new_amount_fen": "New amount in the month",
    "outstanding_loans": "Outstanding loans", "outstanding_balance_fen": "Outstanding balance",
    "cumulative_borrowers": "Cumulative borrowers", "current_borrowers": "Current borrowers",
    "top1_borrower_share_bp": "Largest borrower share", "top10_borrowers_share_bp": "Top-10 borrowers share",
    "overdue_loans": "Overdue loans", "overdue_amount_fen": "Overdue amount",
    "overdue_90_loans": "Overdue > 90 days, loans", "overdue_90_amount_fen": "Overdue > 90 days, amount",
    "written_off_loans": "Written-off loans", "written_off_amount_fen": "Written-off amount",
    "loan_overdue_rate_bp": "Loan overdue rate", "amount_overdue_rate_bp": "Amount overdue rate",
}
NULL = "\u2014"


def disclosed_sentence(report: dict[str, Any], disclosed: str | None = None, expected: str | None = None) -> str:
    """Who disclosed, against the members active at the month's end. A member
    not active then (e.g. one that joined after the month; its book existed)
    may still disclose it, so the disclosures can outnumber the members
    expected: never "3 of 0"."""
    month, n, m = report["month"], report["members_disclosed"], report["members_expected"]
    disclosed = disclosed if disclosed is not None else f"{n:,}"
    expected = expected if expected is not None else f"{m:,}"
    outside = n - (m - len(report["not_disclosed"]))  # disclosed, but not by a member active at the end
    text = f"{disclosed} of {expected} active members disclosed for {month}."
    if outside > 0:
        text = (f"{disclosed} member{'' if n == 1 else 's'} disclosed for {month}; {expected} "
                f"{'was an active member' if m == 1 else 'were active members'} at its end "
                f"({outside:,} disclosure{'' if outside == 1 else 's'} from members not active at its end, "
                "e.g. joined later).")
    return text


def kind_of(figure: str) -> str:
    return "fen" if figure.endswith("_fen") else "bp" if figure.endswith("_bp") else "count"


def _group(n: int) -> str:
    return f"{n:,}"


def fmt(kind: str, value: int | None) -> str:
    """The documented formatting rules (module docstring)."""
    if value is None:
        return NULL
    if kind == "count":
        return _group(value)
    if kind == "fen":
        sign = "-" if value < 0 else ""
        return f"{sign}¥{_group(abs(value) // 100)}.{abs(value) % 100:02d}"
    if kind == "bp":
        return f"{value // 100}.{value % 100:02d}%"
    if kind in ("dcount", "dfen"):
        sign = "+" if value > 0 else "-" if value < 0 else ""
        return sign + fmt(kind[1:], abs(value))
    if kind == "dbp":
        sign = "+" if value > 0 else "-" if value < 0 else ""
        return f"{sign}{abs(value) // 100}.{abs(value) % 100:02d} pp"
    raise ValueError(f"unknown format {kind!r}")


def _num(path: str, kind: str, value: int | None, tag: str = "td", cls: str = "num") -> str:
    v = "null" if value is None else str(value)
    return (f'<{tag} class="{cls}" data-path="{escape(path)}" data-format="{kind}" data-value="{v}">'
            f"{escape(fmt(kind, value))}</{tag}>")


# --------------------------------------------------------------------------- CSV

CSV_COLUMNS = ("member_id", "name", "month", "entry", "disclosed_at", "credential_serial", *disclosure.FIGURES)


def csv_text(report: dict[str, Any]) -> str:
    """The per-member table: raw integers, empty for null."""
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in report["members"]:
        w.writerow({"member_id": r["member_id"], "name": r["name"], "month": report["month"], "entry": r["entry"],
                    "disclosed_at": r["disclosed_at"], "credential_serial": r["credential_serial"],
                    **{k: "" if r["figures"][k] is None else r["figures"][k] for k in disclosure.FIGURES}})
    return out.getvalue()


# --------------------------------------------------------------------------- charts

W = 640  # SVG user units; scaled to the page width


def _bar_chart(chart: str, title: str, items: list[tuple[str, list[tuple[str, str, int | None]]]], kind: str,
               series: list[str]) -> str:
    """Horizontal bars: per label, one bar per series (path, value)."""
    colours = ("#1f4e79", "#c55a11", "#548235")
    label_w, bar_h, gap = 120, 14, 10
    rows_h = len(items) * (len(series) * bar_h + gap)
    height = 30 + max(rows_h, 20) + 20
    values = [v for _, bars in items for _, _, v in bars if v is not None]
    top = max(values, default=0) or 1
    span = W - label_w - 110
    parts = [f'<h3>{escape(title)}</h3><svg class="chart" data-chart="{chart}" viewBox="0 0 {W} {height}" role="img" '
             f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for i, name in enumerate(series):
        parts.append(f'<rect x="{label_w + i * 170}" y="4" width="10" height="10" fill="{colours[i]}"/>'
                     f'<text x="{label_w + 14 + i * 170}" y="13" class="legend">{escape(name)}</text>')
    y = 30
    if not items:
        parts.append(f'<text x="{label_w}" y="{y + 12}" class="empty">no disclosures</text>')
    for label, bars in items:
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_h * len(bars) / 2 + 4}" text-anchor="end" class="label">{escape(label)}</text>')
        for i, (path, _, value) in enumerate(bars):
            w = 0 if value is None else max(1, round(span * value / top)) if value else 0
            v = "null" if value is None else str(value)
            parts.append(f'<g><rect x="{label_w}" y="{y}" width="{w}" height="{bar_h - 2}" fill="{colours[i]}" '
                         f'data-path="{escape(path)}" data-format="{kind}" data-value="{v}"/>'
                         f'<text x="{label_w + w + 4}" y="{y + bar_h - 4}" class="val" data-path="{escape(path)}" '
                         f'data-format="{kind}" data-value="{v}">{escape(fmt(kind, value))}</text></g>')
            y += bar_h
        y += gap
    parts.append("</svg>")
    return "".join(parts)


def _trend_chart(chart: str, title: str, trend: list[dict[str, Any]], keys: list[tuple[str, str]], kind: str) -> str:
    """Lines over up to 12 months; a point per month with data, labelled."""
    colours = ("#1f4e79", "#c55a11")
    left, right, top_pad, height = 60, 70, 30, 230
    plot_h = height - top_pad - 50
    values = [p[k] for p in trend for k, _ in keys if p[k] is not None]
    top = max(values, default=0) or 1
    step = (W - left - right) / max(len(trend) - 1, 1)
    parts = [f'<h3>{escape(title)}</h3><svg class="chart" data-chart="{chart}" viewBox="0 0 {W} {height}" role="img" '
             f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>',
             f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{W - right}" y2="{top_pad + plot_h}" class="axis"/>']
    for i, (_, name) in enumerate(keys):
        parts.append(f'<rect x="{left + i * 200}" y="4" width="10" height="10" fill="{colours[i]}"/>'
                     f'<text x="{left + 14 + i * 200}" y="13" class="legend">{escape(name)}</text>')
    for j, p in enumerate(trend):
        x = left + j * step
        parts.append(f'<text x="{x:.1f}" y="{top_pad + plot_h + 14}" text-anchor="middle" class="tick">{p["month"][2:]}</text>')
    for i, (key, _) in enumerate(keys):
        pts = []
        for j, p in enumerate(trend):
            value = p[key]
            x = left + j * step
            path = f"trend.{p['month']}.{key}"
            if value is None:
                continue
            y = top_pad + plot_h - plot_h * value / top
            pts.append(f"{x:.1f},{y:.1f}")
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colours[i]}" data-path="{path}" data-format="{kind}" '
                         f'data-value="{value}"><title>{escape(fmt(kind, value))}</title></circle>'
                         f'<text x="{x:.1f}" y="{y - 6 - 10 * i:.1f}" text-anchor="middle" class="val" data-path="{path}" '
                         f'data-format="{kind}" data-value="{value}">{escape(fmt(kind, value))}</text>')
        if len(pts) > 1:
            parts.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{colours[i]}" stroke-width="1.5"/>')
    if not values:
        parts.append(f'<text x="{left}" y="{top_pad + 20}" class="empty">no disclosures in these months</text>')
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- HTML

CSS = """
@page { size: A4; margin: 14mm 12mm 16mm 12mm; }
* { box-sizing: border-box; }
body { font-family: "Noto Serif", Georgia, "Times New Roman", serif; color: #111; margin: 0 auto; max-width: 186mm;
       font-size: 10pt; line-height: 1.35; }
header { border-bottom: 2px solid #1f4e79; padding-bottom: 6px; margin-bottom: 10px; }
header .org { font-variant: small-caps; letter-spacing: 0.05em; color: #1f4e79; }
h1 { font-size: 18pt; margin: 2px 0; }
h2 { font-size: 12.5pt; color: #1f4e79; border-bottom: 1px solid #bbb; margin: 16px 0 6px; page-break-after: avoid; }
.meta { color: #444; font-size: 9pt; }
table { border-collapse: collapse; width: 100%; margin: 4px 0 8px; font-size: 8.6pt; page-break-inside: auto; }
tr { page-break-inside: avoid; }
th, td { border: 1px solid #c8c8c8; padding: 2px 4px; }
th { background: #e9eef5; text-align: left; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap;
                 font-family: "DejaVu Sans Mono", "Noto Sans Mono", monospace; font-size: 8.2pt; }
tr.total td { font-weight: 700; background: #f4f6f9; }
.kpis { display: flex; gap: 8px; flex-wrap: wrap; margin: 6px 0; }
.kpi { border: 1px solid #c8c8c8; padding: 6px 8px; flex: 1 1 40mm; }
.kpi .k { font-size: 8pt; color: #555; } .kpi .v { font-size: 13pt; font-weight: 700; border: 0; padding: 0; }
.kpi .d { font-size: 8pt; color: #555; border: 0; padding: 0; }
.note { font-size: 8.4pt; color: #333; }
.warn { color: #9c2a00; font-weight: 600; }
svg.chart { width: 100%; height: auto; page-break-inside: avoid; margin: 4px 0 10px; }
svg .label, svg .legend, svg .tick { font: 10px sans-serif; fill: #222; }
svg .val { font: 9px monospace; fill: #222; } svg .axis { stroke: #888; } svg .empty { font: 11px sans-serif; fill: #777; }
section { page-break-inside: auto; }
.charts { page-break-before: always; }
h3 { font-size: 10.5pt; margin: 10px 0 2px; page-break-after: avoid; }
footer { margin-top: 14px; border-top: 1px solid #bbb; font-size: 8pt; color: #555; }
@media print { body { max-width: none; } a { color: inherit; text-decoration: none; } }
"""


def _chunks(items: list[Any], n: int) -> list[list[Any]]:
    return [items[i:i + n] for i in range(0, len(items), n)] or [[]]


def html(report: dict[str, Any]) -> str:
    month = report["month"]
    members = report["members"]
    totals = report["totals"]
    tchange = report["totals_change"]
    origin = report["log"].get("origin", "")
    alliance_name = origin.removesuffix("/audit-log") or "Credit alliance"
    out: list[str] = []
    add = out.append
    add(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(alliance_name)} — {escape(report["title"])} '
        f'{month}</title><style>{CSS}</style></head><body data-month="{month}">')
    add(f'<header><div class="org">{escape(alliance_name)}</div><h1>{escape(report["title"])}: {month}</h1>'
        f'<div class="meta">Figures as of the last day of {month}, as disclosed by each member in the uniform format (UDS-1 disclosure) '
        f'and signed by it. Report made {escape(report["generated_at_shanghai"])} (Asia/Shanghai) from the audit log alone: '
        f'{_int_span("log.tree_size", report["log"].get("tree_size"))} entries under checkpoint root '
        f'<code>{escape(str(report["log"].get("root_hash", "")))}</code>; '
        f'{_int_span("disclosures_checked", report["disclosures_checked"])} disclosure signatures checked.</div></header>')

    # summary
    add("<section><h2>1. Alliance summary</h2>")
    add(f'<p>{disclosed_sentence(report, _int_span("members_disclosed", report["members_disclosed"]), _int_span("members_expected", report["members_expected"]))}'
        + (f' <span class="warn">Not disclosed: {escape(", ".join(report["not_disclosed"]))}.</span>' if report["not_disclosed"] else "")
        + "</p>")
    if totals:
        add('<div class="kpis">')
        for key in ("outstanding_balance_fen", "new_amount_fen", "loan_overdue_rate_bp", "amount_overdue_rate_bp"):
            k = kind_of(key)
            d = "" if tchange is None else (f'<div class="d">vs {report["previous_month"]}: '
                                              + _num(f"totals_change.{key}", "d" + k, tchange[key], "span", "num d") + "</div>")
            add(f'<div class="kpi"><div class="k">{LABELS[key]}</div>{_num(f"totals.{key}", k, totals[key], "div", "num v")}{d}</div>')
        add("</div>")
    else:
        add(f'<p class="warn">No member disclosed for {month}.</p>')
    add("</section>")

    # per-member table, figures as rows, up to 6 members per block
    add(f"<section><h2>2. Disclosed figures by member, {month}</h2>")
    for block in _chunks(members, 6):
        add('<table class="figures"><thead><tr><th>Figure</th>')
        for r in block:
            add(f'<th class="num">{escape(r["member_id"])}</th>')
        if totals:
            add(f'<th class="num">Alliance</th><th class="num">Change vs {report["previous_month"]}</th>')
        add("</tr></thead><tbody>")
        for key in disclosure.FIGURES:
            k = kind_of(key)
            add(f"<tr><th>{LABELS[key]}</th>")
            for r in block:
                add(_num(f'members.{r["member_id"]}.figures.{key}', k, r["figures"][key]))
            if totals:
                add(_num(f"totals.{key}", k, totals[key]))
                add(_num(f"totals_change.{key}", "d" + k, None if tchange is None else tchange[key]))
            add("</tr>")
        add("</tbody></table>")
    add('<p class="note">Alliance column: sums of the members\' figures; the overdue rates are recomputed from the summed counts '
        '(never averaged). Borrower counts are summed, so a borrower of two members counts twice. Top-borrower shares cannot be '
        'derived from members\' figures and are not totalled.</p></section>')

    # member change
    key_changes = ("outstanding_balance_fen", "new_amount_fen", "overdue_amount_fen", "loan_overdue_rate_bp", "amount_overdue_rate_bp")
    add(f"<section><h2>3. Change against {report['previous_month']} by member</h2>")
    add('<table><thead><tr><th>Member</th>' + "".join(f'<th class="num">{LABELS[k]}</th>' for k in key_changes) + "</tr></thead><tbody>")
    for r in members:
        ch = r["change"]
        add(f'<tr><td>{escape(r["member_id"])}</td>'
            + "".join(_num(f'members.{r["member_id"]}.change.{k}', "d" + kind_of(k), None if ch is None else ch[k]) for k in key_changes)
            + "</tr>")
    add(f'</tbody></table><p class="note">— : no disclosure for {report["previous_month"]} to compare with.</p></section>')

    # disclosure notes
    add("<section><h2>4. Disclosures and their dates</h2><table><thead><tr><th>Member</th><th>Name</th><th>Logged (Asia/Shanghai)</th>"
        '<th class="num">Log entry</th><th class="num">Credential</th><th>Superseded entries</th></tr></thead><tbody>')
    for r in members:
        sup = ", ".join(str(s) for s in r["superseded_entries"]) or "none"
        add(f'<tr><td>{escape(r["member_id"])}</td><td>{escape(r["name"])}</td><td>{escape(r["disclosed_at_shanghai"])}</td>'
            + _num(f"members.{r['member_id']}.entry", "count", r["entry"])
            + _num(f"members.{r['member_id']}.credential_serial", "count", r["credential_serial"]) + f"<td>{escape(sup)}</td></tr>")
    for m in report["not_disclosed"]:
        add(f'<tr><td>{escape(m)}</td><td colspan="5" class="warn">did not disclose for {month}</td></tr>')
    add("</tbody></table><p class=\"note\">A month is disclosed from each member's book as it stands when the disclosure is made "
        "(each loan's latest state), counting loans opened up to the month's last day; the date above is when the gateway logged it. "
        "A later disclosure for the same month supersedes an earlier one; both stay in the log.</p></section>")

    # activity
    from alliance import protocol

    purposes = [p for p in protocol.PURPOSES]
    add(f"<section><h2>5. Query activity in {month} (from the log)</h2><table><thead><tr><th>Member</th>"
        + "".join(f'<th class="num">{p.replace("_", " ").title()}</th>' for p in purposes)
        + '<th class="num">Prechecks</th><th class="num">Refused</th><th class="num">Quota hits</th><th>Refusals by reason</th></tr></thead><tbody>')
    for a in report["activity"]:
        mid = a["member_id"]
        reasons = ", ".join(f'{escape(k)} ' + _num(f"activity.{mid}.refusals_by_reason.{k}", "count", v, "span", "num")
                            for k, v in a["refusals_by_reason"].items()) or "none"
        add(f"<tr><td>{escape(mid)}</td>"
            + "".join(_num(f"activity.{mid}.queries_by_purpose.{p}", "count", a["queries_by_purpose"].get(p, 0)) for p in purposes)
            + _num(f"activity.{mid}.prechecks_accepted", "count", a["prechecks_accepted"])
            + _num(f"activity.{mid}.refused", "count", a["refused"])
            + _num(f"activity.{mid}.quota_hits", "count", a["quota_hits"]) + f"<td>{reasons}</td></tr>")
    add('</tbody></table><p class="note">Accepted queries by purpose and accepted prechecks, by querying member, received in the month '
        "(Asia/Shanghai); refusals of queries and prechecks by reason; quota hits are refusals for quota_exceeded.</p></section>")

    # charts
    add('<section class="charts"><h2>6. Charts</h2>')
    add(_bar_chart("outstanding_balance", f"Outstanding balance by member, {month}",
                   [(r["member_id"], [(f'members.{r["member_id"]}.figures.outstanding_balance_fen', "", r["figures"]["outstanding_balance_fen"])])
                    for r in members], "fen", ["Outstanding balance"]))
    add(_bar_chart("overdue_rates", f"Overdue rates by member, {month}",
                   [(r["member_id"], [(f'members.{r["member_id"]}.figures.loan_overdue_rate_bp', "", r["figures"]["loan_overdue_rate_bp"]),
                                      (f'members.{r["member_id"]}.figures.amount_overdue_rate_bp', "", r["figures"]["amount_overdue_rate_bp"])])
                    for r in members], "bp", ["Loan overdue rate", "Amount overdue rate"]))
    trend = report["trend"]
    add(_trend_chart("trend_balance", f"Alliance outstanding balance, {trend[0]['month']} to {month}", trend,
                     [("outstanding_balance_fen", "Outstanding balance")], "fen"))
    add(_trend_chart("trend_rates", f"Alliance overdue rates, {trend[0]['month']} to {month}", trend,
                     [("loan_overdue_rate_bp", "Loan overdue rate"), ("amount_overdue_rate_bp", "Amount overdue rate")], "bp"))
    add('<table><thead><tr><th>Month</th><th class="num">Members disclosed</th><th class="num">Outstanding balance</th>'
        '<th class="num">Loan overdue rate</th><th class="num">Amount overdue rate</th></tr></thead><tbody>')
    for p in trend:
        pm = p["month"]
        add(f"<tr><td>{pm}</td>" + _num(f"trend.{pm}.members_disclosed", "count", p["members_disclosed"])
            + _num(f"trend.{pm}.outstanding_balance_fen", "fen", p["outstanding_balance_fen"])
            + _num(f"trend.{pm}.loan_overdue_rate_bp", "bp", p["loan_overdue_rate_bp"])
            + _num(f"trend.{pm}.amount_overdue_rate_bp", "bp", p["amount_overdue_rate_bp"]) + "</tr>")
    add("</tbody></table></section>")

    add('<footer><p>Definitions (docs/disclosure.md): outstanding = ACTIVE loans (written-off and settled loans are not outstanding); '
        "overdue = ACTIVE with at least 1 day overdue, its amount the balance of those loans; overdue &gt; 90 days likewise; "
        "loan overdue rate = overdue loans / outstanding loans; amount overdue rate = overdue amount / outstanding balance; "
        "basis points rounded half-up. Amounts in yuan (¥), rates in percent, changes in percentage points (pp); "
        "— marks a figure that does not exist (a zero denominator, or nothing to compare with).</p>"
        "<p>The figures are each member's own statement, signed with its key; the alliance checks their form and consistency, "
        "not their truth.</p></footer>")
    add("</body></html>")
    return "".join(out)


def _int_span(path: str, value: int | None) -> str:
    return _num(path, "count", value, "span", "num")
