"""The static files of Visdom's page, installed once from npm so the server never needs a CDN.

Visdom 0.2.4 downloads about 22 JS/CSS/font files and MathJax 2.7.5 from CDNs at every start
and crashes without a network. The same files are published as npm packages at the versions
Visdom pins: `npm pack` fetches each package tarball once (from npm's cache after that), the
tarball is checked against the sha512 integrity pinned below, and the files are unpacked into
the installed visdom package together with static/version.built. From then on the server,
ours or `python -m visdom.server`, starts with no network at all.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str  # sha512 of the tarball, as the npm registry publishes it
    files: dict[str, str]  # path in the package -> path under visdom's static/
    tree: str = ""  # unpack the whole package here instead (but its unminified copy, unpacked/)

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"


GLYPHS = "glyphicons-halflings-regular"
PACKAGES = (
    Package("jquery", "3.1.1", "sha512-zuiWRmx65Kd1oFGdWLvAjbsumdOBFvs3r1vuqCyKFF79R7exBHNbiNEJ8LR+xkzgfxqBznMD/4Cv6PHXS6mvEw==",
            {"dist/jquery.min.js": "js/jquery.min.js"}),
    Package("bootstrap", "3.3.7", "sha512-qcFaisBrcBhTFkz1IUnGDYnX6ZWfFzH8zOixUDtHW9Ip+r+7MfMFav2rzy7cIHc7rgIg7xjhWBoo1mS/U26j4g==",
            {"dist/js/bootstrap.min.js": "js/bootstrap.min.js",
             "dist/css/bootstrap.min.css": "css/bootstrap.min.css",
             **{f"dist/fonts/{GLYPHS}.{ext}": f"fonts/{GLYPHS}.{ext}"
                for ext in ("eot", "woff2", "woff", "ttf")},
             f"dist/fonts/{GLYPHS}.svg": f"fonts/{GLYPHS}.svg#glyphicons_halflingsregular"}),
    Package("react", "16.2.0", "sha512-ZmIomM7EE1DvPEnSFAHZn9Vs9zJl5A9H7el0EGTE6ZbW9FKe/14IYAlPbC8iH25YarEQxZL+E8VW7Mi7kfQrDQ==",
            {"umd/react.production.min.js": "js/react-react.min.js"}),
    Package("react-dom", "16.2.0", "sha512-zpGAdwHVn9K0091d+hr+R0qrjoJ84cIBFL2uU60KvWBPfZ7LPSrfqviTxGHWN0sjPZb2hxWzMexwrvJdKePvjg==",
            {"umd/react-dom.production.min.js": "js/react-dom.min.js"}),
    Package("react-modal", "3.1.10", "sha512-7b77AGWCkdg0YOf/qcYIGCpuwbxRwOA8P3UrUovk4grUNv+idOmHovJAx/Dcd3fuwHtgixxVjpcjVG60985MSA==",
            {"dist/react-modal.min.js": "js/react-modal.min.js"}),
    Package("plotly.js-dist-min", "2.11.1", "sha512-F9WWNht0D3yBLZGHbLoJNfvplXvy+GUPSsA/lCbMuYd/UwzSu6Vmyprxlps9Einw1LDS1hYBrJeioK0lE3ieXA==",
            {"plotly.min.js": "js/plotly-plotly.min.js"}),
    Package("sjcl", "1.0.7", "sha512-xQbiwKfiAj6vyk44ANJ5RRymALRdRZOuRoKNYkWUU404p/RFXmMaay1Z5vRn30GJjkD+psox4Jd38jZojSuNYA==",
            {"sjcl.js": "js/sjcl.js"}),
    Package("layout-bin-packer", "1.4.0", "sha512-dQOZnajbOBGIcS9YlzKrkRtMCGa2oEpyf1zGRn93suphSvPclJe54Sbgtb053GJ21DUk84IBzaeQvjn+Gb10fA==",
            {"dist/layout-bin-packer.js": "js/layout_bin_packer.js",
             "dist/layout-bin-packer.js.map": "js/layout-bin-packer.js.map"}),
    Package("d3", "3.5.17", "sha512-yFk/2idb8OHPKkbAL8QaOaqENNoMhIaSHZerk3oQsECwkObkCpJyjYwCe+OHiq6UEdhe1m8ZGARRRO3ljFjlKg==",
            {"d3.min.js": "js/d3.v3.min.js"}),
    Package("d3-selection-multi", "1.0.1", "sha512-mEnRkJ6A+Otd1LuRPV3az+s/RLDmIEhuz/MnT21O2nPcWNH7wZotdIlRjMA4Wpr+n7AESQ5fD8v1J3nL2Mnw9g==",
            {"build/d3-selection-multi.js": "js/d3-selection-multi.v1.js"}),
    Package("save-svg-as-png", "1.4.17", "sha512-7QDaqJsVhdFPwviCxkgHiGm9omeaMBe1VKbHySWU6oFB2LtnGCcYS13eVoslUgq6VZC6Tjq/HddBd1K6p2PGpA==",
            {"lib/saveSvgAsPng.js": "js/saveSvgAsPng.js"}),
    Package("react-resizable", "1.4.6", "sha512-4zLORO51u0/mlDsrVCAA4p266d+3mb2ZMNdiWOotAh/PdnfrRzZhgePmKE08PSQatXVIfMjmyD+Sapay8tmxdQ==",
            {"css/styles.css": "css/react-resizable-styles.css"}),
    Package("react-grid-layout", "0.16.3", "sha512-ytP92EqUjqcFhGzvdeKrK610dQ04GdFwRCWtD6PoeL5wR3liETcFISO7k8RBqnosV86JtXf/DwIfrL0COLs0gg==",
            {"css/styles.css": "css/react-grid-layout-styles.css"}),
    Package("classnames", "2.2.5", "sha512-DTt3GhOUDKhh4ONwIJW4lmhyotQmV2LjNlGK/J2hkwUcqcbKkCLAdJPtxQnxnlc7SR3f1CEXCyMmc7WLUsWbNA==",
            {"index.js": "fonts/classnames"}),
    Package("mathjax", "2.7.5", "sha512-OzsJNitEHAJB3y4IIlPCAvS0yoXwYjlo2Y4kmm9KQzyIBZt2d8yKRalby3uTRNN4fZQiGL2iMXjpdP1u2Rq2DQ==",
            {}, tree="js/mathjax/2.7.5"),
)
MATHJAX_CHECKED = ("MathJax.js", "config/Safe.js", "config/TeX-AMS-MML_HTMLorMML.js",
                   "extensions/Safe.js", "jax/output/SVG/jax.js", "jax/output/SVG/config.js",
                   "jax/output/SVG/fonts/TeX/fontdata.js",
                   "jax/output/SVG/fonts/TeX/Size1/Regular/Main.js")  # what Visdom checks for


def targets(package: Package) -> list[str]:
    """The installed paths, under static/, whose presence shows the package is installed."""
    return list(package.files.values()) + [f"{package.tree}/{f}" for f in MATHJAX_CHECKED
                                           if package.tree]


def static_dir() -> Path:
    import visdom
    return Path(visdom.__file__).parent / "static"


def visdom_version() -> str:
    import visdom
    return visdom.__version__


def is_built(static: Path) -> bool:
    built = static / "version.built"
    return built.exists() and built.read_text().strip() == visdom_version()


def missing_files(static: Path | None = None) -> list[str]:
    """Static files the Visdom page needs that are not installed (or a stale version.built)."""
    static = static or static_dir()
    missing = [t for p in PACKAGES for t in targets(p) if not (static / t).exists()]
    return missing + ([] if is_built(static) else ["version.built"])


def verify(tarball: Path, integrity: str) -> None:
    algorithm, expected = integrity.split("-", 1)
    digest = base64.b64encode(hashlib.new(algorithm, tarball.read_bytes()).digest()).decode()
    if digest != expected:
        raise UserError(f"{tarball.name} does not match its pinned {algorithm} integrity; "
                        "not installing it")


def unpack(tarball: Path, package: Package, static: Path) -> None:
    with tarfile.open(tarball) as archive:
        wanted = {f"package/{source}": target for source, target in package.files.items()}
        if package.tree:
            wanted = {m.name: f"{package.tree}/{m.name.split('/', 1)[1]}"
                      for m in archive.getmembers()
                      if m.isfile() and not m.name.split("/", 1)[1].startswith("unpacked/")}
        for name, target in wanted.items():
            destination = static / target
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(archive.extractfile(name).read())


def npm_pack(specs: list[str], folder: Path, timeout: float = 600.0) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise UserError("the dashboard's page files are missing and npm (Node.js) is not "
                        "installed to fetch them; install npm, or train with --no-visdom")
    try:
        result = subprocess.run([npm, "pack", "--silent", "--pack-destination", str(folder),
                                 *specs], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"npm did not fetch the dashboard's page files within {timeout:.0f} s; "
                        "check the network or npm's registry settings, or train with "
                        "--no-visdom") from None
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"npm could not fetch the dashboard's page files ({detail}); "
                        "check the network or npm's registry settings, or train with --no-visdom")


def ensure_assets(static: Path | None = None) -> bool:
    """Install whatever static files are missing; True when something was installed."""
    static = static or static_dir()
    if not missing_files(static):
        return False
    built = is_built(static)  # a stale version.built refetches every package
    needed = [p for p in PACKAGES
              if not built or any(not (static / t).exists() for t in targets(p))]
    print(f"dashboard: installing {len(needed)} npm packages of Visdom's page into {static}",
          flush=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            npm_pack([p.spec for p in needed], Path(tmp))
            for package in needed:
                tarball = Path(tmp) / f"{package.name}-{package.version}.tgz"
                verify(tarball, package.integrity)
                unpack(tarball, package, static)
        (static / "version.built").write_text(visdom_version())
    except OSError as error:
        raise UserError(f"could not install the dashboard's page files into {static} "
                        f"({error.strerror or error}); train with --no-visdom") from None
    return True


def main(argv: list[str] | None = None) -> int:
    """`python -m capsnet.dashboard.assets` (make setup): the page files installed now, so that
    the first dashboard starts at once; where they cannot be fetched, a warning, and the
    dashboard tries again when it starts."""
    argparse.ArgumentParser(prog="python -m capsnet.dashboard.assets", description="Install "
                            "the dashboard's page files (Visdom's) from npm, if missing.",
                            ).parse_args(argv)
    try:
        ensure_assets()
    except UserError as error:
        print(f"warning: {error}; the dashboard tries again when it starts", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
