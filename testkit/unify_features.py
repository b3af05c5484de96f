#!/usr/bin/env python3
"""Feature unification check (the "workspace-hack" pattern).

CI builds the workspace twice: with every feature (DataFusion, S3) and with the default ones.
Where the first enables more features of a shared dependency (arrow, tokio, serde, ...), that
crate and everything above it would be compiled twice. testkit/Cargo.toml therefore depends on
each such crate with the all-features build's features, so both builds resolve them alike and
the second one reuses the first one's artifacts.

Run from the repository root: prints the `[dependencies]` lines testkit/Cargo.toml needs and
exits 1 when it lacks any (CI runs it), 0 when the two builds agree on every shared crate.
"""

import collections
import re
import subprocess
import sys


def features(all_features: bool) -> dict:
    """(crate, version) -> features, over every dependency of a workspace test build."""
    args = ["cargo", "tree", "--workspace", "--locked", "-e", "normal,build,dev", "--prefix", "none",
            "--format", "{p} [{f}]"]
    if all_features:
        args.append("--all-features")
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    found = collections.defaultdict(set)
    for line in out.splitlines():
        m = re.match(r"(\S+) v(\S+)(?: \([^)]*\))*(?: \[(.*)\])?", line.strip())
        if m and not m.group(1).startswith("riskpipe"):
            found[(m.group(1), m.group(2))] |= {f for f in (m.group(3) or "").split(",") if f}
    return found


def main() -> int:
    default, every = features(False), features(True)
    differ = sorted(k for k in default if k in every and default[k] != every[k])
    names = collections.Counter(name for name, _ in differ)
    for name, version in differ:
        feats = set(every[(name, version)])
        on = "default" in feats
        feats.discard("default")
        key = name if names[name] == 1 else f"{name}_{version.replace('.', '_')}"
        package = "" if key == name else f'package = "{name}", '
        listed = ", ".join(f'"{f}"' for f in sorted(feats))
        print(f'{key} = {{ {package}version = "{version}", default-features = {str(on).lower()}, '
              f"features = [{listed}] }}")
    if differ:
        print(f"{len(differ)} shared crates differ in features between the default and the "
              "all-features build: add the lines above to testkit/Cargo.toml", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
