"""Print asrd's requirements from pyproject.toml, one a line, for the image's pip layers: the
dependencies, or with `--extra NAME` (repeatable) those extras' own, references to asrd itself
left out; an extra that pyproject.toml lacks adds nothing. The image installs them before
copying the code, so a code change rebuilds only its last layer."""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--extra", action="append", default=[], help="an optional-dependencies group (gpu, ...)"
    )
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    args = parser.parse_args()
    project = tomllib.loads(args.pyproject.read_text())["project"]
    requirements = [] if args.extra else project["dependencies"]
    for extra in args.extra:
        if extra not in project.get("optional-dependencies", {}):
            print(f"requirements.py: no extra {extra!r} in pyproject.toml", file=sys.stderr)
        requirements += project.get("optional-dependencies", {}).get(extra, [])
    for requirement in requirements:
        if not requirement.replace(" ", "").startswith("asrd"):
            print(requirement)


if __name__ == "__main__":
    main()
