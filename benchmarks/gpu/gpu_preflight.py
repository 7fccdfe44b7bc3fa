"""Checks for the one GPU run that need no GPU (benchmarks/gpu/gpu_device_run.sh runs them, on the
device and in its CPU dry run). Standard library only, plus ``packaging`` for the dependency check.

    python benchmarks/gpu/gpu_preflight.py wheels  --dir benchmarks/gpu/wheels     # exactly the pinned wheels
    python benchmarks/gpu/gpu_preflight.py carry   --dir benchmarks/gpu/wheels     # tree + wheels < 64 MiB
    python benchmarks/gpu/gpu_preflight.py closure --dir benchmarks/gpu/wheels     # every dependency met
    python benchmarks/gpu/gpu_preflight.py imports --required zarr,dask --optional rmm

Each prints what it measured and exits 1 naming what failed.
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WHEEL_LIST = HERE / "gpu_wheels.txt"
DEVICE_IMAGE = HERE / "gpu_device_image.txt"
CARRY_LIMIT = 64 * 1024 * 1024  # what one device call may carry: tracked tree + carried paths
# The device's Python (3.12.3, Linux x86-64) for evaluating the wheels' dependency markers.
DEVICE_MARKERS = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_list(path: Path) -> tuple[dict[str, str | None], dict[str, str]]:
    """``name[==version]`` lines (comments after ``#``) → {name: version or None}; and the
    ``# not-carried: NAME reason`` lines → {name: reason}."""
    pins: dict[str, str | None] = {}
    not_carried: dict[str, str] = {}
    for line in path.read_text().splitlines():
        marked = re.match(r"#\s*not-carried:\s*(\S+)\s*(.*)", line.strip())
        if marked:
            not_carried[normalise(marked.group(1))] = marked.group(2)
            continue
        spec = line.split("#", 1)[0].strip()
        if not spec:
            continue
        name, _, version = spec.partition("==")
        pins[normalise(name)] = version.strip() or None
    return pins, not_carried


def dry_run_base(path: Path = DEVICE_IMAGE) -> list[str]:
    """The image's packages marked ``dry-run``, as pip requirements."""
    return [line.split("#")[0].strip() for line in path.read_text().splitlines() if re.search(r"#\s*dry-run", line)]


def wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return normalise(name), version


def check_wheels(folder: Path, wheel_list: Path) -> list[str]:
    """Problems with the wheel folder: a pin without its wheel, a second version, a wheel not pinned."""
    pins, _ = read_list(wheel_list)
    found: dict[str, list[str]] = {}
    for whl in sorted(folder.glob("*.whl")):
        name, version = wheel_name_version(whl)
        found.setdefault(name, []).append(version)
    problems = []
    for name, version in pins.items():
        if version is None:
            problems.append(f"{name} is not pinned in {wheel_list.name} (pin every wheel: name==version)")
        have = found.get(name, [])
        if not have:
            problems.append(f"missing wheel: {name}=={version}")
        elif len(have) > 1:
            problems.append(f"several versions of {name}: {', '.join(have)} (one stops the whole install)")
        elif version is not None and have[0] != version:
            problems.append(f"{name}: wheel {have[0]}, pinned {version}")
    for name in sorted(set(found) - set(pins)):
        problems.append(f"wheel not in {wheel_list.name}: {name} {', '.join(found[name])}")
    return problems


def tree_bytes(root: Path = ROOT) -> tuple[int, int]:
    """Bytes and files of what a device call sends besides the carried paths: tracked files and
    untracked files that git does not ignore."""
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    total = files = 0
    for rel in filter(None, listed):
        path = root / rel.decode()
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
            files += 1
    return total, files


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def wheel_requirements(whl: Path) -> list[str]:
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace")
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def check_closure(folder: Path, wheel_list: Path, image: Path) -> tuple[list[str], int]:
    """Every requirement of every carried wheel (markers evaluated for the device's Python) met by
    a carried wheel at a matching version, by the device image (at its known version, if any), or
    named as not carried with a reason. Returns the problems and how many requirements were checked."""
    from packaging.requirements import Requirement

    carried = {name: version for name, version in (wheel_name_version(w) for w in folder.glob("*.whl"))}
    present, _ = read_list(image)
    _, not_carried = read_list(wheel_list)
    problems = []
    checked = 0
    for whl in sorted(folder.glob("*.whl")):
        for text in wheel_requirements(whl):
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(DEVICE_MARKERS):
                continue
            checked += 1
            name = normalise(req.name)
            if name in carried:
                if req.specifier and not req.specifier.contains(carried[name], prereleases=True):
                    problems.append(f"{whl.name}: needs {req}, carried {carried[name]}")
            elif name in present:
                known = present[name]
                if known and req.specifier and not req.specifier.contains(known, prereleases=True):
                    problems.append(f"{whl.name}: needs {req}, the device image has {known}")
            elif name not in not_carried:
                problems.append(f"{whl.name}: needs {req}: neither carried nor on the device image")
    return problems, checked


def check_imports(required: list[str], optional: list[str]) -> list[str]:
    failed = []
    for name in required + optional:
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(name)
        except BaseException as exc:  # an extension module can raise anything, SystemExit included
            kind = "REQUIRED" if name in required else "optional"
            print(f"  {name:<28} FAILED ({kind}): {type(exc).__name__}: {exc}".rstrip()[:300])
            if name in required:
                failed.append(name)
            continue
        version = getattr(module, "__version__", "")
        where = Path(getattr(module, "__file__", "") or "").parent
        print(f"  {name:<28} {version!s:<16} {time.perf_counter() - t0:5.2f} s  {where}")
    return failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("wheels", "carry", "closure"):
        s = sub.add_parser(name)
        s.add_argument("--dir", type=Path, required=True, help="the wheel folder")
        s.add_argument("--list", type=Path, default=WHEEL_LIST)
    sub.choices["carry"].add_argument("--limit", type=int, default=CARRY_LIMIT)
    sub.choices["carry"].add_argument(
        "--root", type=Path, default=ROOT, help="the working tree sent (default: this one)"
    )
    sub.choices["closure"].add_argument("--image", type=Path, default=DEVICE_IMAGE)
    s = sub.add_parser("imports")
    s.add_argument("--required", default="")
    s.add_argument("--optional", default="")
    sub.add_parser("dry-run-base")
    args = p.parse_args(argv)

    if args.command == "wheels":
        problems = check_wheels(args.dir, args.list)
        for whl in sorted(args.dir.glob("*.whl")):
            print(f"  {whl.stat().st_size:>12,}  {whl.name}")
        print(f"wheels: {len(list(args.dir.glob('*.whl')))} files, {folder_bytes(args.dir):,} B")
    elif args.command == "carry":
        tree, files = tree_bytes(args.root)
        wheels = folder_bytes(args.dir)
        carry = tree + wheels
        print(f"tree_bytes={tree} ({files} files)")
        print(f"carried_bytes={wheels} ({args.dir})")
        print(f"carry_bytes={carry} ({carry / 2**20:.1f} MiB of {args.limit / 2**20:.0f} MiB)")
        problems = [] if carry < args.limit else [f"the carry is {carry:,} B, over the limit of {args.limit:,} B"]
    elif args.command == "closure":
        problems, checked = check_closure(args.dir, args.list, args.image)
        print(f"closure: {checked} requirements of {len(list(args.dir.glob('*.whl')))} wheels checked")
    elif args.command == "imports":
        split = lambda s: [n for n in s.split(",") if n]  # noqa: E731
        failed = check_imports(split(args.required), split(args.optional))
        problems = [f"required import failed: {name}" for name in failed]
    else:
        print(" ".join(dry_run_base()))
        return 0
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
