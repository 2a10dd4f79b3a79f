"""``co2sam app`` in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

The app runs as ``co2sam app`` does when given nothing (the demo workspace, here on 4
images per split), on 127.0.0.1 and a free port, in this process. Each test checks that
the browser asked for nothing outside 127.0.0.1; a failing test leaves a screenshot of
the page (``CO2SAM_E2E_ARTIFACTS``, default: pytest's temporary folder). With
``CO2SAM_SCREENSHOTS=DIR`` the tests also save the screenshots the README shows.
"""

from __future__ import annotations

import io
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from app_support import chromium_path, free_port, need
from PIL import Image

SHOTS = os.environ.get("CO2SAM_SCREENSHOTS")
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def workspace(request):
    """The small workspace, or ``CO2SAM_APP_WORKSPACE`` (the full one ``co2sam app`` makes
    when given nothing: the README's screenshots show it)."""
    need("gradio")
    need("gradio_image_annotation")
    folder = os.environ.get("CO2SAM_APP_WORKSPACE")
    if folder:
        from co2sam.app.workspace import prepare_demo_workspace

        return prepare_demo_workspace(folder)
    return request.getfixturevalue("app_workspace")


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
NETWORK = {"watching": False, "outside": []}


def _watch_network(event, args):
    """Audit hook: the hosts this process looks up or connects to while the app runs."""
    if not NETWORK["watching"] or event not in ("socket.getaddrinfo", "socket.connect"):
        return
    address = args[0] if event == "socket.getaddrinfo" else args[1]
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, bytes):
        host = host.decode()
    if isinstance(host, str) and host not in LOCAL_HOSTS and not host.startswith("/"):
        NETWORK["outside"].append(f"{event} {host}")


sys.addaudithook(_watch_network)


@pytest.fixture(scope="module")
def server(workspace):
    from co2sam.app.page import Page
    from co2sam.app.server import build_context, launch
    from co2sam.app.settings import AppSettings

    NETWORK["watching"], NETWORK["outside"] = True, []
    settings = AppSettings(demo_dir=workspace.root, port=free_port(), max_file_mb=1)
    context = build_context(settings)
    page = launch(Page(context).build(), settings, block=False)
    yield f"http://127.0.0.1:{settings.port}/", context
    page.close()
    NETWORK["watching"] = False


@pytest.fixture(scope="module")
def browser():
    playwright_api = need("playwright.sync_api")
    executable = chromium_path()
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=[
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-dev-shm-usage",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server, request, tmp_path_factory):
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    url, _ = server
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    outside: list[str] = []
    tab.on(
        "request",
        lambda req: None if req.url.startswith(("http://127.0.0.1", "data:", "blob:"))
        else outside.append(req.url),
    )  # fmt: skip
    tab.goto(url)
    expect(tab.locator("#header")).to_contain_text("SAM")
    yield tab
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        folder = Path(
            os.environ.get("CO2SAM_E2E_ARTIFACTS") or tmp_path_factory.getbasetemp() / "e2e"
        )
        folder.mkdir(parents=True, exist_ok=True)
        shot = folder / f"{request.node.name}.png"
        tab.screenshot(path=str(shot), full_page=True)
        print(f"screenshot of the failed page: {shot}")
    context.close()
    assert outside == [], f"the page asked for non-local URLs: {outside}"


def screenshot(tab, name: str) -> None:
    """Save the README's screenshot of a tab when ``CO2SAM_SCREENSHOTS`` names a folder."""
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        path = Path(SHOTS) / f"app_{name}.jpg"
        tab.screenshot(path=str(path), full_page=True, type="jpeg", quality=80)


def fetch_image(tab, selector: str, mode: str = "RGB") -> np.ndarray:
    return fetch_element(tab, tab.locator(selector).first, mode)


def fetch_element(tab, element, mode: str = "RGB") -> np.ndarray:
    """The pixels of an ``<img>`` as the server sent them."""
    source = element.get_attribute("src")
    response = tab.request.get(source)
    assert response.ok, source
    return np.asarray(Image.open(io.BytesIO(response.body())).convert(mode))


def draw_box(tab, selector: str, image_size: tuple[int, int], box: tuple[float, ...]) -> None:
    """Drag a box (XYXY image pixels) on the drawing panel's canvas."""
    canvas = tab.locator(selector)
    frame = canvas.bounding_box()
    height, width = image_size
    scale = min(frame["width"] / width, frame["height"] / height)
    left = frame["x"] + (frame["width"] - scale * width) / 2
    top = frame["y"] + (frame["height"] - scale * height) / 2
    x0, y0, x1, y1 = box
    tab.mouse.move(left + scale * x0, top + scale * y0)
    tab.mouse.down()
    tab.mouse.move(left + scale * x1, top + scale * y1, steps=10)
    tab.mouse.up()


def test_segment_a_drawn_box_shows_the_legend_areas_and_downloads(
    page, workspace, server, tmp_path
):
    from playwright.sync_api import expect

    from co2sam.app.models import SEGMENTER
    from co2sam.records import Boxes

    example = workspace.examples[0]
    image_path = tmp_path / "mine.png"
    Image.open(example["image"]).save(image_path)
    image = np.asarray(Image.open(image_path).convert("RGB"))
    first = example["boxes"][0]
    classes = [first["label"]] + [n for n in workspace.class_names[1:] if n != first["label"]][:1]

    page.locator("#classes textarea").fill(", ".join(classes))
    expect(page.locator("#annot")).to_contain_text(f"Image: draw boxes ({', '.join(classes)})")
    page.locator("#annot input[type=file]").set_input_files(str(image_path))
    canvas = "#annot canvas.canvas-annotator"
    expect(page.locator(canvas)).to_be_visible()
    box = (first["xmin"], first["ymin"], first["xmax"], first["ymax"])
    draw_box(page, canvas, image.shape[:2], box)
    page.locator("#segment-btn").click()

    legend = page.locator("#result .legend-item")
    expect(legend).to_have_text(classes)
    expect(page.locator("#result img.mask")).to_have_count(2)
    shown = fetch_image(page, "#result img.base-image")
    assert shown.shape == image.shape and not np.array_equal(shown, image)  # boxes drawn
    expect(page.locator("#areas")).to_contain_text(classes[0])
    expect(page.locator("#result-note")).to_contain_text("1 drawn box(es)")
    expect(page.locator("#downloads a[href$='/mine.json']")).to_have_count(1)
    link = page.locator("#downloads a[href$='/mine.png']")
    expect(link).to_have_count(1)
    label_png = Image.open(io.BytesIO(page.request.get(link.get_attribute("href")).body()))
    assert label_png.mode == "P" and label_png.size == (image.shape[1], image.shape[0])
    assert (np.asarray(label_png) == 1).sum() > 0  # the drawn box's class, index 1

    expect(page.locator("#result-note")).to_contain_text("adapted (Co2SAM)")
    screenshot(page, "segment")
    page.get_by_role("radio", name="plain SAM").check()
    expect(page.locator("#result-note")).to_contain_text("plain SAM")
    expect(page.locator("#result .legend-item")).to_have_text(classes)

    # the distilled segmenter on the same image: no boxes, its own classes in the legend
    models = server[1].models
    names, shown = models.class_lists(("background", *classes))
    page.get_by_role("radio", name=SEGMENTER).check()
    expect(page.locator("#result-note")).to_contain_text(f"{SEGMENTER} · open mode · no boxes")
    expect(page.locator("#result .legend-item")).to_have_text(list(shown[SEGMENTER]))
    masks = page.locator("#result img.mask")
    expect(masks).to_have_count(len(shown[SEGMENTER]))
    np.testing.assert_array_equal(fetch_image(page, "#result img.base-image"), image)  # no box
    label = models.label_maps(image, Boxes(), names, [SEGMENTER])[SEGMENTER]
    assert label.any()  # the check below sees some object pixels
    for index, name in enumerate(shown[SEGMENTER]):
        alpha = fetch_element(page, masks.nth(index), "RGBA")[..., 3]
        np.testing.assert_array_equal(alpha > 0, label == names.index(name), err_msg=name)
    expect(page.locator("#areas")).to_contain_text(shown[SEGMENTER][-1])


def test_review_keys_move_and_flag_writes_flagged_txt(page, workspace):
    from playwright.sync_api import expect

    flagged = Path(workspace.review) / "flagged.txt"
    flagged.unlink(missing_ok=True)  # other tests of this process may have flagged
    count = len(list((Path(workspace.review) / "SegmentationClass").glob("*.png")))
    page.get_by_role("tab", name="Review").click()
    info = page.locator("#review-info")
    expect(info).to_contain_text(f"1 of {count}")
    expect(page.locator("#review-thumbs img")).to_have_count(min(count, 24))
    expect(page.locator("#review-truth img")).to_be_visible()
    page.keyboard.press("ArrowRight")
    expect(info).to_contain_text(f"2 of {count}")
    shown_id = info.locator("strong").first.inner_text()
    page.locator("#review-flag").click()
    expect(info).to_contain_text("flagged")
    assert flagged.read_text().split() == [shown_id]
    expect(page.locator("#review-flag")).to_have_text("Unflag")
    page.keyboard.press("ArrowLeft")
    expect(info).to_contain_text(f"1 of {count}")
    screenshot(page, "review")


def test_run_tab_plots_losses_miou_bars_and_confusion(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Run").click()
    expect(page.locator("#run-summary")).to_contain_text("best epoch")
    for plot in ("#loss-plot", "#miou-plot", "#iou-bars"):
        expect(page.locator(f"{plot} canvas, {plot} svg").first).to_be_visible()
    expect(page.locator("#confusion img")).to_be_visible()
    screenshot(page, "run")


def test_the_app_process_looked_up_no_other_host(server):
    assert NETWORK["watching"] and NETWORK["outside"] == []


def test_server_refuses_big_uploads_and_serves_no_folder(server, workspace):
    url, _ = server
    body = b'--x\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
    body += b"Content-Type: image/png\r\n\r\n" + b"0" * (2 * 1024 * 1024) + b"\r\n--x--\r\n"
    upload = urllib.request.Request(
        url + "gradio_api/upload",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(upload)
    refused.value.close()
    assert refused.value.code == 413
    for path in (Path(workspace.review) / "report.json", Path("/etc/passwd")):
        with pytest.raises(urllib.error.HTTPError) as forbidden:
            urllib.request.urlopen(f"{url}gradio_api/file={path}")
        forbidden.value.close()
        assert forbidden.value.code == 403, path


def test_uploads_are_removed_when_the_app_stops(workspace):
    """A second server of the same page: an upload lands in Gradio's folder, then goes."""
    from co2sam.app.page import Page
    from co2sam.app.server import build_context, launch
    from co2sam.app.settings import AppSettings

    settings = AppSettings(demo_dir=workspace.root, port=free_port())
    page = launch(Page(build_context(settings)).build(), settings, block=False)
    try:
        body = b'--x\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
        body += b"Content-Type: image/png\r\n\r\n" + b"not really a png" + b"\r\n--x--\r\n"
        upload = urllib.request.Request(
            f"http://127.0.0.1:{settings.port}/gradio_api/upload",
            data=body,
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        )
        with urllib.request.urlopen(upload) as response:
            (stored,) = json.loads(response.read())
        assert Path(stored).is_file() and oct(Path(stored).stat().st_mode)[-3:] == "600"
    finally:
        page.close()
    assert not Path(stored).exists()
