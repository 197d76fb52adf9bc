#!/usr/bin/env python3
"""Generate an ops repo with N runbooks, and a Hugo site over the same markdown (benchmark B5).

Usage:
    bench/gen_runbooks.py OUT [N]     # N runbooks (default 5000)

Writes:
  OUT/repo   a copy of the bundled ops repo (vakt.toml, config/, inventory/, dashboards/,
             alerts/, dr/, …) whose runbooks/ holds the 34 bundled runbooks plus generated
             ones up to N, each listed in runbooks/runbooks.catalog.json with a stable id
             `gen.<group>.rNNNNN`;
  OUT/hugo   a Hugo site whose content/runbooks/ holds the same markdown bodies (front matter
             with the title added), with a minimal layout (one page per runbook, list pages);
  OUT/hugo-json  the same Hugo site also writing one JSON file per runbook (id, title,
             markdown), as vakt writes its catalog API next to each page.

Generated bodies follow the bundled runbook structure (Trigger, Severity and escalation,
Remediation mode, Allowed actions table, Evidence, Procedure, Recording the outcome), about
3 KB each, with words drawn deterministically from the bundled runbooks' vocabulary so the
search index sees a realistic spread of terms. Output is deterministic.
"""

import json
import random
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = ["vakt.toml", "config", "environments", "inventory", "definitions", "access",
          "runbooks", "dashboards", "alerts", "dr"]
GROUPS = ["vakt", "availability", "backlogs", "data-safety", "reliability", "security",
          "disaster-recovery", "tenancy", "network", "storage"]
OWNERS = ["platform-sre", "platform-data", "identity-security", "network-ops", "tenant-ops"]
MODES = ["automatic", "operator-approved", "manual"]
ESC = ["informational", "action-required", "urgent"]


# Real commands only: `vakt validate` checks every `vakt …` line of a runbook against the CLI.
COMMANDS = ["drift --env prod", "plan --env prod", "jobs list --env prod", "validate",
            "promote --check --from staging --to prod"]


def vocabulary():
    words = set()
    for p in (ROOT / "runbooks").glob("*.md"):
        for w in re.findall(r"[a-z][a-z]{3,14}", p.read_text().lower()):
            words.add(w)
    return sorted(words)


def sentence(rng, vocab, n):
    w = [rng.choice(vocab) for _ in range(n)]
    return w[0].capitalize() + " " + " ".join(w[1:]) + "."


def body(rng, vocab, title, signal, rid):
    s = lambda n=12: sentence(rng, vocab, n)
    para = lambda k=3: " ".join(s(rng.randint(8, 16)) for _ in range(k))
    steps = "\n".join(f"{i}. {s(10)} Run `vakt plan --env prod` if {rng.choice(vocab)} persists."
                      for i in range(1, 7))
    rows = "\n".join(f"| `vakt {rng.choice(COMMANDS)}` | {rng.choice(OWNERS)} | {rng.choice(['none', 'vakt approve', 'PR review'])} |"
                     for _ in range(4))
    return f"""# {title}

{para(4)}

## Trigger

- Signal `{signal}`: `sum by (env) ({signal}_total) > 0` for 10 minutes.
- {s(14)}
- {s(11)}

## Severity and escalation

{para(2)}

## Remediation mode

**{rng.choice(MODES).capitalize()}.** {para(3)}

## Allowed actions

| Action | Who | Approval |
|---|---|---|
{rows}

## Evidence to review first

1. Dashboard `vakt-control-plane`, panel "{rng.choice(vocab)} by {rng.choice(vocab)}".
2. {s(12)}
3. Saved query `vakt_events_by_correlation_id` with the correlation id of the event.

## Procedure

{steps}

## Recording the outcome

- {s(13)}
- Runbook id `{rid}`; {s(9)}
"""


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    rng = random.Random(5)
    vocab = vocabulary()
    if out.exists():
        shutil.rmtree(out)
    repo = out / "repo"
    repo.mkdir(parents=True)
    for top in LAYOUT:
        src = ROOT / top
        if src.is_dir():
            shutil.copytree(src, repo / top)
        elif src.exists():
            shutil.copy(src, repo / top)
    cat_path = repo / "runbooks" / "runbooks.catalog.json"
    cat = json.loads(cat_path.read_text())
    hugo = out / "hugo"
    content = hugo / "content" / "runbooks"
    content.mkdir(parents=True)

    def hugo_page(rid, title, md_text):
        # same markdown body; Hugo needs its title in front matter
        fm = json.dumps({"title": title, "slug": rid})
        (content / f"{rid}.md").write_text(fm + "\n\n" + md_text)

    for e in cat["runbooks"]:
        hugo_page(e["id"], e["title"], (repo / e["url"]).read_text())
    existing = len(cat["runbooks"])
    for i in range(max(0, n - existing)):
        group = GROUPS[i % len(GROUPS)]
        rid = f"gen.{group}.r{i:05d}"
        signal = f"gen_{group.replace('-', '_')}_{i:05d}"
        title = f"{rng.choice(vocab).capitalize()} {rng.choice(vocab)} {rng.choice(vocab)} ({i})"
        md = body(rng, vocab, title, signal, rid)
        path = f"runbooks/{rid}.md"
        (repo / path).write_text(md)
        cat["runbooks"].append({
            "id": rid, "title": title, "severity_hint": rng.choice(["sev1", "sev2", "sev3"]),
            "owner_team": rng.choice(OWNERS),
            "last_reviewed_at": f"2026-{rng.randint(9, 11):02d}-{rng.randint(1, 20):02d}",
            "url": path, "signals": [signal], "signal_group": group,
            "remediation_mode": rng.choice(MODES), "escalation_class": rng.choice(ESC),
            "saved_queries": ["vakt_events_by_correlation_id"], "dashboards": ["vakt-control-plane"],
        })
        hugo_page(rid, title, md)
    cat_path.write_text(json.dumps(cat, indent=2) + "\n")

    (hugo / "hugo.toml").write_text(
        'baseURL = "http://localhost/"\ntitle = "runbooks"\n'
        'disableKinds = ["taxonomy", "term", "RSS", "sitemap", "robotsTXT", "404"]\n'
        '[markup.goldmark.renderer]\nunsafe = false\n')
    layouts = hugo / "layouts" / "_default"
    layouts.mkdir(parents=True)
    (layouts / "baseof.html").write_text(
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{ .Title }}</title>'
        '</head><body><header><nav><a href="/">home</a></nav></header><main>{{ block "main" . }}{{ end }}'
        '</main></body></html>\n')
    (layouts / "single.html").write_text(
        '{{ define "main" }}<h1>{{ .Title }}</h1>{{ .TableOfContents }}<article>{{ .Content }}</article>{{ end }}\n')
    (layouts / "single.json").write_text(
        '{{ dict "id" .Params.slug "title" .Title "markdown" .RawContent | jsonify }}\n')
    (layouts / "list.html").write_text(
        '{{ define "main" }}<h1>{{ .Title }}</h1><ul>{{ range .Pages }}<li><a href="{{ .RelPermalink }}">'
        '{{ .Title }}</a></li>{{ end }}</ul>{{ end }}\n')
    # OUT/hugo-json: the same site that also writes one JSON file per runbook (id, title,
    # markdown), the closest Hugo equivalent of vakt's api/v1/admin/runbooks/<id>.json.
    shutil.copytree(hugo, out / "hugo-json")
    with open(out / "hugo-json" / "hugo.toml", "a") as f:
        f.write('[outputs]\npage = ["HTML", "JSON"]\n')
    total = len(cat["runbooks"])
    print(f"gen_runbooks: {total} runbooks in {repo}, Hugo site in {hugo}", file=sys.stderr)


if __name__ == "__main__":
    main()
