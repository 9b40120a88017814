import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from elmrec.config import DataSettings
from elmrec.data import download as dl
from elmrec.data.download import DownloadError, download, sha256_of


def test_mirror_folder_is_verified_and_copied(tmp_path: Path, real_mirror: Path) -> None:
    files = download(DataSettings(dataset="beauty"), tmp_path / "raw", mirror=str(real_mirror))
    assert [f.name for f in files] == ["sequential.txt", "datamaps.json"]
    assert sha256_of(files[0]) == dl.P5_SHA256["beauty"]["sequential.txt"]


def test_checksum_mismatch_is_an_error_and_the_file_is_not_kept(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror" / "beauty"
    mirror.mkdir(parents=True)
    (mirror / "sequential.txt").write_text("1 1 2 3\n")
    (mirror / "datamaps.json").write_text("{}")
    with pytest.raises(DownloadError, match=r"checksum mismatch for .*sequential.txt: expected sha256 226cce"):
        download(DataSettings(dataset="beauty"), tmp_path / "raw", mirror=str(tmp_path / "mirror"))
    assert list((tmp_path / "raw").iterdir()) == []


def test_unknown_dataset_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown p5 dataset 'movies'; known: \['beauty', 'sports', 'toys'\]"):
        download(DataSettings(dataset="movies"), tmp_path)


def test_local_source_copies_any_p5_folder(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "sequential.txt").write_text("1 1 2 3\n")
    (folder / "datamaps.json").write_text('{"id2user": {"1": "u"}, "id2item": {"1": "a", "2": "b", "3": "c"}}')
    files = download(DataSettings(dataset="mydata", source="local", path=str(folder)), tmp_path / "raw")
    assert files[0].read_text() == "1 1 2 3\n"
    with pytest.raises(DownloadError, match=r"nowhere/sequential.txt does not exist$"):
        download(DataSettings(dataset="mydata", source="local", path=str(tmp_path / "nowhere")), tmp_path / "raw2")


class _Server(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.endswith("truncated/beauty/sequential.txt"):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"1 1 2 3\n")
        else:
            self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_truncated_download_is_retried_then_fails_with_url_and_mirror_hint(tmp_path: Path, http_base: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "RETRIES", 2)
    monkeypatch.setattr(dl.time, "sleep", lambda seconds: None)
    message = r"truncated/beauty/sequential.txt after 2 attempts: .*truncated.*ELMREC_MIRROR"
    with pytest.raises(DownloadError, match=message):
        download(DataSettings(dataset="beauty"), tmp_path / "raw", mirror=f"{http_base}/truncated")
    assert list((tmp_path / "raw").iterdir()) == []


def test_missing_url_fails_at_once_with_the_url(tmp_path: Path, http_base: str) -> None:
    with pytest.raises(DownloadError, match=r"/gone/beauty/sequential.txt: HTTP 404; to work offline"):
        download(DataSettings(dataset="beauty"), tmp_path / "raw", mirror=f"{http_base}/gone")
