"""Download stage: fetch a dataset's source files into `<workdir>/<dataset>/raw/`.

Sources:
- `p5`: `sequential.txt` + `datamaps.json` from the public ELMRec copies, checked against known SHA-256 sums;
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
from elmrec.paths import atomic_path

log = logging.getLogger(__name__)

P5_BASE = "https://raw.githubusercontent.com/WangXFng/ELMRec/main/data"
P5_FILES = ("sequential.txt", "datamaps.json")
# SHA-256 of the public copies. Toys has no recorded sum yet: it is downloaded unverified, with a warning.
P5_SHA256: dict[str, dict[str, str | None]] = {
    "beauty": {
        "sequential.txt": "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
        "datamaps.json": "c3386147637538f6d97f7eafffeb4e7180daa0638875bc1d889bbee45ce241a8",
    },
    "sports": {
        "sequential.txt": "2a095e0648872beb9982408958290f5d655db5be2911c3756b5446de9f0b8de2",
        "datamaps.json": "4746e0d7dada225d8a2191f9002b6a0335c065f5ebbb71cd305f00e2fda9f124",
    },
    "toys": {"sequential.txt": None, "datamaps.json": None},
}

AMAZON_BASE = "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
AMAZON_CATEGORIES = (
    "Amazon_Instant_Video", "Apps_for_Android", "Automotive", "Baby", "Beauty", "Books", "CDs_and_Vinyl",
    "Cell_Phones_and_Accessories", "Clothing_Shoes_and_Jewelry", "Digital_Music", "Electronics",
    "Grocery_and_Gourmet_Food", "Health_and_Personal_Care", "Home_and_Kitchen", "Kindle_Store",
    "Movies_and_TV", "Musical_Instruments", "Office_Products", "Patio_Lawn_and_Garden", "Pet_Supplies",
    "Sports_and_Outdoors", "Tools_and_Home_Improvement", "Toys_and_Games", "Video_Games",
)  # fmt: skip
AMAZON_ALIASES = {"sports": "Sports_and_Outdoors", "toys": "Toys_and_Games"}

RETRIES = 4  # network attempts per file; back-off doubles from 1 s
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A source could not be fetched or verified; the message says which URL and what to do."""


@dataclass(frozen=True)
class SourceFile:
    relative: str  # path under the base location, e.g. "beauty/sequential.txt"
    name: str  # file name under raw/
    sha256: str | None


def amazon_category(data: DataSettings) -> str:
    """The SNAP category name for `data` (explicit `category`, an alias, or the dataset name), validated."""
    wanted = data.category or AMAZON_ALIASES.get(data.dataset, data.dataset)
    by_lower = {name.lower(): name for name in AMAZON_CATEGORIES}
    if wanted.lower() not in by_lower:
        raise ValueError(f"unknown Amazon 2014 category {wanted!r}; known: {', '.join(AMAZON_CATEGORIES)}")
    return by_lower[wanted.lower()]


def source_files(data: DataSettings) -> list[SourceFile]:
    """The files a dataset's source consists of, relative to its base location."""
    if data.source == "p5":
        if data.dataset not in P5_SHA256:
            raise ValueError(f"unknown p5 dataset {data.dataset!r}; known: {sorted(P5_SHA256)}")
        sums = P5_SHA256[data.dataset]
        return [SourceFile(f"{data.dataset}/{name}", name, sums[name]) for name in P5_FILES]
    if data.source == "amazon2014":
        name = f"reviews_{amazon_category(data)}_5.json.gz"
        return [SourceFile(name, name, None)]
    return [SourceFile(name, name, None) for name in P5_FILES]


def base_location(data: DataSettings, mirror: str | None) -> str:
    if data.source == "local":
        if not data.path:
            raise ValueError("source=local needs a folder: --path DIR")
        return data.path
    if mirror:
        return mirror
    return P5_BASE if data.source == "p5" else AMAZON_BASE


def download(data: DataSettings, raw_dir: Path, mirror: str | None = None) -> list[Path]:
    """Fetch every source file of `data` into `raw_dir` (skipping verified ones); return their paths."""
    base = base_location(data, mirror)
    if data.source == "p5" and data.dataset == "toys":
        log.warning("no SHA-256 is recorded for p5/toys: its files are used unverified")
    paths = []
    for source in source_files(data):
        target = raw_dir / source.name
        if target.exists() and source.sha256 and sha256_of(target) == source.sha256:
            log.info("%s already present and verified", target)
        else:
            fetch(join(base, source.relative), target, source.sha256, hint_mirror=data.source != "local")
        paths.append(target)
    return paths


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
                raise DownloadError(f"{source} does not exist" + (_MIRROR_HINT if hint_mirror else ""))
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
            if error.code < 500 or attempt == RETRIES:  # a 404 will not get better by retrying
                raise DownloadError(f"{url}: HTTP {error.code}" + (_MIRROR_HINT if hint_mirror else "")) from error
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError,
                DownloadError) as error:
            if attempt == RETRIES:
                raise DownloadError(
                    f"could not fetch {url} after {RETRIES} attempts: {error}" + (_MIRROR_HINT if hint_mirror else "")
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
        raise DownloadError(f"{url}: truncated, received {received} of {expected} bytes")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
