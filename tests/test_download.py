"""Resumable, prefix-capable downloads against a local HTTP server on 127.0.0.1 (no internet)."""

import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

from core.errors import UsageError
from pipelines.training import cli
from pipelines.training.data import download as dl
from pipelines.training.data.prepare import find_split
from pipelines.training.config.presets import PRESETS
from tests.inputs import EOT

END = EOT.encode()
TIMEOUT = 5.0
# ~3.6 MiB of stories of varied length, so 1 and 2 MiB prefixes cut at different stories.
TRAIN = b"".join(f"Story {i}.{' Then a thing happened.' * (i % 37)}\n{EOT}\n".encode() for i in range(12_000))
VALID = b"".join(f"Valid story {i}.\n{EOT}\n".encode() for i in range(300))
TRAIN_NAME, VALID_NAME = dl.TINYSTORIES_FILES["train"], dl.TINYSTORIES_FILES["valid"]


@dataclass
class Server:
    """What the local server serves and how it misbehaves; `ranges` logs each request's Range."""
    files: dict[str, bytes]
    url: str = ""
    honour_range: bool = True
    drop_after: int | None = None  # the next response closes the connection after this many body bytes
    pace: float = 0.0  # seconds between 64 KiB writes: a slow server, to overlap two clients
    ranges: list[str | None] = field(default_factory=list)


def handler_for(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):  # HTTP/1.0: one request per connection, closed after
        def do_GET(self) -> None:
            wanted = self.headers.get("Range")
            server.ranges.append(wanted)
            if self.path.startswith("/moved/"):  # as Hugging Face redirects /resolve/ to its CDN
                self.send_response(302)
                self.send_header("Location", self.path.removeprefix("/moved"))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = server.files.get(self.path.lstrip("/"))
            if data is None:
                self.send_error(404)
                return
            first, last = 0, len(data) - 1
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted or "")
            if match and server.honour_range:
                first, last = int(match[1]), min(int(match[2] or last), last)
                if first >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
            else:
                self.send_response(200)
            body = data[first : last + 1]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if server.drop_after is not None:
                body, server.drop_after = body[: server.drop_after], None
            self.write(body)

        def write(self, body: bytes) -> None:
            try:
                for at in range(0, len(body), 1 << 16):
                    self.wfile.write(body[at : at + (1 << 16)])
                    time.sleep(server.pace)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading once it had its prefix

        def log_message(self, *args) -> None:
            pass

    return Handler


@pytest.fixture
def server():
    state = Server(files={TRAIN_NAME: TRAIN, VALID_NAME: VALID})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(TIMEOUT)


def cut(data: bytes, max_bytes: int) -> bytes:
    head = data[:max_bytes]
    return head[: head.rindex(END) + len(END)]


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file()}


def test_a_full_download_is_byte_identical_and_leaves_no_part(server, tmp_path):
    target = tmp_path / "train.txt"
    dl.download(server.url + TRAIN_NAME, target, timeout=TIMEOUT)
    assert target.read_bytes() == TRAIN
    assert server.ranges == [None]
    assert not (tmp_path / "train.txt.part").exists()


def test_a_prefix_is_the_first_bytes_cut_after_the_last_document_end(server, tmp_path):
    target = tmp_path / "train.first.txt"
    dl.download(server.url + TRAIN_NAME, target, max_bytes=10_000, timeout=TIMEOUT)
    assert server.ranges == ["bytes=0-9999"]  # only the prefix is asked for
    assert target.read_bytes() == cut(TRAIN, 10_000)
    assert len(target.read_bytes()) < 10_000 and not TRAIN[:10_000].endswith(END)  # a cut really happened


@pytest.mark.parametrize("max_bytes", [None, 100_000])
def test_a_dropped_connection_resumes_with_a_range_request(server, tmp_path, max_bytes):
    server.drop_after = 30_000
    target = tmp_path / "train.txt"
    dl.download(server.url + TRAIN_NAME, target, max_bytes=max_bytes, timeout=TIMEOUT)
    end = "" if max_bytes is None else str(max_bytes - 1)
    assert server.ranges == [None if max_bytes is None else f"bytes=0-{end}", f"bytes=30000-{end}"]
    assert target.read_bytes() == (TRAIN if max_bytes is None else cut(TRAIN, max_bytes))


@pytest.mark.parametrize("max_bytes", [None, 100_000])
def test_a_part_left_by_an_earlier_run_is_continued(server, tmp_path, max_bytes):
    target = tmp_path / "train.txt"
    (tmp_path / "train.txt.part").write_bytes(TRAIN[:12_345])
    dl.download(server.url + TRAIN_NAME, target, max_bytes=max_bytes, timeout=TIMEOUT)
    assert server.ranges == [f"bytes=12345-{'' if max_bytes is None else max_bytes - 1}"]
    assert target.read_bytes() == (TRAIN if max_bytes is None else cut(TRAIN, max_bytes))


def test_a_redirect_keeps_the_range_request(server, tmp_path):
    target = tmp_path / "train.txt"
    (tmp_path / "train.txt.part").write_bytes(TRAIN[:12_345])
    dl.download(server.url + "moved/" + TRAIN_NAME, target, max_bytes=100_000, timeout=TIMEOUT)
    assert server.ranges == ["bytes=12345-99999"] * 2  # the redirect, then the file
    assert target.read_bytes() == cut(TRAIN, 100_000)


@pytest.mark.parametrize("max_bytes", [None, 100_000])
def test_a_server_that_ignores_range_makes_it_start_over(server, tmp_path, max_bytes):
    server.honour_range = False
    target = tmp_path / "train.txt"
    (tmp_path / "train.txt.part").write_bytes(b"x" * 5_000)  # appended to, these would corrupt the file
    dl.download(server.url + TRAIN_NAME, target, max_bytes=max_bytes, timeout=TIMEOUT)
    assert target.read_bytes() == (TRAIN if max_bytes is None else cut(TRAIN, max_bytes))
    assert len(server.ranges) == 1


def test_a_complete_part_answered_416_is_finalised_without_refetching(server, tmp_path):
    target = tmp_path / "train.txt"
    (tmp_path / "train.txt.part").write_bytes(TRAIN)  # as if killed between the last byte and the rename
    dl.download(server.url + TRAIN_NAME, target, timeout=TIMEOUT)
    assert server.ranges == [f"bytes={len(TRAIN)}-"]
    assert target.read_bytes() == TRAIN


def test_a_part_longer_than_the_file_is_discarded_and_fetched_again(server, tmp_path):
    target = tmp_path / "train.txt"
    (tmp_path / "train.txt.part").write_bytes(TRAIN + b"stale tail")
    dl.download(server.url + TRAIN_NAME, target, timeout=TIMEOUT)
    assert server.ranges == [f"bytes={len(TRAIN) + 10}-", None]
    assert target.read_bytes() == TRAIN


def test_a_complete_prefix_part_is_cut_without_any_request(server, tmp_path):
    target = tmp_path / "train.txt"
    (tmp_path / "train.txt.part").write_bytes(TRAIN[:50_000])
    dl.download(server.url + TRAIN_NAME, target, max_bytes=50_000, timeout=TIMEOUT)
    assert server.ranges == []
    assert target.read_bytes() == cut(TRAIN, 50_000)


def test_an_existing_file_is_neither_fetched_nor_overwritten(server, tmp_path):
    target = tmp_path / "train.txt"
    target.write_bytes(b"mine")
    dl.download(server.url + TRAIN_NAME, target, timeout=TIMEOUT)
    dl.download(server.url + TRAIN_NAME, target, max_bytes=1000, timeout=TIMEOUT)
    assert target.read_bytes() == b"mine" and server.ranges == []


def test_a_prefix_without_a_document_end_fails_and_makes_no_file(server, tmp_path):
    server.files["plain.txt"] = b"no marker here " * 1000
    target = tmp_path / "plain.txt"
    with pytest.raises(ValueError, match="hold no <\\|endoftext\\|>"):
        dl.download(server.url + "plain.txt", target, max_bytes=5_000, timeout=TIMEOUT)
    assert not target.exists()


def test_two_concurrent_downloads_of_one_file_make_one_request(server, tmp_path):
    server.pace = 0.005  # ~0.3 s for the file: the second client arrives while the first downloads
    target = tmp_path / "train.txt"
    errors = []

    def fetch():
        try:
            dl.download(server.url + TRAIN_NAME, target, timeout=TIMEOUT)
        except Exception as error:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(error)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and not any(thread.is_alive() for thread in threads)
    assert server.ranges == [None]  # the second waited on the lock and then found the file done
    assert target.read_bytes() == TRAIN


def test_offline_the_error_is_one_line_naming_the_files_and_where(refused_url, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "TINYSTORIES_URL", refused_url)
    for train_mb in (None, 64):
        with pytest.raises(UsageError) as error:
            dl.fetch_tinystories(tmp_path / "data", train_mb)
        message = str(error.value)
        assert "\n" not in message and "--data.path" in message
        assert TRAIN_NAME in message and VALID_NAME in message
        assert str(dl.size_folder(tmp_path / "data", train_mb)) + "/" in message
    assert dl.train_name(64) in message


def test_full_and_prefix_folders_coexist_each_with_one_train_and_one_valid(server, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "TINYSTORIES_URL", server.url)
    dest = tmp_path / "data"
    folders = {mb: dl.fetch_tinystories(dest, mb) for mb in (None, 1, 2)}
    assert len(set(folders.values())) == 3
    for mb, folder in folders.items():
        train, valid = find_split(folder, "train", ".txt"), find_split(folder, "valid", ".txt")
        assert train.read_bytes() == (TRAIN if mb is None else cut(TRAIN, mb * dl.MB))
        assert valid.read_bytes() == VALID
    assert "first1MB" in find_split(folders[1], "train", ".txt").name
    assert all(path.is_relative_to(dest) for path in files_under(tmp_path))  # nothing written outside dest

    requests = len(server.ranges)
    assert dl.fetch_tinystories(dest, 1) == folders[1] and dl.fetch_tinystories(dest) == folders[None]
    assert len(server.ranges) == requests  # done files are reused, not fetched again


def test_a_prefix_is_cut_from_a_full_copy_already_there_without_the_network(refused_url, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "TINYSTORIES_URL", refused_url)
    dest = tmp_path / "data"
    (dest / "full").mkdir(parents=True)
    (dest / "full" / TRAIN_NAME).write_bytes(TRAIN)
    (dest / "full" / VALID_NAME).write_bytes(VALID)
    folder = dl.fetch_tinystories(dest, 1)
    assert find_split(folder, "train", ".txt").read_bytes() == cut(TRAIN, dl.MB)
    assert find_split(folder, "valid", ".txt").read_bytes() == VALID


def test_full_files_straight_in_dest_are_used_as_they_are(server, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "TINYSTORIES_URL", server.url)
    (tmp_path / TRAIN_NAME).write_bytes(b"old train")
    (tmp_path / VALID_NAME).write_bytes(b"old valid")
    assert dl.fetch_tinystories(tmp_path) == tmp_path
    assert server.ranges == []


@pytest.mark.parametrize("train_mb", [0, -1, True, 1.5])
def test_a_train_size_that_is_not_a_positive_int_is_refused_before_any_work(tmp_path, train_mb):
    with pytest.raises(ValueError, match="train_mb"):
        dl.fetch_tinystories(tmp_path / "data", train_mb)
    assert not (tmp_path / "data").exists()


def test_a_first_run_without_preset_or_data_fits_the_cpu_and_fetches_only_a_prefix(server, tmp_path, monkeypatch, capsys):
    """`just train tinystories` on a machine without CUDA: the cpu-sized preset, with a notice,
    and of the training text only its first data.train_mb MiB, by range request."""
    monkeypatch.setattr(dl, "TINYSTORIES_URL", server.url)
    monkeypatch.setenv("LMKIT_CACHE", str(tmp_path / "cache"))
    tiny = ["--model.vocab_size", "300", "--model.context_length", "16", "--model.d_model", "16", "--model.num_layers", "1",
            "--model.num_heads", "2", "--data.batch_size", "4", "--data.train_mb", "1", "--max_steps", "3",
            "--eval.windows", "4", "--sample.count", "0", "--device", "cpu"]
    assert cli.main(["tinystories", "--run_dir", str(tmp_path / "run"), *tiny]) == 0
    notice = capsys.readouterr().err
    assert "cpu-small preset" in notice and "--preset baseline" in notice
    config = orjson.loads((tmp_path / "run" / "config.json").read_bytes())
    assert config["eval"]["every"] == PRESETS["tinystories"]["cpu-small"]["eval"]["every"]  # the cpu-small preset
    folder = tmp_path / "cache" / "data" / "tinystories" / "first1MB"
    assert find_split(folder, "train", ".txt").read_bytes() == cut(TRAIN, dl.MB)
    assert f"bytes=0-{dl.MB - 1}" in server.ranges  # asked for the prefix only
    assert not (tmp_path / "cache" / "data" / "tinystories" / "full").exists()
