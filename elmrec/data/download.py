"""Download stage: fetch a dataset's source files into its raw folder (`WorkPaths.raw`).

Sources:
- `p5`: `sequential.txt` + `datamaps.json` from the public ELMRec copies, checked against known SHA-256 sums
  (elmrec.data.sources), and `negative.txt` (the authors' test negatives) where the base location has it;
- `amazon2014`: a raw 5-core review file `reviews_<Category>_5.json.gz` from the public SNAP location;
- `local`: a folder in P5 layout that the user names (no checksum; the same validation downstream).

A mirror (a folder or a URL with the same layout as the public base) replaces the base location; offline,
a folder holding `<dataset>/sequential.txt` is such a mirror. Files are written under a temporary name and
renamed only once complete and verified, so a failed download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from elmrec.config import DataSettings
from elmrec.data.sources import P5_SHA256, amazon_category
from elmrec.paths import atomic_path

log = logging.getLogger(__name__)

P5_BASE = "https://raw.githubusercontent.com/WangXFng/ELMRec/main/data"
P5_FILES = ("sequential.txt", "datamaps.json")
NEGATIVES_FILE = "negative.txt"  # optional: the authors' test negatives (`user n1 ... n99`), no known checksum
AMAZON_BASE = "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles"

RETRIES = 4  # network attempts per file; back-off doubles from 1 s
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A source could not be fetched or verified; the message says which URL and what to do.

    `retryable`: whether trying again later may succeed (network trouble, HTTP 5xx, a truncated transfer);
    a 404, a checksum mismatch or a missing local file never will.
    """

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class SourceMissing(DownloadError):
    """The base location has no such file (HTTP 404, or absent from a folder)."""


def is_retryable(error: BaseException | None) -> bool:
    """Whether a failed download is worth another attempt (the download task's retry condition)."""
    return isinstance(error, DownloadError) and error.retryable


@dataclass(frozen=True)
class SourceFile:
    relative: str  # path under the base location, e.g. "beauty/sequential.txt"
    name: str  # file name under raw/
    sha256: str | None
    optional: bool = False  # absent from the base location: the download succeeds without it


def source_files(data: DataSettings) -> list[SourceFile]:
    """The files a dataset's source consists of, relative to its base location (the dataset name is known:
    DataSettings checked it)."""
    if data.source == "p5":
        sums = P5_SHA256[data.dataset]
        return [*(SourceFile(f"{data.dataset}/{name}", name, sums[name]) for name in P5_FILES),
                SourceFile(f"{data.dataset}/{NEGATIVES_FILE}", NEGATIVES_FILE, None, optional=True)]
    if data.source == "amazon2014":
        name = f"reviews_{amazon_category(data.dataset, data.category)}_5.json.gz"
        return [SourceFile(name, name, None)]
    return [*(SourceFile(name, name, None) for name in P5_FILES),
            SourceFile(NEGATIVES_FILE, NEGATIVES_FILE, None, optional=True)]


def base_location(data: DataSettings, mirror: str | None) -> str:
    if data.source == "local":
        if not data.path:
            raise ValueError("source=local needs a folder: --path DIR")
        return data.path
    if mirror:
        return mirror
    return P5_BASE if data.source == "p5" else AMAZON_BASE


def download(data: DataSettings, raw_dir: Path, mirror: str | None = None) -> list[Path]:
    """Fetch every source file of `data` into `raw_dir` (skipping verified ones); return their paths.

    A failure leaves no folder behind that this call created.
    """
    base = base_location(data, mirror)
    if data.source == "local" and not is_url(base) and not Path(base).is_dir():
        raise SourceMissing(f"--path {base}: no such folder")
    created = [folder for folder in (raw_dir, raw_dir.parent) if not folder.exists()]
    try:
        paths = []
        for source in source_files(data):
            path = _fetch_source(base, source, raw_dir, hint_mirror=data.source != "local")
            if path is not None:
                paths.append(path)
        return paths
    except BaseException:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty: something else wrote there meanwhile
                pass
        raise


def _fetch_source(base: str, source: SourceFile, raw_dir: Path, hint_mirror: bool) -> Path | None:
    """One source file into `raw_dir`; None for an optional file the base location does not have."""
    target = raw_dir / source.name
    if target.exists() and source.sha256 and sha256_of(target) == source.sha256:
        log.info("%s already present and verified", target)
        return target
    location = join(base, source.relative)
    try:
        fetch(location, target, source.sha256, hint_mirror=hint_mirror and not source.optional)
    except SourceMissing:
        if not source.optional:
            raise
        if target.exists():  # a copy from another base location would not belong to this one
            target.unlink()
        log.info("optional %s is not at %s; continuing without it", source.name, location)
        return None
    return target


def join(base: str, relative: str) -> str:
    return f"{base.rstrip('/')}/{relative}" if is_url(base) else str(Path(base) / relative)


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://", "file://"))


def fetch(location: str, target: Path, sha256: str | None, hint_mirror: bool = True) -> None:
    """Copy or download `location` to `target` atomically, verifying size and checksum."""
    with atomic_path(target) as tmp:
        if is_url(location):
            _download_with_retries(location, tmp, hint_mirror)
        else:
            source = Path(location)
            if not source.is_file():
                raise SourceMissing(f"{source} does not exist" + (_MIRROR_HINT if hint_mirror else ""))
            shutil.copyfile(source, tmp)
        if tmp.stat().st_size == 0:
            raise DownloadError(f"{location} is empty")
        if sha256 is not None:
            actual = sha256_of(tmp)
            if actual != sha256:
                raise DownloadError(
                    f"checksum mismatch for {location}: expected sha256 {sha256}, got {actual}; "
                    "the file was not kept (corrupt or truncated copy?)"
                )
    log.info("fetched %s -> %s", location, target)


_MIRROR_HINT = (
    "; to work offline, point --mirror (or ELMREC_MIRROR) at a folder or URL with the same layout, "
    "e.g. --mirror /data/elmrec-mirror holding beauty/sequential.txt and beauty/datamaps.json"
)


def _download_with_retries(url: str, tmp: Path, hint_mirror: bool) -> None:
    delay = 1.0
    for attempt in range(1, RETRIES + 1):
        try:
            _download_once(url, tmp)
            return
        except urllib.error.HTTPError as error:
            hint = _MIRROR_HINT if hint_mirror else ""
            if error.code == 404:
                raise SourceMissing(f"{url}: HTTP 404{hint}") from error
            if error.code < 500:  # will not get better by retrying
                raise DownloadError(f"{url}: HTTP {error.code}{hint}") from error
            if attempt == RETRIES:
                raise DownloadError(f"{url}: HTTP {error.code} after {RETRIES} attempts{hint}",
                                    retryable=True) from error
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError,
                DownloadError) as error:
            if isinstance(error, DownloadError) and not error.retryable:
                raise
            if attempt == RETRIES:
                raise DownloadError(
                    f"could not fetch {url} after {RETRIES} attempts: {error}" + (_MIRROR_HINT if hint_mirror else ""),
                    retryable=True,
                ) from error
        log.warning("attempt %d/%d for %s failed; retrying in %.0f s", attempt, RETRIES, url, delay)
        time.sleep(delay)
        delay *= 2


def _download_once(url: str, tmp: Path) -> None:
    with urllib.request.urlopen(url, timeout=30) as response, tmp.open("wb") as out:
        expected = response.headers.get("Content-Length")
        received = 0
        while chunk := response.read(CHUNK):
            out.write(chunk)
            received += len(chunk)
    if expected is not None and received != int(expected):
        raise DownloadError(f"{url}: truncated, received {received} of {expected} bytes", retryable=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
