#!/usr/bin/env python3
"""Reproducible zips for the Lambda artifacts (layer and function zips).

`zip -r` stores each file's mtime, the directory walk order and the umask-dependent modes, so two builds of the same
binaries give different bytes (and different CodeSha256 values in Lambda, which makes every deploy look like a
change). This writer fixes all three: entries sorted by name, every timestamp 1980-01-01 00:00:00 (the zip epoch),
Unix modes set explicitly (0755 for files and directories: Lambda runs `/opt/extensions/*` and `bootstrap` as
executables and rejects a bootstrap without the x bit; 0644 for the files of a directory entry, Python modules),
no extra fields, deflate level 9.

The bytes also depend on the zlib that Python links; the same machine image gives the same zlib.

    mkzip.py pack OUT.zip ARCNAME=SRC [ARCNAME=SRC ...]   write OUT.zip (parent directory entries are added);
                                                          ARCNAME/=DIR/ adds every file under DIR (0644), but
                                                          __pycache__, *.pyc and dot files (/=DIR/: at the root)
    mkzip.py size ZIP [PREFIX]                            print "<zip bytes> <unzipped bytes>"; with PREFIX,
                                                          of the entries under it (their headers included)
    mkzip.py unpack ZIP DIR                               extract into DIR with the stored Unix modes, as Lambda
                                                          does (zipfile.extract and busybox unzip drop them)
"""

from __future__ import annotations

import os
import sys
import zipfile

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o100755  # regular file, rwxr-xr-x
DATA_MODE = 0o100644  # regular file, rw-r--r-- (files of a directory entry)
DIR_MODE = 0o040755  # directory, rwxr-xr-x
MSDOS_DIR_FLAG = 0x10
UNIX_SYSTEM = 3  # "made by" Unix, so unzip and Lambda honour the mode bits in external_attr


def _entry(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
    info.create_system = UNIX_SYSTEM
    info.external_attr = mode << 16
    if name.endswith("/"):
        info.external_attr |= MSDOS_DIR_FLAG
        info.compress_type = zipfile.ZIP_STORED
    else:
        info.compress_type = zipfile.ZIP_DEFLATED
    return info


def tree(arcdir: str, src: str) -> dict[str, str]:
    """ARCDIR/<path> -> SRC/<path> for every file under SRC, leaving out byte code and dot files."""
    if not os.path.isdir(src):
        sys.exit(f"mkzip: {src} is not a directory")
    out = {}
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.startswith(".")]
        for f in filenames:
            if not f.startswith(".") and not f.endswith(".pyc"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, src).replace(os.sep, "/")
                out[f"{arcdir}/{rel}" if arcdir else rel] = path
    if not out:
        sys.exit(f"mkzip: {src} has no files")
    return out


def pack(out: str, specs: list[str]) -> None:
    files: dict[str, str] = {}
    modes: dict[str, int] = {}
    for spec in specs:
        arcname, sep, src = spec.partition("=")
        is_dir = arcname.endswith("/")
        arcname = arcname.strip("/")
        if not sep or not (arcname or is_dir) or not src:
            sys.exit(f"mkzip: bad entry {spec!r} (want ARCNAME=SRC or ARCNAME/=DIR/)")
        if is_dir:
            entries = tree(arcname, src)
            files.update(entries)
            modes.update(dict.fromkeys(entries, DATA_MODE))
            continue
        if not os.path.isfile(src):
            sys.exit(f"mkzip: {src} is not a file")
        files[arcname] = src
    dirs = set()
    for arcname in files:
        parts = arcname.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]) + "/")
    tmp = f"{out}.tmp{os.getpid()}"
    with zipfile.ZipFile(tmp, "w") as zf:
        for name in sorted(list(dirs) + list(files)):
            if name in dirs:
                zf.writestr(_entry(name, DIR_MODE), b"")
            else:
                with open(files[name], "rb") as fh:
                    zf.writestr(_entry(name, modes.get(name, FILE_MODE)), fh.read(), compresslevel=9)
    os.replace(tmp, out)


def size(path: str, prefix: str | None = None) -> None:
    with zipfile.ZipFile(path) as zf:
        infos = [i for i in zf.infolist() if prefix is None or i.filename.startswith(prefix)]
    unzipped = sum(i.file_size for i in infos)
    if prefix is None:
        print(os.path.getsize(path), unzipped)
    else:
        # Local header (30 bytes) + central directory entry (46 bytes) + the name twice + the data: no extra fields
        # or comments in these zips, so this is exactly what the entries add to the file.
        print(sum(76 + 2 * len(i.filename.encode()) + i.compress_size for i in infos), unzipped)


def unpack(path: str, dest: str) -> None:
    root = os.path.realpath(dest)
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            target = os.path.realpath(os.path.join(root, info.filename))
            if target != root and not target.startswith(root + os.sep):
                sys.exit(f"mkzip: {path}: entry {info.filename!r} escapes the destination")
            mode = (info.external_attr >> 16) & 0o7777
            if info.is_dir():
                os.makedirs(target, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                tmp = f"{target}.tmp{os.getpid()}"
                with zf.open(info) as src, open(tmp, "wb") as out:
                    out.write(src.read())
                os.replace(tmp, target)
            if mode:
                os.chmod(target, mode)


def main(argv: list[str]) -> None:
    if len(argv) >= 3 and argv[0] == "pack":
        pack(argv[1], argv[2:])
    elif len(argv) in (2, 3) and argv[0] == "size":
        size(*argv[1:])
    elif len(argv) == 3 and argv[0] == "unpack":
        unpack(argv[1], argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
