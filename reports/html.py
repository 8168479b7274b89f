"""One self-contained HTML page: inline CSS, figures as base64 PNG, no scripts and no external assets."""
from __future__ import annotations

import base64
from dataclasses import dataclass
from html import escape

import pandas as pd


TABLE_CAPTION = "Best hyperparameters per model chosen on validation; test metrics as mean ± std over seeds."


@dataclass(frozen=True)
class Figure:
    name: str  # file stem, e.g. "rotation"
    caption: str
    png: bytes


@dataclass(frozen=True)
class Section:
    """Everything the page shows about one experiment."""

    experiment: str
    task: str
    status_counts: tuple[tuple[str, int], ...]
    notes: tuple[str, ...]  # what is missing or partial, in plain words
    table: pd.DataFrame  # formatted display strings (may be empty)
    figures: tuple[Figure, ...]
    skipped: tuple[tuple[str, str], ...]  # (figure name, reason)
    links: tuple[tuple[str, str], ...]  # (text, path relative to the page) for the table files
    caption: str = TABLE_CAPTION  # what the table's numbers are
    findings: tuple[str, ...] = ()  # the table in words: one sentence per model
    extras: tuple[tuple[str, pd.DataFrame], ...] = ()  # (title, formatted table) shown after the main one
    answer: str = ""  # the question answered in words from the numbers: first in the section


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1320px;
       padding: 0 1rem; color: #1f2328; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #d0d7de; }
.meta, .note { color: #57606a; font-size: .92rem; }
.status span { display: inline-block; padding: .1rem .55rem; margin-right: .35rem; border-radius: 1rem;
               background: #eaeef2; font-size: .85rem; }
.status .done { background: #dafbe1; } .status .pruned { background: #fbefff; } .status .failed { background: #ffebe9; }
.status .running { background: #ddf4ff; } .status .interrupted { background: #fff8c5; }
.table-wrap { overflow-x: auto; margin: 1rem 0; }
table.results { border-collapse: collapse; font-size: .85rem; white-space: nowrap; }
table.results th, table.results td { padding: .35rem .6rem; border-bottom: 1px solid #d0d7de; text-align: right; }
table.results th { background: #f6f8fa; border-bottom: 2px solid #8c959f; }
table.results td:nth-child(-n+4), table.results th:nth-child(-n+4) { text-align: left; }
table.results tbody tr:nth-child(even) { background: #fafbfc; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(600px, 1fr)); gap: 1.2rem; }
figure { margin: 0; } figure img { max-width: 100%; border: 1px solid #eaeef2; }
figcaption { font-size: .85rem; color: #57606a; }
ul.skipped li, ul.notes li { font-size: .9rem; }
ul.findings li { font-size: .95rem; }
p.answer { font-size: 1.02rem; background: #f6f8fa; border-left: 4px solid #0969da; padding: .6rem .9rem; }
"""


def page(title: str, sections: list[Section], intro: str) -> str:
    """The whole report as one HTML string."""
    body = "\n".join(_section(section) for section in sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
            f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>{escape(title)}</h1>\n"
            f'<p class="meta">{escape(intro)}</p>\n{body}\n</body>\n</html>\n')


def _section(section: Section) -> str:
    anchor = escape(section.experiment, quote=True)
    counts = "".join(f'<span class="{escape(status)}">{escape(status)}: {count}</span>'
                     for status, count in section.status_counts)
    parts = [f'<section id="{anchor}">', f"<h2>{escape(section.experiment)} "
             f'<small class="meta">({escape(section.task)})</small></h2>']
    if section.answer:
        parts.append(f'<p class="answer">{escape(section.answer)}</p>')
    parts += [f'<p class="status">{counts or "<span>no jobs</span>"}</p>']
    if section.notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in section.notes) + "</ul>")
    parts.append(_table(section.table, section.caption))
    if section.findings:
        parts.append('<ul class="findings">' + "".join(f"<li>{escape(f)}</li>" for f in section.findings) + "</ul>")
    for title, extra in section.extras:
        parts.append(f"<h3>{escape(title)}</h3>" + _table(extra, ""))
    if section.links:
        parts.append('<p class="meta">Table as ' + ", ".join(
            f'<a href="{escape(path, quote=True)}">{escape(text)}</a>' for text, path in section.links) + "</p>")
    parts.append('<div class="figures">' + "".join(_figure(f) for f in section.figures) + "</div>")
    if section.skipped:
        parts.append("<p>Figures not drawn:</p><ul class=\"skipped\">" + "".join(
            f"<li><b>{escape(name)}</b>: {escape(reason)}</li>" for name, reason in section.skipped) + "</ul>")
    parts.append("</section>")
    return "\n".join(parts)


def _table(table: pd.DataFrame, caption: str) -> str:
    if table.empty:
        return '<p class="note">No finished jobs with a validation metric yet: no comparison table.</p>'
    head = "".join(f"<th>{escape(str(c))}</th>" for c in table.columns)
    rows = "".join("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in table.itertuples(index=False))
    caption = f'<caption class="meta">{escape(caption)}</caption>' if caption else ""
    return (f'<div class="table-wrap"><table class="results">{caption}<thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table></div>")


def _figure(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    return (f'<figure id="{escape(figure.name, quote=True)}"><img alt="{escape(figure.caption, quote=True)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{escape(figure.caption)}</figcaption></figure>')
