import logging
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import ValidationError

from elmrec.config import DataSettings
from elmrec.data import download as dl
from elmrec.data.download import DownloadError, download, is_retryable, sha256_of
from elmrec.data.sources import P5_SHA256


def test_mirror_folder_is_verified_and_copied(tmp_path: Path, real_mirror: Path) -> None:
    files = download(DataSettings(dataset="beauty"), tmp_path / "raw", mirror=str(real_mirror))
    assert [f.name for f in files] == ["sequential.txt", "datamaps.json"]
    assert sha256_of(files[0]) == P5_SHA256["beauty"]["sequential.txt"]


def _mirror_with(tmp_path: Path, real_mirror: Path, negatives: str | None) -> Path:
    folder = tmp_path / "mirror" / "beauty"
    folder.mkdir(parents=True)
    for name in ("sequential.txt", "datamaps.json"):
        (folder / name).symlink_to(real_mirror / "beauty" / name)
    if negatives is not None:
        (folder / "negative.txt").write_text(negatives)
    return folder.parent


def test_optional_negatives_are_fetched_when_the_mirror_has_them(tmp_path: Path, real_mirror: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    mirror = _mirror_with(tmp_path, real_mirror, "1 5 6 7\n2 8 9 10\n")
    files = download(DataSettings(dataset="beauty"), tmp_path / "raw", mirror=str(mirror))
    assert [f.name for f in files] == ["sequential.txt", "datamaps.json", "negative.txt"]
    assert (tmp_path / "raw" / "negative.txt").read_text() == "1 5 6 7\n2 8 9 10\n"
    # Another base without the file: the download succeeds, says so once, and drops the stale copy.
    other = _mirror_with(tmp_path / "other", real_mirror, None)
    with caplog.at_level(logging.INFO, logger="elmrec.data.download"):
        files = download(DataSettings(dataset="beauty"), tmp_path / "raw", mirror=str(other))
    assert [f.name for f in files] == ["sequential.txt", "datamaps.json"]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["datamaps.json", "sequential.txt"]
    notes = [r.getMessage() for r in caplog.records if "negative.txt" in r.getMessage()]
    assert notes == [f"optional negative.txt is not at {other}/beauty/negative.txt; continuing without it"]
    assert [r.levelname for r in caplog.records if "negative.txt" in r.getMessage()] == ["INFO"]


def test_checksum_mismatch_is_an_error_and_nothing_is_kept(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror" / "beauty"
    mirror.mkdir(parents=True)
    (mirror / "sequential.txt").write_text("1 1 2 3\n")
    (mirror / "datamaps.json").write_text("{}")
    with pytest.raises(DownloadError, match=r"checksum mismatch for .*sequential.txt: expected sha256 226cce") as error:
        download(DataSettings(dataset="beauty"), tmp_path / "work" / "raw", mirror=str(tmp_path / "mirror"))
    assert not is_retryable(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror"]  # neither raw/ nor its parent was left


def test_toys_is_pinned() -> None:
    assert P5_SHA256["toys"] == {
        "sequential.txt": "fa1cff57550387966440a93219753b97df62269455b3497612cdca3e8db0ceee",
        "datamaps.json": "a67fd09b5bbca12aea613015d9d1ed99610bb35015d3bbe8cd9e7a3eeda2c90c",
    }
    assert [f.sha256 for f in dl.source_files(DataSettings(dataset="toys"))] == [
        P5_SHA256["toys"]["sequential.txt"], P5_SHA256["toys"]["datamaps.json"], None]


def test_unknown_dataset_fails_at_settings_validation() -> None:
    with pytest.raises(ValidationError, match=r"unknown p5 dataset 'movies'; known: \['beauty', 'sports', 'toys'\]"):
        DataSettings(dataset="movies")


def test_local_source_copies_any_p5_folder(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "sequential.txt").write_text("1 1 2 3\n")
    (folder / "datamaps.json").write_text('{"id2user": {"1": "u"}, "id2item": {"1": "a", "2": "b", "3": "c"}}')
    files = download(DataSettings(dataset="mydata", source="local", path=str(folder)), tmp_path / "raw")
    assert files[0].read_text() == "1 1 2 3\n"
    (folder / "datamaps.json").unlink()
    with pytest.raises(DownloadError, match=r"mine/datamaps.json does not exist$") as error:
        download(DataSettings(dataset="mydata", source="local", path=str(folder)), tmp_path / "ds" / "raw2")
    assert not is_retryable(error.value)
    assert [p.name for p in (tmp_path / "ds" / "raw2").iterdir()] == ["sequential.txt"]  # complete files stay


def test_missing_path_fails_at_once_and_leaves_nothing(tmp_path: Path) -> None:
    data = DataSettings(dataset="mydata", source="local", path=str(tmp_path / "nowhere"))
    with pytest.raises(DownloadError, match=rf"^--path {tmp_path}/nowhere: no such folder$") as error:
        download(data, tmp_path / "work" / "mydata" / "raw")
    assert not is_retryable(error.value)
    assert list(tmp_path.iterdir()) == []


class _Server(BaseHTTPRequestHandler):
    requests: ClassVar[Counter[str]] = Counter()  # path -> requests received

    def do_GET(self) -> None:
        _Server.requests[self.path] += 1
        if self.path.endswith("truncated/beauty/sequential.txt"):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"1 1 2 3\n")
        elif self.path.startswith("/wrong/"):  # complete, but not the pinned file
            self.send_response(200)
            self.send_header("Content-Length", "8")
            self.end_headers()
            self.wfile.write(b"1 1 2 3\n")
        elif self.path.startswith("/broken/"):
            self.send_error(503)
        else:
            self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_base(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(dl, "RETRIES", 3)
    monkeypatch.setattr(dl.time, "sleep", lambda seconds: None)
    _Server.requests.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_truncated_download_is_retried_then_fails_with_url_and_mirror_hint(tmp_path: Path, http_base: str) -> None:
    message = r"truncated/beauty/sequential.txt after 3 attempts: .*truncated.*ELMREC_MIRROR"
    with pytest.raises(DownloadError, match=message) as error:
        download(DataSettings(dataset="beauty"), tmp_path / "raw", mirror=f"{http_base}/truncated")
    assert is_retryable(error.value)
    assert _Server.requests == {"/truncated/beauty/sequential.txt": 3}
    assert list(tmp_path.iterdir()) == []


def test_server_errors_are_retried(tmp_path: Path, http_base: str) -> None:
    with pytest.raises(DownloadError, match=r"/broken/beauty/sequential.txt: HTTP 503 after 3 attempts") as error:
        download(DataSettings(dataset="beauty"), tmp_path / "raw", mirror=f"{http_base}/broken")
    assert is_retryable(error.value) and _Server.requests == {"/broken/beauty/sequential.txt": 3}


@pytest.mark.parametrize(
    ("base", "message"),
    [("gone", r"/gone/beauty/sequential.txt: HTTP 404; to work offline"),
     ("wrong", r"checksum mismatch for .*/wrong/beauty/sequential.txt: expected sha256 226cce")],
)
def test_errors_that_cannot_pass_on_retry_fail_at_once(tmp_path: Path, http_base: str, base: str,
                                                       message: str) -> None:
    with pytest.raises(DownloadError, match=message) as error:
        download(DataSettings(dataset="beauty"), tmp_path / "raw", mirror=f"{http_base}/{base}")
    assert not is_retryable(error.value)
    assert _Server.requests == {f"/{base}/beauty/sequential.txt": 1}
    assert list(tmp_path.iterdir()) == []


def test_optional_file_missing_over_http_is_skipped(tmp_path: Path, http_base: str, real_mirror: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sources = dl.source_files(DataSettings(dataset="beauty"))
    monkeypatch.setattr(dl, "source_files", lambda data: [s for s in sources if s.optional])
    assert download(DataSettings(dataset="beauty"), tmp_path / "raw", mirror=f"{http_base}/gone") == []
    assert _Server.requests == {"/gone/beauty/negative.txt": 1}


def test_the_download_task_retries_only_retryable_errors() -> None:
    from prefect.states import Failed

    from tasks.data import download_task, worth_retrying

    assert download_task.retries == 2 and download_task.retry_condition_fn is worth_retrying
    assert worth_retrying(download_task, None, Failed(data=DownloadError("HTTP 503", retryable=True)))
    assert not worth_retrying(download_task, None, Failed(data=DownloadError("HTTP 404")))
    assert not worth_retrying(download_task, None, Failed(data=ValueError("bad settings")))
