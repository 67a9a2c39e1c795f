"""Downloads against a real HTTP server on 127.0.0.1: verify, extract, read; refuse bad archives."""

from __future__ import annotations

import functools
import hashlib
import io
import re
import tarfile
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from reprlab.platform.data import download
from reprlab.platform.data.download import (
    ARCHIVES,
    Archive,
    download_dataset,
    download_file,
    extract_archive,
)
from reprlab.platform.data.sets.cub import read_cub
from reprlab.platform.core.errors import DataError

CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
CUB_PATH = "records/65de6-vp158/files/CUB_200_2011.tgz"


class _Handler(SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """(base URL, served folder, list of requested paths) of a local HTTP server."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    www = tmp_path / "www"
    www.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", www, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 120, 30)).save(buf, "JPEG")
    return buf.getvalue()


def _make_cub_tgz(dest: Path, work: Path) -> str:
    """A tiny CUB_200_2011.tgz in the official layout (4 classes, 2 images each); its md5."""
    base = work / "CUB_200_2011"
    classes = {
        1: "001.Black_footed_Albatross",
        2: "002.Laysan_Albatross",
        101: "101.White_Pelican",
        102: "102.Western_Wood_Pewee",
    }
    rows = [(cid, f"{name}/img_{k}.jpg") for cid, name in classes.items() for k in range(2)]
    (base / "images").mkdir(parents=True)
    (base / "images.txt").write_text("".join(f"{i + 1} {p}\n" for i, (_, p) in enumerate(rows)))
    (base / "image_class_labels.txt").write_text(
        "".join(f"{i + 1} {c}\n" for i, (c, _) in enumerate(rows))
    )
    (base / "classes.txt").write_text("".join(f"{c} {n}\n" for c, n in classes.items()))
    jpeg = _jpeg()
    for _, rel in rows:
        (base / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / "images" / rel).write_bytes(jpeg)
    (work / "attributes.txt").write_text("1 has_bill_shape::curved\n")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(base, arcname="CUB_200_2011")
        tar.add(work / "attributes.txt", arcname="attributes.txt")
    return hashlib.md5(dest.read_bytes()).hexdigest()


@pytest.fixture
def served_cub(server, tmp_path, monkeypatch):
    """The local server, serving a fabricated CUB archive at the official URL's path, registered
    in ARCHIVES with its computed md5."""
    base_url, www, requests = server
    md5 = _make_cub_tgz(www / CUB_PATH, tmp_path / "src")
    monkeypatch.setitem(ARCHIVES, "cub", [Archive(CUB_URL, "CUB_200_2011.tgz", md5=md5)])
    return base_url, www, requests, md5


def test_download_dataset_verifies_extracts_and_reads(served_cub, tmp_path):
    base_url, _, requests, _ = served_cub
    root = tmp_path / "data"
    assert download_dataset("cub", root, base_url=base_url, progress=False) == root
    assert requests == ["/" + CUB_PATH]
    assert (root / "CUB_200_2011.tgz").is_file() and not list(root.glob("*.part"))
    assert (root / "attributes.txt").is_file()
    bench = read_cub(root)
    assert (len(bench.train), len(bench.test)) == (4, 4)
    assert bench.test.classes().tolist() == [101, 102]
    # a verified archive is not fetched again
    download_dataset("cub", root, base_url=base_url, progress=False)
    assert len(requests) == 1


def test_checksum_mismatch_deletes_the_download(served_cub, tmp_path, monkeypatch):
    base_url, _, _, md5 = served_cub
    wrong = "0" * 32
    monkeypatch.setitem(ARCHIVES, "cub", [Archive(CUB_URL, "CUB_200_2011.tgz", md5=wrong)])
    root = tmp_path / "data"
    with pytest.raises(DataError) as err:
        download_dataset("cub", root, base_url=base_url, progress=False)
    message = str(err.value)
    assert "CUB_200_2011.tgz" in message and wrong in message and md5 in message
    assert list(root.iterdir()) == []


def test_download_file_sha256_and_directory_dest(server, tmp_path):
    base_url, www, _ = server
    (www / "blob.bin").write_bytes(b"reprlab" * 1000)
    digest = hashlib.sha256(b"reprlab" * 1000).hexdigest()
    out = tmp_path / "out"
    out.mkdir()
    path = download_file(f"{base_url}/blob.bin", out, sha256=digest, progress=True)
    assert path == out / "blob.bin" and path.read_bytes() == b"reprlab" * 1000
    with pytest.raises(
        DataError, match=re.escape(f"sha256 checksum mismatch for other.bin: expected {'a' * 64}")
    ):
        download_file(f"{base_url}/blob.bin", out / "other.bin", sha256="a" * 64, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["blob.bin"]


def test_download_http_error_leaves_nothing(server, tmp_path):
    base_url, _, _ = server
    with pytest.raises(DataError, match=r"cannot download .*/missing\.tgz: HTTP Error 404"):
        download_file(
            f"{base_url}/missing.tgz", tmp_path / "missing.tgz", md5="0" * 32, progress=False
        )
    assert list(tmp_path.iterdir()) == [tmp_path / "www"]


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


@pytest.mark.parametrize("name", ["../evil.txt", "ok/../../evil.txt", "/tmp/reprlab-evil.txt"])
def test_tar_path_traversal_is_refused(tmp_path, name):
    archive = _tar_with(tmp_path / "bad.tgz", tarfile.TarInfo(name), b"gotcha")
    root = tmp_path / "root"
    with pytest.raises(DataError, match=r"refusing to extract .* outside"):
        extract_archive(archive, root, progress=False)
    assert not (tmp_path / "evil.txt").exists() and list(root.iterdir()) == []


def test_tar_link_out_of_root_is_refused(tmp_path):
    link = tarfile.TarInfo("CUB_200_2011/images")
    link.type, link.linkname = tarfile.SYMTYPE, "../../outside"
    archive = _tar_with(tmp_path / "link.tar.gz", link)
    with pytest.raises(DataError, match="links outside"):
        extract_archive(archive, tmp_path / "root", progress=False)


def test_zip_path_traversal_is_refused(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(
            "Stanford_Online_Products/Ebay_train.txt", "image_id class_id super_class_id path\n"
        )
        zf.writestr("../evil.txt", "gotcha")
    root = tmp_path / "root"
    with pytest.raises(DataError, match=r"refusing to extract .*'\.\./evil\.txt'"):
        extract_archive(archive, root, progress=False)
    assert not (tmp_path / "evil.txt").exists() and list(root.iterdir()) == []


def test_zip_extracts(tmp_path):
    archive = tmp_path / "good.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Stanford_Online_Products/Ebay_train.txt", "header\n")
    extract_archive(archive, tmp_path / "root", progress=False)
    assert (
        tmp_path / "root" / "Stanford_Online_Products" / "Ebay_train.txt"
    ).read_text() == "header\n"


def test_not_an_archive(tmp_path):
    (tmp_path / "x.tgz").write_bytes(b"plain bytes")
    with pytest.raises(DataError, match="not a tar or zip archive"):
        extract_archive(tmp_path / "x.tgz", tmp_path / "root", progress=False)


@pytest.mark.parametrize(
    ("name", "hint"), [("inshop", "list_eval_partition.txt"), ("vehicleid", "train_test_split")]
)
def test_datasets_without_public_archive(tmp_path, name, hint):
    with pytest.raises(DataError, match=hint) as err:
        download_dataset(name, tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="unknown data set 'imagenet'"):
        download_dataset("imagenet", tmp_path)


def test_registry_digests_and_rehost():
    assert set(ARCHIVES) == {"cub", "cars", "sop"}
    assert ARCHIVES["cub"][0].md5 == "97eceeb196236b17998738112f37df78"
    for archives in ARCHIVES.values():
        for a in archives:
            assert a.url.endswith("/" + a.filename)
            assert a.md5 is None or re.fullmatch(r"[0-9a-f]{32}", a.md5)
            assert a.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", a.sha256)
    assert [a.is_archive for a in ARCHIVES["cars"]] == [True, False]
    assert download._rehost(CUB_URL, "http://127.0.0.1:8000/mirror/") == (
        "http://127.0.0.1:8000/mirror/records/65de6-vp158/files/CUB_200_2011.tgz"
    )
    with pytest.raises(ValueError):
        Archive("http://x/y.zip", "y.zip")
