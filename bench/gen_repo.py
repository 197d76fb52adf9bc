#!/usr/bin/env python3
"""Generate a large ops repo for benchmark B1 (`vakt validate` on 10,000 documents).

Usage:
    bench/gen_repo.py OUT [N]          # build OUT with N documents (default 10000)
    bench/gen_repo.py --list-kinds DIR # print "<kind>\t<path>" for every schema-checked
                                       # base document of DIR (used by b1_validate.sh)

OUT starts as a copy of the bundled Dataverket repo's documents (vakt.toml, config/,
environments/, inventory/, definitions/, access/, runbooks/, dashboards/, alerts/, dr/; not
the Rust code, schemas/ or target/). Extra documents are then generated until the base view
holds N documents (as counted by `vakt validate`: every base file that maps to a kind,
runbook markdown included; environment overlays are not counted):

  * tenants: config/tenants/t-NNNNN/tenant.toml, each with inventory/placement/t-NNNNN.toml
    that places it on the existing shards of its home site (inventory/shards/);
  * config items: config/tenants/t-NNNNN/<name>.toml for every third tenant.

Field layouts are copied from the bundled tenants, placements and config items; only ids,
names, contacts and a few values vary. Output is deterministic. Nodes and shards are not
generated (the shard layer carries no capacity check).
"""

import os
import re
import shutil
import sys
import tomllib
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent
COPY_DIRS = [
    "config",
    "environments",
    "inventory",
    "definitions",
    "access",
    "runbooks",
    "dashboards",
    "alerts",
    "dr",
]
SERVICE_KINDS = ["gateway", "aggregate", "projection", "runner"]

# Templates taken from the bundled repo.
TENANT_TEMPLATES = [
    "nordlys-energi",
    "skagerrak-bank",
    "fjord-logistics",
    "trondheim-kommune",
    "polar-retail",
    "havbruk-data",
]
CONFIG_TEMPLATES = [
    # (file name, template tenant whose item is copied)
    ("metering.toml", "nordlys-energi"),
    ("retention.toml", "skagerrak-bank"),
]


def kind_of_base_path(path: str):
    """Python mirror of opsrepo/src/kinds.rs `kind_of_base_path` (no [[bindings]])."""
    segs = path.split("/")
    ext = path.rsplit(".", 1)[1] if "." in path else ""
    n = len(segs)
    if segs == ["vakt.toml"]:
        return "manifest"
    if n == 3 and segs[:2] == ["config", "global"]:
        if segs[2] == "platform.toml":
            return "global-config"
        return "config-item" if ext == "toml" else None
    if n == 4 and segs[:2] == ["config", "tenants"]:
        if segs[3] == "tenant.toml":
            return "tenant"
        return "config-item" if ext == "toml" else None
    if n == 3 and ext == "toml":
        table = {
            ("definitions", "aggregates"): "aggregate",
            ("definitions", "projections"): "projection",
            ("definitions", "sagas"): "saga",
            ("definitions", "effects"): "effect",
            ("definitions", "manifests"): "definition-manifest",
            ("inventory", "sites"): "site",
            ("inventory", "nodes"): "node",
            ("inventory", "shards"): "shard",
            ("inventory", "services"): "service",
            ("inventory", "placement"): "placement",
            ("access", "roles"): "role",
            ("access", "bindings"): "role-binding",
            ("dashboards", "queries"): "saved-query",
            ("dr", "stores"): "dr-store",
        }
        k = table.get((segs[0], segs[1]))
        if k:
            return k
    if n == 2 and segs[0] == "runbooks":
        if segs[1] == "runbooks.catalog.json":
            return "runbook-catalog"
        if ext == "md":
            return "runbook"
    if n == 2 and segs[0] == "dashboards":
        if segs[1] == "datasources.toml":
            return "datasources"
        if ext == "json":
            return "dashboard"
    if n == 2 and segs[0] == "alerts" and ext in ("yaml", "yml"):
        return "alert-rules"
    return None


def base_documents(root: Path):
    """(kind, relative path) of every base document of the repo at root, sorted by path."""
    out = []
    if (root / "vakt.toml").is_file():
        out.append(("manifest", "vakt.toml"))
    for top in COPY_DIRS:
        if top == "environments" or not (root / top).is_dir():
            continue
        for dirpath, _dirs, files in os.walk(root / top):
            for f in files:
                rel = (Path(dirpath) / f).relative_to(root).as_posix()
                k = kind_of_base_path(rel)
                if k:
                    out.append((k, rel))
    out.sort(key=lambda kp: kp[1])
    return out


def shards_by_site(root: Path):
    """{site: {service_kind: [shard ids]}} from inventory/shards/*.toml."""
    out = {}
    for p in sorted((root / "inventory" / "shards").glob("*.toml")):
        s = tomllib.loads(p.read_text())
        out.setdefault(s["site"], {}).setdefault(s["service_kind"], []).append(s["id"])
    return out


def strip_comments(text: str, what: str) -> str:
    """Drop full-line comments (they describe the template's tenant) and add a header."""
    body = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
    return f"# Generated by bench/gen_repo.py ({what}).\n" + body.lstrip("\n") + "\n"


def set_str(text: str, key: str, value: str) -> str:
    """Replace the first top-level `key = "..."` line."""
    new, n = re.subn(
        rf'^{key} = "[^"\n]*"$', f'{key} = "{value}"', text, count=1, flags=re.M
    )
    assert n == 1, key
    return new


def set_int(text: str, key: str, value: int) -> str:
    new, n = re.subn(rf"^{key} = \d+$", f"{key} = {value}", text, count=1, flags=re.M)
    assert n == 1, key
    return new


def generate(out: Path, n_total: int) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copy2(SRC / "vakt.toml", out / "vakt.toml")
    for d in COPY_DIRS:
        if (SRC / d).is_dir():
            shutil.copytree(SRC / d, out / d)

    existing = len(base_documents(out))
    if existing > n_total:
        sys.exit(f"gen_repo: the bundled repo already has {existing} documents > {n_total}")

    tenant_tpl = []
    for t in TENANT_TEMPLATES:
        text = (SRC / "config/tenants" / t / "tenant.toml").read_text()
        meta = tomllib.loads(text)
        tenant_tpl.append((t, meta, text))
    config_tpl = []
    for fname, t in CONFIG_TEMPLATES:
        text = (SRC / "config/tenants" / t / fname).read_text()
        config_tpl.append((fname, t, text))
    placement_tpl = (SRC / "inventory/placement/nordlys-energi.toml").read_text()
    shards = shards_by_site(SRC)

    remaining = n_total - existing
    tenants = items = 0
    i = 0
    while remaining > 0:
        i += 1
        tid = f"t-{i:05d}"
        tname = f"Tenant {i:05d} AS"
        tpl_id, meta, tpl = tenant_tpl[i % len(tenant_tpl)]
        site = meta["home_site"]
        tdir = out / "config/tenants" / tid
        tdir.mkdir(parents=True)
        made = []

        # tenant.toml: the template's layout, new id/name/contact, slightly varied quotas.
        text = strip_comments(tpl.replace(tpl_id, tid), f"layout of tenant {tpl_id}")
        text = set_str(text, "id", tid)
        text = set_str(text, "name", tname)
        text = set_str(text, "contact", f"ops@{tid}.example")
        text = set_int(text, "requests_per_second", meta["quotas"]["requests_per_second"] + i % 50)
        text = set_int(text, "storage_gb", meta["quotas"]["storage_gb"] + i % 100)
        made.append((tdir / "tenant.toml", text))

        # inventory/placement/<id>.toml: the home site's shards, spread over them.
        if remaining >= 2:
            text = strip_comments(placement_tpl, "layout of placement nordlys-energi")
            text = set_str(text, "tenant", tid)
            for kind in SERVICE_KINDS:
                ids = shards[site][kind]
                text = re.sub(
                    rf'^{kind} = "[^"]*"$', f'{kind} = "{ids[i % len(ids)]}"', text, flags=re.M
                )
            made.append((out / "inventory/placement" / f"{tid}.toml", text))
        else:
            # One document left: a config item under an existing tenant keeps the repo clean.
            made = []
            tdir.rmdir()
            tdir = out / "config/tenants" / TENANT_TEMPLATES[0]

        # A config item for every third tenant (and for the odd last document).
        if (i % 3 == 0 and remaining - len(made) >= 1) or not made:
            fname, ctpl_id, ctext = config_tpl[(i // 3) % len(config_tpl)]
            owner = tdir.name
            text = strip_comments(ctext.replace(ctpl_id, owner), f"layout of {ctpl_id}/{fname}")
            stem = fname[:-5] if made else f"gen-{i:05d}"
            made.append((tdir / f"{stem}.toml", text))
            items += 1
        if any(p.name == "tenant.toml" for p, _ in made):
            tenants += 1
        for p, text in made:
            p.write_text(text)
        remaining -= len(made)

    total = len(base_documents(out))
    assert total == n_total, (total, n_total)
    print(
        f"gen_repo: {out}: {total} documents ({existing} bundled, {tenants} tenants + "
        f"{tenants} placements + {items} config items generated)",
        file=sys.stderr,
    )


def main(argv):
    if len(argv) >= 2 and argv[1] == "--list-kinds":
        if len(argv) != 3:
            sys.exit(__doc__)
        for kind, rel in base_documents(Path(argv[2])):
            if kind != "runbook":  # runbook markdown has no schema
                print(f"{kind}\t{rel}")
        return
    if len(argv) not in (2, 3) or argv[1].startswith("-"):
        sys.exit(__doc__)
    n = int(argv[2]) if len(argv) == 3 else 10000
    generate(Path(argv[1]), n)


if __name__ == "__main__":
    main(sys.argv)
