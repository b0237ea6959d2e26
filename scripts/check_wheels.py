"""Check the wheels and the sdist that `make wheels` put in dist/.

For every platform wheel: the file name and the WHEEL tags match the Go target,
the binary sits at weave_sidecar/bin/ with mode 0755, its ELF / Mach-O / PE
header names the target's OS and architecture (a static ELF; a Mach-O whose
minimum macOS is not above the tag's), and its embedded build info says
GOOS, GOARCH, CGO_ENABLED=0 and -trimpath. The binary must report the package
version (`--version`) where this machine can run it: natively, or the
linux/arm64 one under qemu-aarch64-static (the other targets are run on their
own runners by .github/workflows/wheels.yml). `pip download --platform` must pick
the right wheel (or none) for each platform. The linux x86_64 wheel (or this
machine's own) is installed into a fresh venv and passes scripts/wheel_smoke.py.
The sdist must hold the Go module and no binary, build a platform wheel with Go
and a pure wheel without it; both install and import.

Usage: python scripts/check_wheels.py [--dist DIR] [--go GO]
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import venv
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "scripts" / "wheel_smoke.py"
Target = tuple[str, str]


def _from_source(path: Path, name: str) -> Any:
    """The literal assigned to name in path (setup.py runs setup() on import)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise RuntimeError(f"no {name} = <literal> in {path}")


PLATFORM_TAGS: dict[Target, str] = _from_source(ROOT / "setup.py", "PLATFORM_TAGS")


def read_version() -> str:
    version: str = _from_source(
        ROOT / "python" / "weave_sidecar" / "_version.py", "__version__"
    )
    return version


# (platform passed to `pip download --platform`, the target whose wheel pip
# must choose, or None when no wheel fits). pip does not widen a given linux
# platform to older glibc/musl versions, so these name the tags we ship.
RESOLUTION = [
    ("manylinux2014_x86_64", ("linux", "amd64")),
    ("manylinux_2_17_x86_64", ("linux", "amd64")),
    ("musllinux_1_1_x86_64", ("linux", "amd64")),
    ("manylinux2014_aarch64", ("linux", "arm64")),
    ("musllinux_1_1_aarch64", ("linux", "arm64")),
    ("macosx_12_0_x86_64", ("darwin", "amd64")),
    ("macosx_15_0_arm64", ("darwin", "arm64")),
    ("win_amd64", ("windows", "amd64")),
    ("macosx_11_0_arm64", None),  # older than Go supports
    ("linux_armv7l", None),
]

ELF_MACHINES = {62: "amd64", 183: "arm64"}
MACHO_CPUS = {0x01000007: "amd64", 0x0100000C: "arm64"}
PE_MACHINES = {0x8664: "amd64", 0xAA64: "arm64"}
EXE_MAGIC = (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"MZ\x90\x00")
LC_BUILD_VERSION = 0x32
LC_VERSION_MIN_MACOSX = 0x24


class Checks:
    """Runs named checks, prints one line each and counts the outcome."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []
        self.skipped = 0

    def run(self, name: str, check: Callable[[], str | None]) -> None:
        try:
            note = check()
        except Skip as skip:
            self.skipped += 1
            print(f"skip  {name}: {skip}", flush=True)
            return
        except Exception as exc:  # a check failed: report it, run the rest
            self.failed.append(name)
            print(f"FAIL  {name}: {exc}", flush=True)
            return
        self.passed += 1
        print(f"ok    {name}" + (f": {note}" if note else ""), flush=True)


class Skip(Exception):
    """A check that cannot run here (the reason is the message)."""


class CheckError(Exception):
    pass


def expect(cond: bool, message: str) -> None:
    if not cond:
        raise CheckError(message)


# Binary headers -------------------------------------------------------------


def read_header(data: bytes) -> tuple[str, str, dict[str, object]]:
    """(GOOS, GOARCH, extra facts) from an ELF, Mach-O or PE executable."""
    if data[:4] == b"\x7fELF":
        return read_elf(data)
    if data[:4] == b"\xcf\xfa\xed\xfe":
        return read_macho(data)
    if data[:2] == b"MZ":
        return read_pe(data)
    raise CheckError(f"unknown executable format (magic {data[:4].hex()})")


def read_elf(data: bytes) -> tuple[str, str, dict[str, object]]:
    expect(data[4] == 2 and data[5] == 1, "ELF is not 64-bit little-endian")
    (machine,) = struct.unpack_from("<H", data, 18)
    (phoff,) = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    types = [
        struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)
    ]
    static = 2 not in types and 3 not in types  # no PT_DYNAMIC, no PT_INTERP
    arch = ELF_MACHINES.get(machine, f"e_machine {machine}")
    return "linux", arch, {"static": static}


def read_macho(data: bytes) -> tuple[str, str, dict[str, object]]:
    cpu, _, _, ncmds = struct.unpack_from("<IIII", data, 4)
    minos = None
    offset = 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, offset)
        if cmd == LC_BUILD_VERSION:
            (packed,) = struct.unpack_from("<I", data, offset + 12)
            minos = (packed >> 16, (packed >> 8) & 0xFF)
        elif cmd == LC_VERSION_MIN_MACOSX:
            (packed,) = struct.unpack_from("<I", data, offset + 8)
            minos = (packed >> 16, (packed >> 8) & 0xFF)
        offset += size
    return "darwin", MACHO_CPUS.get(cpu, f"cputype {cpu:#x}"), {"minos": minos}


def read_pe(data: bytes) -> tuple[str, str, dict[str, object]]:
    (pe,) = struct.unpack_from("<I", data, 0x3C)
    expect(data[pe : pe + 4] == b"PE\0\0", "MZ file without a PE header")
    (machine,) = struct.unpack_from("<H", data, pe + 4)
    optional = pe + 24
    (magic,) = struct.unpack_from("<H", data, optional)
    (subsystem,) = struct.unpack_from("<H", data, optional + 68)
    arch = PE_MACHINES.get(machine, f"machine {machine:#x}")
    return "windows", arch, {"pe32plus": magic == 0x20B, "console": subsystem == 3}


# Per-wheel checks -------------------------------------------------------------


def binary_name(goos: str) -> str:
    return "weave-sidecar.exe" if goos == "windows" else "weave-sidecar"


def check_layout(wheel: Path, target: Target, version: str) -> str:
    tag = PLATFORM_TAGS[target]
    want_name = f"weave_sidecar-{version}-py3-none-{tag}.whl"
    expect(wheel.name == want_name, f"name {wheel.name}, want {want_name}")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta = archive.read(f"weave_sidecar-{version}.dist-info/WHEEL").decode()
        info = archive.getinfo(f"weave_sidecar/bin/{binary_name(target[0])}")
    tags = sorted(
        line.split(": ", 1)[1] for line in meta.splitlines() if line.startswith("Tag: ")
    )
    want_tags = sorted(f"py3-none-{p}" for p in tag.split("."))
    expect(tags == want_tags, f"WHEEL tags {tags}, want {want_tags}")
    expect(
        "Root-Is-Purelib: false" in meta, "WHEEL does not say Root-Is-Purelib: false"
    )
    bins = [n for n in names if n.startswith("weave_sidecar/bin/")]
    expect(bins == [info.filename], f"bin/ holds {bins}, want only {info.filename}")
    expect(
        not any(".data/" in n for n in names), "files under .data/: binary not at root"
    )
    mode = stat.S_IMODE(info.external_attr >> 16)
    expect(mode == 0o755, f"binary mode {mode:o}, want 755")
    return f"{len(tags)} tags, binary mode 755"


def check_header(binary: Path, target: Target) -> str:
    goos, goarch, facts = read_header(binary.read_bytes())
    expect((goos, goarch) == target, f"header says {goos}/{goarch}")
    if goos == "linux":
        expect(facts["static"] is True, "ELF has PT_INTERP or PT_DYNAMIC: not static")
        return "static ELF"
    if goos == "darwin":
        minos = facts["minos"]
        tag_version = PLATFORM_TAGS[target].split("_")[1:3]
        tag_min = (int(tag_version[0]), int(tag_version[1]))
        expect(isinstance(minos, tuple), "Mach-O without a minimum macOS version")
        expect(minos <= tag_min, f"binary needs macOS {minos}, tag says {tag_min}")  # type: ignore[operator]
        return f"Mach-O, minimum macOS {minos[0]}.{minos[1]}"  # type: ignore[index]
    expect(
        facts["pe32plus"] is True and facts["console"] is True,
        "not a PE32+ console exe",
    )
    return "PE32+ console executable"


def check_build_info(go: str, binary: Path, target: Target) -> str:
    out = subprocess.run(
        [go, "version", "-m", str(binary)], capture_output=True, text=True, check=True
    ).stdout
    settings = {}
    for line in out.splitlines():
        parts = line.strip().split("\t", 1)
        if parts[0] == "build" and "=" in parts[1]:
            key, value = parts[1].split("=", 1)
            settings[key] = value
    want = {
        "GOOS": target[0],
        "GOARCH": target[1],
        "CGO_ENABLED": "0",
        "-trimpath": "true",
    }
    got = {k: settings.get(k) for k in want}
    expect(got == want, f"build settings {got}, want {want}")
    # -trimpath keeps -ldflags (so the -X version) out of the build info: the
    # version is checked by running the binary (--version) where it can run.
    return "GOOS, GOARCH, CGO_ENABLED=0, -trimpath"


def host_target() -> Target | None:
    system = {"Linux": "linux", "Darwin": "darwin", "Windows": "windows"}.get(
        platform.system()
    )
    machine = {
        "x86_64": "amd64",
        "amd64": "amd64",
        "aarch64": "arm64",
        "arm64": "arm64",
    }.get(platform.machine().lower())
    return (system, machine) if system and machine else None


def check_runs(binary: Path, target: Target, version: str) -> str:
    if target == host_target():
        cmd = [str(binary), "--version"]
        how = "natively"
    elif target == ("linux", "arm64") and host_target() == ("linux", "amd64"):
        qemu = shutil.which("qemu-aarch64-static")
        if qemu is None:
            raise Skip("no qemu-aarch64-static (apt-get install qemu-user-static)")
        cmd = [qemu, str(binary), "--version"]
        how = "under qemu-aarch64-static"
    else:
        raise Skip(
            f"cannot run a {target[0]}/{target[1]} binary here (wheels.yml does)"
        )
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    expect(
        out.returncode == 0, f"--version exited {out.returncode}: {out.stderr[-500:]}"
    )
    expect(
        version in out.stdout,
        f"--version printed {out.stdout.strip()!r}, want {version}",
    )
    return f"{out.stdout.strip()!r} {how}"


# pip resolution, installs -------------------------------------------------------


def pip_pick(dist: Path, plat: str, work: Path) -> str | None:
    dest = Path(tempfile.mkdtemp(dir=work))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "-q",
            "--no-index",
            "--find-links",
            str(dist),
            "--only-binary=:all:",
            "--platform",
            plat,
            "--no-deps",
            "--dest",
            str(dest),
            "weave-sidecar",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    picked = [p.name for p in dest.iterdir()]
    if out.returncode != 0:
        expect(
            "No matching distribution" in out.stderr, f"pip failed: {out.stderr[-500:]}"
        )
        return None
    expect(len(picked) == 1, f"pip downloaded {picked}")
    return picked[0]


def fresh_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    scripts = "Scripts" if os.name == "nt" else "bin"
    return path / scripts / ("python.exe" if os.name == "nt" else "python")


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WEAVE_", "WANDB_", "WF_"))
    }
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def run(
    cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> str:
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=env or clean_env(),
        cwd=cwd,
        timeout=600,
    )
    expect(
        out.returncode == 0,
        f"{' '.join(cmd[:4])} ... exited {out.returncode}:\n"
        f"{(out.stdout + out.stderr)[-3000:]}",
    )
    return out.stdout + out.stderr


def pip_install(python: Path, wheel: Path) -> None:
    run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-index",
            "--force-reinstall",
            "--no-deps",
            str(wheel),
        ]
    )


def check_smoke(python: Path, wheel: Path, work: Path) -> str:
    pip_install(python, wheel)
    env = clean_env(PATH=path_without_go())
    out = run([str(python), str(SMOKE)], env=env, cwd=work)
    return out.strip().splitlines()[-1]


def path_without_go() -> str:
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(d for d in dirs if not (Path(d) / "go").exists())


def check_sdist_contents(sdist: Path, version: str) -> str:
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
        executables = []
        for member in archive.getmembers():
            data = archive.extractfile(member) if member.isfile() else None
            if data is not None and data.read(4) in EXE_MAGIC:
                executables.append(member.name)
    need = [
        "go/go.mod",
        "go/go.sum",
        "go/cmd/weave-sidecar/main.go",
        "setup.py",
        "pyproject.toml",
        "README.md",
        "python/weave_sidecar/_version.py",
    ]
    missing = [n for n in need if n not in names]
    expect(not missing, f"sdist lacks {missing}")
    binaries = [n for n in names if "/bin/" in n or n.endswith((".exe", ".test"))]
    expect(not binaries + executables, f"sdist holds binaries {binaries + executables}")
    expect(sdist.name == f"weave_sidecar-{version}.tar.gz", f"sdist name {sdist.name}")
    return f"{len(names)} files, Go module included, no binary"


def build_from_sdist(sdist: Path, out: Path, env: dict[str, str]) -> tuple[Path, str]:
    """`pip wheel` the sdist (what `pip install` of it does before installing)."""
    log = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-v",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "-w",
            str(out),
            str(sdist),
        ],
        env=env,
    )
    (wheel,) = out.glob("*.whl")
    return wheel, log


def check_sdist_with_go(sdist: Path, python: Path, work: Path, version: str) -> str:
    host = host_target()
    if host is None or host not in PLATFORM_TAGS:
        raise Skip(
            f"no wheel tag for this machine ({platform.system()} {platform.machine()})"
        )
    env = clean_env(WEAVE_SIDECAR_REQUIRE_BINARY="1")
    for key in ("GOOS", "GOARCH"):
        env.pop(key, None)
    wheel, _ = build_from_sdist(sdist, work / "sdist-go", env)
    expect(
        wheel.name.endswith(f"-py3-none-{PLATFORM_TAGS[host]}.whl"),
        f"built {wheel.name}",
    )
    pip_install(python, wheel)
    out = run(
        [str(python), "-m", "weave_sidecar", "--version"],
        env=clean_env(PATH=path_without_go()),
    )
    expect(version in out, f"--version printed {out.strip()!r}")
    return f"{wheel.name}; installed binary says {out.strip()!r}"


PURE_CHECK = """
import weave_sidecar
try:
    weave_sidecar.find_sidecar_bin()
except weave_sidecar.SidecarNotFoundError:
    print("no binary:", weave_sidecar.__version__)
else:
    raise SystemExit("a pure wheel must not find a sidecar binary")
"""


def check_sdist_without_go(sdist: Path, python: Path, work: Path, version: str) -> str:
    env = clean_env(PATH=path_without_go())
    wheel, log = build_from_sdist(sdist, work / "sdist-nogo", env)
    expect(
        wheel.name == f"weave_sidecar-{version}-py3-none-any.whl", f"built {wheel.name}"
    )
    expect("no Go toolchain found" in log, "the build did not warn about missing Go")
    with zipfile.ZipFile(wheel) as archive:
        expect(
            not any("/bin/" in n for n in archive.namelist()), "pure wheel holds bin/"
        )
    pip_install(python, wheel)
    out = run([str(python), "-c", PURE_CHECK], env=env, cwd=work)
    return f"{wheel.name}, warned; import works, {out.strip()!r}"


# Driver -------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dist", type=Path, default=ROOT / "dist")
    parser.add_argument("--go", default=os.environ.get("GO", "go"))
    args = parser.parse_args()
    dist: Path = args.dist.resolve()
    version = read_version()
    go = shutil.which(args.go)
    checks = Checks()

    wheels = sorted(dist.glob("*.whl"))
    by_target: dict[Target, Path] = {}
    for wheel in wheels:
        plat = wheel.name[: -len(".whl")].split("-")[-1]
        target = next((t for t, tag in PLATFORM_TAGS.items() if tag == plat), None)
        if target is None:
            checks.failed.append(wheel.name)
            print(f"FAIL  {wheel.name}: no Go target has this platform tag", flush=True)
            continue
        by_target[target] = wheel
    missing = [f"{t[0]}/{t[1]}" for t in PLATFORM_TAGS if t not in by_target]
    checks.run(
        "one wheel per target", lambda: expect(not missing, f"no wheel for {missing}")
    )

    work = Path(
        tempfile.mkdtemp(prefix="wsc-check-", dir="/tmp" if os.name != "nt" else None)
    )
    try:
        for target, wheel in sorted(by_target.items()):
            name = f"{target[0]}/{target[1]}"
            binary = work / name.replace("/", "-") / binary_name(target[0])
            binary.parent.mkdir()
            with zipfile.ZipFile(wheel) as archive:
                binary.write_bytes(
                    archive.read(f"weave_sidecar/bin/{binary_name(target[0])}")
                )
            binary.chmod(0o755)
            checks.run(
                f"{name} layout", lambda w=wheel, t=target: check_layout(w, t, version)
            )
            checks.run(f"{name} header", lambda b=binary, t=target: check_header(b, t))
            if go is None:
                checks.run(f"{name} build info", lambda: raise_skip("no go on PATH"))
            else:
                checks.run(
                    f"{name} build info",
                    lambda b=binary, t=target: check_build_info(go, b, t),
                )
            checks.run(
                f"{name} --version",
                lambda b=binary, t=target: check_runs(b, t, version),
            )

        for plat, want in RESOLUTION:
            want_name = by_target[want].name if want in by_target else None

            def resolve(plat: str = plat, want_name: str | None = want_name) -> str:
                got = pip_pick(dist, plat, work)
                expect(got == want_name, f"pip picked {got}, want {want_name}")
                return got or "nothing (as it should)"

            checks.run(f"pip --platform {plat}", resolve)

        python = fresh_venv(work / "venv")
        native = host_target()
        smoke_target = native if native in by_target else ("linux", "amd64")
        if smoke_target in by_target and smoke_target == native:
            checks.run(
                f"smoke test of the {smoke_target[0]}/{smoke_target[1]} wheel",
                lambda: check_smoke(python, by_target[smoke_target], work),
            )
        else:
            checks.run("smoke test", lambda: raise_skip("no wheel for this machine"))

        sdists = sorted(dist.glob("*.tar.gz"))
        checks.run("one sdist", lambda: expect(len(sdists) == 1, f"sdists: {sdists}"))
        if len(sdists) == 1:
            sdist = sdists[0]
            checks.run("sdist contents", lambda: check_sdist_contents(sdist, version))
            checks.run(
                "sdist with Go",
                lambda: check_sdist_with_go(sdist, python, work, version),
            )
            checks.run(
                "sdist without Go",
                lambda: check_sdist_without_go(sdist, python, work, version),
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"check-wheels: {checks.passed} passed, {len(checks.failed)} failed, "
        f"{checks.skipped} skipped"
    )
    return 1 if checks.failed else 0


def raise_skip(reason: str) -> str:
    raise Skip(reason)


if __name__ == "__main__":
    sys.exit(main())
