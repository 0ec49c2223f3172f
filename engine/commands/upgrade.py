"""`ht-engine upgrade`: rewrite a package or artifact of an older format in the current one (its config or manifest
then covered by its hash). The source is verified as far as its format allows and is never changed."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("upgrade", help="rewrite an older-format package or artifact in the current format")
    parser.add_argument("source", type=Path, help="a .htpkg package or a built artifact directory")
    parser.add_argument("--out", required=True, type=Path,
                        help="where the rewritten copy goes (a new file, or a new or empty directory for an artifact)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from ..errors import OutputError
    from ..package import UnverifiedConfigWarning

    source, out = Path(args.source), Path(args.out)
    if out.exists() and out.resolve() == source.resolve():
        raise OutputError(f"--out {out} is the source itself; upgrade writes a copy and leaves the source alone")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedConfigWarning)  # upgrading is the answer to that warning
        written = _upgrade_artifact(source, out) if source.is_dir() else _upgrade_package(source, out)
    print(f"wrote {written} in the current format")
    return 0


def _upgrade_package(source: Path, out: Path) -> Path:
    from ..errors import OutputError
    from ..package import read_package, save_package

    if out.exists():
        raise OutputError(f"--out {out} exists; give a new file name (nothing is overwritten)")
    config, tensors, _ = read_package(source)
    save_package(out, config, tensors)
    return out


def _upgrade_artifact(source: Path, out: Path) -> Path:
    from ..artifacts import open_artifact
    from ..export.manifest import DIGEST_KEY, MANIFEST, write_manifest
    from ..fileio import staging_directory

    artifact = open_artifact(source)
    manifest = {key: value for key, value in artifact.manifest.items() if key != DIGEST_KEY}
    with staging_directory(out, lambda path: False, "an empty directory") as directory:
        for name in manifest["files"]:
            shutil.copyfile(artifact.directory / name, directory / name)
        write_manifest(directory, manifest)
    open_artifact(out)
    return out / MANIFEST
