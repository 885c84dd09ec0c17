#!/usr/bin/env bash
# Fails when a crate in Cargo.toml's [dependencies] is named nowhere in src/, or one in
# [dev-dependencies] nowhere in tests/ or benches/: what cargo-machete checks, without a
# download. A crate used only through a macro or a feature may need its name in a comment.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import pathlib, re, sys, tomllib

manifest = tomllib.loads(pathlib.Path("Cargo.toml").read_text())

def text(*dirs):
    # Code only: a crate named in a comment is not used.
    code = (p.read_text() for d in dirs for p in pathlib.Path(d).rglob("*.rs"))
    return "\n".join(re.sub(r"//.*", "", c) for c in code)

unused = []
for table, dirs in (("dependencies", ("src",)), ("dev-dependencies", ("tests", "benches"))):
    body = text(*dirs)
    for name in manifest.get(table, {}):
        ident = name.replace("-", "_")
        if not re.search(rf"\b{re.escape(ident)}(::|;)", body):
            unused.append(f"{table}: {name} (no `{ident}` in {', '.join(dirs)})")
if unused:
    print("unused dependencies:\n  " + "\n  ".join(unused), file=sys.stderr)
    sys.exit(1)
print("unused-deps: every dependency is used")
PY
