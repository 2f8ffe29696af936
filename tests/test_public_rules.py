"""The allow lists of the public server and of every file petlab writes, as plain functions (fast tier): the
routes answered, the queue payloads admitted, the multipart boundaries read, the decode budget counted, and
the CSV cells quoted. tests/test_hostile.py sends the same shapes to a real server."""

import csv
import io

import pytest
from PIL import Image

from petlab.data.images import centre_box, jpeg_coefficient_bytes, load_rgb
from petlab.fileio import spreadsheet_safe, spreadsheet_value, write_csv
from petlab.public_server import (
    BadMultipart,
    BadPayload,
    allowed_route,
    check_payload,
    filename_problem,
    multipart_boundary,
)


@pytest.mark.parametrize("method, path", [
    ("GET", "/"), ("GET", "/config"), ("GET", "/assets/index-DphvyggB.js"), ("POST", "/gradio_api/queue/join"),
    ("GET", "/gradio_api/queue/data"), ("POST", "/gradio_api/upload"), ("GET", "/gradio_api/file=/tmp/gradio/a/x.jpg"),
    ("POST", "/gradio_api/call/classify"), ("GET", "/gradio_api/call/classify/abc123"), ("POST", "/api/predict"),
    ("GET", "/api/health"), ("GET", "/api/figures/cats_vs_dogs/reliability.png")])
def test_the_routes_the_page_and_the_api_use_are_answered(method, path):
    assert allowed_route(method, path)


@pytest.mark.parametrize("method, path", [
    ("GET", "/gradio_api/file/http://127.0.0.1:9/"), ("GET", "/gradio_api/proxy=http://x/"),
    ("POST", "/gradio_api/api/classify"), ("POST", "/gradio_api/run/classify"),
    ("POST", "/gradio_api/call/v2/classify"),
    ("POST", "/gradio_api/process_recording"), ("POST", "/gradio_api/call/other"), ("GET", "/monitoring"),
    ("POST", "/gradio_api/upload/"), ("DELETE", "/api/predict"), ("GET", "/api/predict"), ("POST", "/login"),
    ("GET", "/gradio_api/heartbeat/" + "x" * 65), ("POST", "/gradio_api/vibe-edit"), ("GET", "/gradio_api/user")])
def test_everything_else_is_refused(method, path):
    assert not allowed_route(method, path)


def photo(path="/uploads/a/cat.jpg", **extra):
    return {"path": path, "meta": {"_type": "gradio.FileData"}, **extra}


def uploaded(path: str) -> bool:
    return path.startswith("/uploads/")


def test_the_page_s_payload_is_admitted():
    check_payload({"data": [photo(url="http://h/gradio_api/file=/uploads/a/cat.jpg", orig_name="cat.jpg",
                                  size=10, mime_type="image/jpeg", is_stream=False), "cats_vs_dogs"],
                   "event_data": None, "fn_index": 0, "trigger_id": 5, "session_hash": "abc123xyz"}, uploaded)


@pytest.mark.parametrize("payload", [
    {"data": [photo("/etc/passwd")]}, {"data": [photo("http://127.0.0.1/x.png")]},
    {"data": [photo(url="data:image/png;base64,AAAA")]}, {"data": [photo(is_stream=True)]},
    {"data": [photo(extra_field=1)]}, {"data": [{"path": "/uploads/a/cat.jpg"}]}, {"data": ["x" * 257]},
    {"data": [1] * 9}, {"data": [[1, 2]]}, {"data": "no list"}, {"data": [], "session_hash": "a" * 65},
    {"data": [], "session_hash": "../x"}, {"data": [], "event_data": {"x": "y" * 2000}}, {"data": [], "fn_index": -1},
    {"data": [], "fn_index": "0"}, {"data": [], "oauth_token": "t"}, {"data": [], "batched": True}, ["not", "a dict"]])
def test_every_other_shape_is_refused(payload):
    with pytest.raises(BadPayload):
        check_payload(payload, uploaded)


@pytest.mark.parametrize("header", [b"multipart/form-data; boundary=A; boundary=B",
                                    b'multipart/form-data; boundary="a\\"b"', b"multipart/form-data",
                                    b"multipart/form-data; boundary=" + b"x" * 71,
                                    b"multipart/form-data; boundary=a\x00b"])
def test_an_ambiguous_multipart_boundary_is_refused(header):
    with pytest.raises(BadMultipart):
        multipart_boundary(header)


def test_a_plain_boundary_is_read_as_every_parser_reads_it():
    header = b'multipart/form-data; boundary="----WebKitFormBoundaryX1"'
    assert multipart_boundary(header) == b"------WebKitFormBoundaryX1"
    assert multipart_boundary(b"application/json") == b""


@pytest.mark.parametrize("name, ok", [(b'"cat.jpg"', True), (b'""', False), (b'". ."', False),
                                      (b'"' + b"x" * 256 + b'"', False), (b'"C:\\\\photos\\\\dog.png"', True)])
def test_upload_names(name, ok):
    assert (filename_problem(name) is None) == ok


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kw)
    return buffer.getvalue()


def test_only_the_centre_of_a_thin_photo_is_kept_and_the_model_s_crop_is_unchanged():
    from petlab.inference.preprocessing import Preprocessing

    assert centre_box(2047, 1, 4.0) == (1021, 0, 1025, 1)
    assert centre_box(300, 200, 4.0) == (0, 0, 300, 200)
    gradient = Image.linear_gradient("L").resize((1200, 200)).convert("RGB")  # 6:1, every column different
    kept = load_rgb(encoded(gradient, "PNG"), max_side=1024, max_aspect=4.0)
    assert kept.size == (800, 200)
    pre = Preprocessing(224, 256, (0.5,) * 3, (0.25,) * 3)
    assert (pre.eval_array(kept) == pre.eval_array(gradient)).mean() > 0.99  # what the model sees, the same


def test_a_progressive_jpeg_is_counted_by_its_full_size_coefficients():
    img = Image.new("RGB", (1600, 1200), (90, 140, 60))
    progressive = Image.open(io.BytesIO(encoded(img, "JPEG", progressive=True, subsampling=0)))
    baseline = Image.open(io.BytesIO(encoded(img, "JPEG", subsampling=0)))
    subsampled = Image.open(io.BytesIO(encoded(img, "JPEG", progressive=True, subsampling=2)))
    assert jpeg_coefficient_bytes(progressive, 1600, 1200) == 3 * 1600 * 1200 * 2  # 4:4:4, 2 bytes a coefficient
    assert jpeg_coefficient_bytes(subsampled, 1600, 1200) == 1600 * 1200 * 2 * 3 // 2  # 4:2:0: half as much
    assert jpeg_coefficient_bytes(baseline, 1600, 1200) == 0


@pytest.mark.parametrize("value, safe", [
    ("=SUM(A1)", "'=SUM(A1)"), ("+1", "'+1"), ("-2", "'-2"), ("@x", "'@x"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    (" =cmd", "' =cmd"), ("\uff1dSUM(1)", "'\uff1dSUM(1)"), ("|calc", "'|calc"), ("'quoted", "''quoted"),
    ("Beagle", "Beagle"), (-2.5, -2.5), (None, None)])
def test_every_csv_cell_that_could_be_a_formula_is_quoted_and_reads_back(value, safe):
    assert spreadsheet_safe(value) == safe
    if isinstance(value, str):
        assert spreadsheet_value(spreadsheet_safe(value)) == value


def test_write_csv_quotes_every_cell(tmp_path):
    write_csv(tmp_path / "x.csv", [{"label": "=HYPERLINK(1)", "score": 0.5}])
    with (tmp_path / "x.csv").open(newline="") as fh:
        assert list(csv.DictReader(fh)) == [{"label": "'=HYPERLINK(1)", "score": "0.5"}]
